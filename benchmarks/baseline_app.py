"""A yardstick server: one request at a time, eager fp32, full-resolution decode (how a first, unoptimised
serving of this model would work).

A stdlib ``http.server`` (single-threaded: requests queue in the socket backlog) answering
``POST /predictions/pigment`` with multipart fields ``clinical_image`` (required), ``dermoscopy_image`` and
``multispectral_image``, like the product. Each image is decoded at full size (no JPEG draft), resized and
normalised by the same ``model.preprocessing`` code, and the checkpoint's model runs eagerly in fp32 at batch 1.
It exists only so that the benchmark (benchmarks/run.py) can compare the product with it in one run.

    python -m benchmarks.baseline_app --checkpoint ckpt.pth --port 8090
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch

from model.checkpoint import LoadedModel, load_for_inference
from model.config import AUX_MODALITIES, MODALITIES
from model.preprocessing import decode_image, image_to_tensor
from model.severity import severity_label

log = logging.getLogger(__name__)


def multipart_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """A multipart/form-data body -> ``{field name: bytes}``."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


@torch.inference_mode()
def predict(loaded: LoadedModel, fields: dict[str, bytes]) -> dict:
    """Full-size decode of each image, then one eager fp32 forward at batch 1."""
    images = {m: image_to_tensor(decode_image(fields[f"{m}_image"], f"{m}_image"), m, loaded.data_cfg)[None]
              for m in MODALITIES if f"{m}_image" in fields}
    aux_mask = torch.tensor([[m in images for m in AUX_MODALITIES]])
    out = loaded.model(images["clinical"], *(images.get(m) for m in AUX_MODALITIES), aux_mask)
    score = float(out.score[0])
    return {"score": round(score, 4), "severity": severity_label(score, loaded.severity)}


class BaselineServer(HTTPServer):
    request_queue_size = 64  # concurrent clients wait in the listen backlog and are served one at a time


def make_handler(loaded: LoadedModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # /ping
            self._send(200, {"status": "Healthy"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                answer = predict(loaded, multipart_fields(self.headers.get("Content-Type", ""), body))
            except Exception as exc:  # a yardstick, not a product: any failure is a 400 with its reason
                self._send(400, {"error": f"{type(exc).__name__}: {exc}"})
                return
            self._send(200, answer)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # keep the benchmark's terminal clean
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_for_inference(args.checkpoint)
    server = BaselineServer(("127.0.0.1", args.port), make_handler(loaded))
    print(f"baseline serving on http://127.0.0.1:{args.port}/predictions/pigment", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
