"""pigment on KServe's own Python model server (no TorchServe, no Java): a ``kserve.Model`` over the Predictor.

    .venv-kserve/bin/python kserve/pigment_kserve.py --checkpoint runs/demo/best_model.pth            # 0.0.0.0:8080
    .venv-kserve/bin/python kserve/pigment_kserve.py --checkpoint ... --bind_host 127.0.0.1 --http_port 8090 \\
        --enable_grpc false

Serves model ``pigment`` (``--model_name``) with KServe's REST protocols:

* v1: ``POST /v1/models/pigment:predict`` with ``{"instances": [{"clinical_image": "<base64>", ...}, ...]}``
  (the field names of the ``/predictions`` JSON body), answered ``{"predictions": [answer, ...]}``, each answer
  the same dict TorchServe's ``/predictions`` returns;
* v2: ``POST /v2/models/pigment/infer`` with BYTES inputs ``clinical`` / ``dermoscopy`` / ``multispectral``
  (handler/kserve_v2.py has the contract), answered with the same outputs as TorchServe's kservev2 envelope.

A rejected request is a 400 ``{"error": "<field>: <why>"}`` (KServe's error form; v1 names the instance). The
Predictor options are the ``handler:`` section of ``--model_config`` (default serve_config/model-config.yaml), so
both servers answer alike. All of kserve's own options apply (``--http_port``, ``--workers``, ``--enable_grpc``...).

kserve/pigment_kserve.py is this module's command line. ``import kserve`` here finds the installed kserve package
even with the repository root on the module path: the root's ``kserve/`` folder has no ``__init__.py``, and a
namespace folder never shadows a regular package.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml
from kserve.errors import InvalidInput

import kserve
from handler import kserve_v2
from handler.predictor import Predictor, PredictorOptions
from kserve import InferOutput, InferRequest, InferResponse, model_server
from model.config import from_dict
from model.cpu import threads_per_worker, use_threads
from serving.archive import MODEL_CONFIG

log = logging.getLogger(__name__)


class PigmentModel(kserve.Model):
    """One pigment checkpoint answering KServe v1 and v2 REST requests through the framework-free Predictor."""

    def __init__(self, name: str, checkpoint: Path, options: PredictorOptions | None = None,
                 device: str = "cpu", max_batch: int = 1, workers: int = 1):
        super().__init__(name)
        self.workers = workers  # kserve's server processes, each with this model: they share the cores
        self.checkpoint = checkpoint
        self.options = options or PredictorOptions()
        self.device = device
        self.max_batch = max_batch
        self.predictor: Predictor | None = None

    def load(self) -> bool:
        """Build the Predictor from the checkpoint (nothing is downloaded); KServe reports ready afterwards."""
        use_threads(threads_per_worker(self.workers, self.options.threads))
        self.predictor = Predictor(self.checkpoint, self.options, self.device, max_batch=self.max_batch)
        self.ready = True
        return self.ready

    def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        """v2 (an InferRequest) or v1 (``{"instances": [...]}``); one batched forward for all v1 instances."""
        if isinstance(payload, InferRequest):
            return self._predict_v2(payload)
        return self._predict_v1(payload)

    def _predict_v2(self, request: InferRequest) -> InferResponse:
        try:
            pigment_request = kserve_v2.request_from_inputs(request.inputs)
        except ValueError as error:  # InputError: names the input and the fix
            raise InvalidInput(str(error)) from None
        answer = self.predictor.predict([pigment_request])[0]
        if "error" in answer:
            raise InvalidInput(kserve_v2.v2_error(answer)[0])
        outputs = [InferOutput(t["name"], t["shape"], t["datatype"], t["data"])
                   for t in kserve_v2.answer_tensors(answer)]
        return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=outputs, model_version=self.predictor.version)

    def _predict_v1(self, payload: Any) -> dict:
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('expected {"instances": [{"clinical_image": "<base64>", ...}, ...]} with at least '
                               "one instance (optional fields: dermoscopy_image, multispectral_image)")
        answers = self.predictor.predict([{"body": instance} for instance in instances])
        errors = [f"instance {i}: {a['error']}" for i, a in enumerate(answers) if "error" in a]
        if errors:
            raise InvalidInput("; ".join(errors))
        return {"predictions": answers}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a pigment checkpoint (.pth)")
    parser.add_argument("--model_config", type=Path, default=MODEL_CONFIG,
                        help="YAML whose `handler:` section holds the Predictor options (as in the .mar)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max_batch", type=int, default=8,
                        help="the backend is warmed up for v1 batches of up to this many instances")
    parser.add_argument("--bind_host", default="0.0.0.0",
                        help="address of the REST server (kserve itself always binds 0.0.0.0); 127.0.0.1 for "
                             "a local run")
    parser.set_defaults(model_name="pigment")
    return parser.parse_args(argv)


def bind_rest_server(host: str) -> None:
    """Make kserve's REST server listen on ``host``: kserve 0.20 hard-codes 0.0.0.0 in protocol/rest/server.py."""
    base = model_server.RESTServer

    class HostRESTServer(base):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.config.host = host  # uvicorn reads it when the server starts

    model_server.RESTServer = HostRESTServer


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    section = yaml.safe_load(args.model_config.read_text()).get("handler") if args.model_config.is_file() else None
    model = PigmentModel(args.model_name, args.checkpoint, from_dict(PredictorOptions, section, "handler"),
                         args.device, args.max_batch, args.workers)
    model.load()
    if args.bind_host != "0.0.0.0":
        bind_rest_server(args.bind_host)
    model_server.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers,
                             enable_grpc=args.enable_grpc).start([model])


if __name__ == "__main__":
    main()
