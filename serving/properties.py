"""The one writer of TorchServe config.properties files: a base file with some keys set to other values.

TorchServe reads config.properties as Java Properties, where a repeated key silently replaces the earlier one.
Every file written here has each key once: the base file's lines without the replaced keys (its comments stay),
then one block that says who set the replacements and, per key, why.

    python -m serving.properties serve_config/config.properties docker/container.properties -o OUT
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path


def read_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a properties file (comments and blank lines skipped; a later key wins)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def read_reasons(text: str) -> dict[str, str]:
    """The comment block right above each key of a properties file, without the ``#`` (keys with none left out)."""
    reasons, block = {}, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
        elif "=" in stripped:
            if block:
                reasons[stripped.split("=", 1)[0].strip()] = "\n".join(block)
            block = []
        else:
            block = []
    return reasons


def merged_properties(base: str, overrides: Mapping[str, str], header: str,
                      reasons: Mapping[str, str] | None = None) -> str:
    """``base`` (a properties file's text) with every key in ``overrides`` removed, then ``# header`` and the
    overrides, each after its ``reasons[key]`` comment when given."""
    lines = [line for line in base.splitlines()
             if line.lstrip().startswith("#") or line.split("=", 1)[0].strip() not in overrides]
    lines += ["", f"# ---- {header} ----"]
    for key, value in overrides.items():
        if reasons and key in reasons:
            lines += [f"# {line}" for line in reasons[key].splitlines()]
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def write_properties(path: Path, base: Path, overrides: Mapping[str, str], header: str,
                     reasons: Mapping[str, str] | None = None) -> Path:
    """:func:`merged_properties` of the file ``base``, written to ``path``."""
    path.write_text(merged_properties(base.read_text(), overrides, header, reasons))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the properties file to start from")
    parser.add_argument("overrides", type=Path, help="a properties file whose keys replace the base's")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in (args.base, args.overrides):
        if not path.is_file():
            print(f"{path}: no such properties file", file=sys.stderr)
            return 2
    text = args.overrides.read_text()
    write_properties(args.out, args.base, read_properties(text), f"Set by {args.overrides.name}; they replace the "
                     f"values above", read_reasons(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
