#!/usr/bin/env python3
"""Docker HEALTHCHECK for pigment's TorchServe with token authorization on: /ping with the current inference key.

    pigment-healthcheck [--url http://127.0.0.1:8080] [--key-file /home/model-server/key_file.json]

TorchServe writes key_file.json into the directory it was started from (the image's WORKDIR) and rewrites it
when a key is renewed, so the file is read afresh on every check. Exit status, as Docker expects: 0 when /ping
answers 200 "Healthy", 1 otherwise, with the reason on stdout (``docker inspect`` shows it). That includes an
inference key that expired (serve_config: token_expiration_min=60) and was not renewed: no client can call the
server then either; the message says how to renew it. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_KEY_FILE = "/home/model-server/key_file.json"


def check(url: str, key_file: str, timeout: float) -> tuple[bool, str]:
    """``(healthy, reason)`` for the server at ``url`` using the inference key in ``key_file``."""
    try:
        with open(key_file, encoding="utf-8") as f:
            keys = json.load(f)
        key, expires = keys["inference"]["key"], keys["inference"].get("expiration time")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"no usable inference key in {key_file} ({exc}); TorchServe writes it at startup"
    request = urllib.request.Request(f"{url}/ping", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = json.loads(response.read() or b"{}").get("status")
            return status == "Healthy", f"/ping: {response.status} {status}"
    except urllib.error.HTTPError as exc:
        body = exc.read()[:300].decode("utf-8", "replace")
        if "Token Authorization failed" in body:  # TorchServe 0.12 answers 400 InvalidKeyException
            return False, f"/ping: {exc.code}, {_rejected_key(expires, url)}"
        return False, f"/ping: {exc.code} {body}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}/ping unreachable: {exc}"


def _rejected_key(expires: str | None, url: str) -> str:
    renew = ('renew it with the API key from key_file.json: curl -X POST "<management address>/token?type=inference"'
             ' -H "Authorization: Bearer <API key>"')
    try:
        expired = expires is not None and datetime.fromisoformat(expires) <= _now()
    except ValueError:
        expired = False
    if expired:
        return f"the inference key expired at {expires}; {renew}"
    return f"the inference key in the key file was rejected by {url} (another server's key file?)"


def _now() -> datetime:
    return datetime.now(UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("PIGMENT_HEALTH_URL", DEFAULT_URL))
    parser.add_argument("--key-file", default=os.environ.get("PIGMENT_KEY_FILE", DEFAULT_KEY_FILE))
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    healthy, reason = check(args.url.rstrip("/"), args.key_file, args.timeout)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
