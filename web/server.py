"""Serve the review page on 127.0.0.1 and relay its two API calls to the loopback TorchServe.

    python -m web.server start --api http://127.0.0.1:8080 --checkpoint runs/demo/best_model.pth   # background
    python -m web.server url          # the page's address with the current inference key in its fragment
    python -m web.server stop
    python -m web.server serve --api http://127.0.0.1:8080 [--port 3000]                           # foreground

Why a relay: the page sends ``Authorization: Bearer <key>``, which makes every cross-origin call start with a CORS
preflight (an OPTIONS request without the key). TorchServe 0.12 checks the key before anything else and answers
that preflight 400 InvalidKeyException, so the browser never sends the real request. Served from this origin, the
page's ``POST /predictions/pigment`` and ``POST /explanations/pigment`` are same-origin; this server passes them to
TorchServe unchanged (body, Content-Type, Authorization) and passes the answer back unchanged (status and body).
Nothing else is proxied, only a loopback API is accepted, and requests for any other host name are refused.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from model.config import SeverityConfig
from model.severity import LABELS

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".json": "application/json"}
RELAYED = ("/predictions/", "/explanations/")
DEFAULT_PORT = 3000
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 33554432
"""TorchServe's max_request_size (serve_config/config.properties): a larger body would be refused there anyway."""
RELAY_TIMEOUT_S = 300
RENEW_BEFORE = timedelta(minutes=5)
"""``url`` renews the inference key when it expires within this margin, so the printed address is usable."""
STATE_FILE = "page.json"
# Only this origin's files, inline nothing; images also from data: (overlays) and blob: (the chosen photos).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


@dataclass(frozen=True)
class PageConfig:
    """What the server needs: the loopback TorchServe inference URL, its model name and the severity bands."""

    api: str
    model: str = "pigment"
    bands: list[dict[str, Any]] | None = None

    def public(self) -> dict[str, Any]:
        """``/config.json``: what the page may know (no addresses, no keys)."""
        return {"model": self.model, "bands": self.bands}


def loopback_api(url: str) -> str:
    """``url`` without a trailing slash, if it is an http URL on a loopback host; else UsageError."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname not in LOOPBACK or parsed.port is None:
        raise UsageError(f"--api {url!r}: expected http://127.0.0.1:PORT (TorchServe's inference address on loopback)")
    return url.rstrip("/")


def bands_from_checkpoint(path: Path) -> list[dict[str, Any]]:
    """The checkpoint's severity bands as ``[{"name", "low", "high"}]`` (the thresholds travel in the checkpoint)."""
    from model.checkpoint import configs_from_checkpoint, load_checkpoint

    _, _, severity = configs_from_checkpoint(load_checkpoint(path))
    return bands_from_thresholds(severity)


def bands_from_thresholds(severity: SeverityConfig) -> list[dict[str, Any]]:
    edges = (0.0, severity.mild_max, severity.moderate_max, 1.0)
    return [{"name": name, "low": low, "high": high} for name, low, high in zip(LABELS, edges, edges[1:])]


def _thresholds(text: str) -> SeverityConfig:
    """``--bands 0.25,0.6`` -> SeverityConfig (which checks 0 < mild_max < moderate_max < 1)."""
    try:
        mild_max, moderate_max = (float(part) for part in text.split(","))
        return SeverityConfig(mild_max, moderate_max)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MILD_MAX,MODERATE_MAX like 0.25,0.6 ({exc})") from None


