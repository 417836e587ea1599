"""Send 1 to 3 lesion images to a running pigment TorchServe and print its JSON answer.

    python scripts/client.py --clinical lesion.jpg [--dermoscopy derm.jpg] [--multispectral ms.png] [--json]
    python scripts/client.py --run-dir /path/to/run --clinical lesion.jpg      # a server started elsewhere
    python scripts/client.py --grpc --clinical lesion.jpg                      # TorchServe's gRPC inference API

The inference key and port come from the server's run directory (scripts/start_server.sh: logs/). The
images go as multipart/form-data fields clinical_image, dermoscopy_image, multispectral_image, or with --json as
one JSON object of base64 strings under the same names; with --grpc as the same fields of one gRPC Predictions
call (serving/grpc_client.py; a cheaper way into TorchServe for large images). scripts/client.py is this module's
command line. Exits 0 on a score, 1 on an error answer, 2 with one line on stderr when the request cannot be sent
(a missing file, no key file, no server).
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import requests

from model.cli import run
from model.config import MODALITIES
from serving.grpc_client import GrpcClient, encode_request


def read_key(key_file: Path, kind: str = "inference") -> str:
    """The ``inference`` or ``management`` key TorchServe wrote at startup."""
    if not key_file.is_file():
        raise FileNotFoundError(f"{key_file}: no key file; start the server with scripts/start_server.sh, or pass "
                                f"--key-file (it lies in the directory TorchServe was started from)")
    return json.loads(key_file.read_text())[kind]["key"]


def predict(url: str, key: str, images: dict[str, Path], as_json: bool = False, timeout: float = 60.0):
    """POST the images; returns the ``requests.Response`` (answer or error JSON)."""
    headers = {"Authorization": f"Bearer {key}"}
    if as_json:
        body = {f"{m}_image": base64.b64encode(p.read_bytes()).decode("ascii") for m, p in images.items()}
        return requests.post(url, json=body, headers=headers, timeout=timeout)
    files = {f"{m}_image": (p.name, p.read_bytes()) for m, p in images.items()}
    return requests.post(url, files=files, headers=headers, timeout=timeout)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clinical", type=Path, required=True, help="clinical photo (required)")
    parser.add_argument("--dermoscopy", type=Path, help="dermoscopy image (optional)")
    parser.add_argument("--multispectral", type=Path, help="multispectral capture (optional)")
    parser.add_argument("--json", action="store_true", help="send a JSON body of base64 strings, not multipart")
    parser.add_argument("--grpc", action="store_true", help="call TorchServe's gRPC inference API instead of REST")
    parser.add_argument("--run-dir", type=Path, default=Path("logs"),
                        help="the server's run directory (scripts/start_server.sh: logs/): its key file and ports")
    parser.add_argument("--url", help="the inference address (default: from RUN_DIR/server.json, else :8080; "
                                      "with --grpc 127.0.0.1:PORT, default the gRPC port there, else 7070)")
    parser.add_argument("--key-file", type=Path, help="default: RUN_DIR/key_file.json")
    parser.add_argument("--model", default="pigment")
    return parser.parse_args(argv)


def inference_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    state = args.run_dir / "server.json"
    kind, default = ("grpc_inference", 7070) if args.grpc else ("inference", 8080)
    port = json.loads(state.read_text())["ports"][kind] if state.is_file() else default
    return f"127.0.0.1:{port}" if args.grpc else f"http://127.0.0.1:{port}"


def predict_grpc(target: str, key: str, model: str, images: dict[str, Path],
                 timeout: float = 60.0) -> tuple[int, str]:
    """One gRPC Predictions call: (HTTP-equivalent status, the answer or error text)."""
    with GrpcClient(target) as client:
        status, answer, error = client.predict(encode_request(model, {f"{m}_image": p.read_bytes()
                                                                      for m, p in images.items()}), key, timeout)
    return status, answer.decode(errors="replace") or error


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = {m: getattr(args, m) for m in MODALITIES if getattr(args, m) is not None}
    for path in images.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; check the path")
    key = read_key(args.key_file or args.run_dir / "key_file.json")
    if args.grpc:
        status, text = predict_grpc(inference_url(args), key, args.model, images)
        print(text if text.startswith("{") else f"gRPC -> HTTP {status}: {text}")
        return 0 if status == 200 else 1
    url = f"{inference_url(args)}/predictions/{args.model}"
    try:
        response = predict(url, key, images, args.json)
    except requests.ConnectionError:
        raise ConnectionError(f"{url}: no server answers; start it with scripts/start_server.sh, or pass --url "
                              f"or --run-dir") from None
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(f"HTTP {response.status_code}: {response.text}")
    return 0 if response.ok else 1


if __name__ == "__main__":
    run(main)
