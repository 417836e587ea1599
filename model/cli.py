"""How every command-line tool ends: a user's mistake is one line on stderr and exit status 2, a bug a traceback.

    if __name__ == "__main__":
        run(main)

A user's mistake is what our code raises for bad input (``ValueError`` and its subclasses such as
``model.preprocessing.InputError``, the config loader's ``ConfigError``) and what the operating system says about a
path (``OSError``: a missing, unreadable or misplaced file, a server that is not there). Their messages already name
the file or value and the fix; anything else (a ``KeyError``, an ``AttributeError``, ...) is a bug and keeps its
traceback. ``PIGMENT_TRACEBACK=1`` shows the traceback of a user error too, for whoever debugs the tool itself.
Imports nothing heavy, so that ``scripts/client.py`` can use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

USER_ERROR_STATUS = 2
"""The exit status of a user's mistake (argparse's own usage errors exit 2 as well)."""

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def run(main: Callable[[], Any]) -> NoReturn:
    """Call ``main()`` and exit: its int return value (0 for anything else), or 2 with one line for a user error."""
    try:
        result = main()
    except USER_ERRORS as exc:
        if os.environ.get("PIGMENT_TRACEBACK"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def one_line(exc: BaseException) -> str:
    """The error as one line. An ``OSError`` raised by Python itself (``[Errno 2] No such file ...: 'x'``) is
    rewritten as ``x: no such file or directory; check the path``; our own messages are kept as they are."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror.lower()}; {_os_fix(exc)}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _os_fix(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "check the path"
    if isinstance(exc, PermissionError):
        return "make it readable (or writable) for this user"
    if isinstance(exc, IsADirectoryError):
        return "pass a file, not a folder"
    if isinstance(exc, NotADirectoryError):
        return "pass a folder, not a file"
    return "check the path and the disk"