class PageHandler(BaseHTTPRequestHandler):
    server_version = "pigment-page"
    config: PageConfig  # set by make_server on a subclass

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        path = urllib.parse.urlsplit(self.path).path
        if path == "/config.json":
            self._send(200, json.dumps(self.config.public()).encode(), CONTENT_TYPES[".json"])
        elif path in PAGES:
            file = STATIC / PAGES[path]
            self._send(200, file.read_bytes(), CONTENT_TYPES[file.suffix])
        else:
            self._send_error(404, "path", f"{path}: not found; the page is at /")

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        path = urllib.parse.urlsplit(self.path).path
        if path not in {f"{prefix}{self.config.model}" for prefix in RELAYED}:
            self._send_error(404, "path", f"{path}: not relayed; only /predictions/{self.config.model} and "
                                          f"/explanations/{self.config.model}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self._send_error(413, "body", f"the request is {length} bytes; the server accepts at most {MAX_BODY} "
                                          f"(32 MiB) for all images together; send smaller photos")
            return
        self._relay(path, self.rfile.read(length))

    def _relay(self, path: str, body: bytes) -> None:
        api = urllib.parse.urlsplit(self.config.api)
        headers = {name: self.headers[name] for name in ("Content-Type", "Authorization") if self.headers[name]}
        connection = http.client.HTTPConnection(api.hostname, api.port, timeout=RELAY_TIMEOUT_S)
        try:
            connection.request("POST", path, body=body, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
        except OSError as exc:
            self._send_error(502, "server", f"the model server at {self.config.api} is not answering ({exc}); "
                                            f"start it with `make serve`")
            return
        finally:
            connection.close()
        self._send(answer.status, payload, answer.getheader("Content-Type") or CONTENT_TYPES[".json"])

    def _host_ok(self) -> bool:
        """Refuse any Host but this server's loopback names (a rebound DNS name must not reach the relay)."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host in LOOPBACK:
            return True
        self._send_error(421, "Host", f"Host {host!r} is not served; open http://127.0.0.1:{self.server.server_port}/")
        return False

    def _send_error(self, status: int, field: str, message: str) -> None:
        body = {"error": message, "field": field, "status": status}
        self._send(status, json.dumps(body).encode(), CONTENT_TYPES[".json"])

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")


def make_server(config: PageConfig, port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1:``port`` (0: a free port); call ``serve_forever`` and ``shutdown``."""
    handler = type("ConfiguredPageHandler", (PageHandler,), {"config": config})
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); stop what uses it or pass --port")


# -- background server and its address ---------------------------------------------------------------------------
def start_background(args: argparse.Namespace) -> int:
    """Start ``serve`` in its own session, record it in ``run_dir/page.json`` and wait until the page answers."""
    run_dir = Path(args.run_dir)
    if args.port == 0:
        args.port = _free_port()
    running = _running_state(run_dir)
    wanted = {"port": args.port, "api": args.api, "checkpoint": str(args.checkpoint or "")}
    if running and all(running.get(k) == v for k, v in wanted.items()):
        print(f"the review page is already served on http://127.0.0.1:{args.port}/")
        return 0
    if running:
        stop_background(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "web.server", "serve", "--api", args.api, "--port", str(args.port)]
    if args.checkpoint:
        # Read here, in this short-lived process: the long-running server stays free of torch (~1 GB resident).
        bands = bands_from_checkpoint(args.checkpoint)
        cmd += ["--bands", f"{bands[0]['high']},{bands[1]['high']}"]
    with open(run_dir / "page.log", "ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=Path(__file__).resolve().parents[1])
    (run_dir / STATE_FILE).write_text(json.dumps({"pid": process.pid, **wanted}, indent=2))
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (run_dir / "page.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise UsageError(f"the page server exited ({process.returncode}): {' '.join(tail)}")
        if _answers(args.port):
            print(f"the review page is served on http://127.0.0.1:{args.port}/ (log: {run_dir / 'page.log'})")
            return 0
        time.sleep(0.2)
    stop_background(run_dir)
    raise UsageError(f"the page server did not answer within {args.timeout:.0f} s; see {run_dir / 'page.log'}")


def stop_background(run_dir: Path) -> bool:
    """Stop the server recorded in ``run_dir``; True if one was running."""
    state = _running_state(run_dir)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    if not state:
        return False
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(state["pid"]):
        time.sleep(0.1)
    if _alive(state["pid"]):
        os.kill(state["pid"], signal.SIGKILL)
    return True


def page_url(run_dir: Path, torchserve_run_dir: Path, now: datetime | None = None) -> tuple[str, datetime | None]:
    """The page's address with the inference key in its fragment, and when that key expires.

    The fragment (``#key=...``) is never sent to a server. A key that expires within ``RENEW_BEFORE`` is renewed
    first through TorchServe's token API with the API key (the key file is rewritten; other clients that read it,
    like scripts/client.py, follow).
    """
    state = _running_state(run_dir)
    if not state:
        raise UsageError(f"no review page is running from {run_dir}; start it with `make serve`")
    key, expires = _inference_key(torchserve_run_dir)
    if expires is not None and expires - (now or datetime.now(UTC)) < RENEW_BEFORE:
        _renew_inference_key(torchserve_run_dir)
        key, expires = _inference_key(torchserve_run_dir)
    return f"http://127.0.0.1:{state['port']}/#key={urllib.parse.quote(key, safe='')}", expires


def _inference_key(torchserve_run_dir: Path) -> tuple[str, datetime | None]:
    key_file = torchserve_run_dir / "key_file.json"
    if not key_file.is_file():
        raise UsageError(f"{key_file}: no key file; is TorchServe running? start it with `make serve`")
    entry = json.loads(key_file.read_text())["inference"]
    expires = entry.get("expiration time")
    # TorchServe writes nanoseconds ("...T21:45:28.159072631Z"); datetime takes microseconds.
    return entry["key"], (datetime.fromisoformat(expires[:26]).replace(tzinfo=UTC) if expires else None)


def _renew_inference_key(torchserve_run_dir: Path) -> None:
    keys = json.loads((torchserve_run_dir / "key_file.json").read_text())
    port = json.loads((torchserve_run_dir / "server.json").read_text())["ports"]["management"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/token?type=inference", headers={"Authorization": f"Bearer {keys['API']['key']}"})
        answer = connection.getresponse()
        answer.read()
    finally:
        connection.close()
    if answer.status != 200:
        raise UsageError(f"TorchServe refused to renew the inference key ({answer.status}); restart it: "
                         f"`make stop && make serve`")


def _running_state(run_dir: Path) -> dict[str, Any] | None:
    """page.json's contents if its process is alive and is our page server (not a reused pid)."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
        cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError):
        return None
    return state if b"web.server" in cmdline and b"serve" in cmdline else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/config.json")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


# -- command line ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m web.server", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "serve in the foreground"), ("start", "serve in the background")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--api", required=True, help="TorchServe's inference address, http://127.0.0.1:PORT")
        command.add_argument("--port", type=int, default=DEFAULT_PORT)
        command.add_argument("--checkpoint", type=Path, help="the served checkpoint: the page draws its severity bands")
        command.add_argument("--model", default="pigment")
        command.add_argument("--bands", type=_thresholds, help=argparse.SUPPRESS)  # start passes --checkpoint's
        if name == "start":
            command.add_argument("--run-dir", default="logs/web", help="page.json (pid, port) and page.log go here")
            command.add_argument("--timeout", type=float, default=30.0)
    stop = sub.add_parser("stop", help="stop the background server of --run-dir")
    stop.add_argument("--run-dir", default="logs/web")
    url = sub.add_parser("url", help="print the page's address with the current inference key (#key=...)")
    url.add_argument("--run-dir", default="logs/web")
    url.add_argument("--torchserve-run-dir", default="logs", help="TorchServe's run dir (key_file.json, server.json)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.command in ("serve", "start"):
        args.api = loopback_api(args.api)
        if args.checkpoint and not args.checkpoint.is_file():
            raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    if args.command == "start":
        return start_background(args)
    if args.command == "stop":
        print("review page stopped" if stop_background(Path(args.run_dir)) else "the review page was not running")
        return 0
    if args.command == "url":
        url, expires = page_url(Path(args.run_dir), Path(args.torchserve_run_dir))
        print(url)
        if expires is not None:
            print(f"(the key in it expires at {expires.astimezone():%H:%M}; run `make serve` again for a new one)")
        return 0
    bands = bands_from_thresholds(args.bands) if args.bands else None
    if args.checkpoint:
        bands = bands_from_checkpoint(args.checkpoint)
    server = make_server(PageConfig(args.api, args.model, bands), args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit unwinds serve_forever and closes the socket
    print(f"serving the review page on http://127.0.0.1:{server.server_port}/, relaying to {args.api}", flush=True)
    with server:
        server.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
