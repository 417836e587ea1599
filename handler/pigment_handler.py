"""TorchServe entry point of pigment.mar: a thin adapter from TorchServe's context to :class:`Predictor`.

BaseHandler.handle stays as is (preprocess -> inference -> postprocess, HandlerTime, profiling); this class only
translates the context: the checkpoint named by the manifest, the device from ``gpu_id``, the ``handler:``
section of model-config.yaml, per-request HTTP statuses and the custom metrics declared in
serve_config/metrics.yaml (TorchServe drops metrics that file does not declare).

The archive is extracted into a temporary model dir on ``sys.path``, with ``model/`` and ``handler/`` staged as
packages beside this file (scripts/build_mar.sh); this file is not named ``handler.py`` because that would
shadow the ``handler`` package.
"""

from __future__ import annotations

import http
import logging
import os
import time
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

from handler import kserve_v2
from handler.predictor import Failure, Predictor, PredictorOptions, repeated_part_failure
from model.config import from_dict
from model.cpu import threads_per_worker, use_threads
from model.scoring import Sample

log = logging.getLogger(__name__)


class PigmentHandler(BaseHandler):
    """One answer per request: a score, or a 4xx with ``{"error", "field", "status"}`` for that request only."""

    def initialize(self, context: Any) -> None:
        """Build the predictor from the archived checkpoint; nothing else is loaded or downloaded."""
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        model_yaml = context.model_yaml_config or {}
        options = from_dict(PredictorOptions, model_yaml.get("handler"), "handler")
        threads = threads_per_worker(int(model_yaml.get("maxWorkers", 1)), options.threads)
        use_threads(threads)
        self.device = _device(properties.get("gpu_id"))
        checkpoint = os.path.join(properties["model_dir"], self.manifest["model"]["serializedFile"])
        # Warm-up for every batch size TorchServe can send happens here, before the worker reports READY.
        self.predictor = Predictor(checkpoint, options, self.device, max_batch=int(model_yaml.get("batchSize", 1)))
        log.info("pigment handler ready: %s backend, %d threads, code from %s", options.backend, threads,
                 os.path.dirname(__file__))
        self.initialized = True

    def preprocess(self, data: list[Any]) -> list[Sample | Failure]:
        """Decode and validate each request; a bad one gets its own status now, the others go on."""
        start = time.perf_counter()
        if kserve_v2.envelope_active(self.context):  # TorchServe's kservev2 envelope: `data` is ONE request's v2 inputs
            prepared = kserve_v2.prepare_envelope(self.predictor, data, self.context)
        else:
            prepared = [self._repeated_part(idx, request) or item
                        for idx, (request, item) in enumerate(zip(data, self.predictor.prepare(data)))]
        for idx, item in enumerate(prepared):
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(item, Failure):
                # The reason phrase must be one short line; the JSON body carries the full message.
                self.context.set_response_status(item.status, http.HTTPStatus(item.status).phrase, idx=idx)
        self._count(prepared)
        self._time("PigmentPreprocessTime", start)
        return prepared

    def inference(self, prepared: list[Sample | Failure], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """One batched forward for all valid predictions, Grad-CAM for explanations, one answer per request in order."""
        start = time.perf_counter()
        answers = self.predictor.answer(prepared, explain=self._explanation_requests(len(prepared)))
        for idx, (item, answer) in enumerate(zip(prepared, answers, strict=True)):
            if not isinstance(item, Failure) and "error" in answer:  # rejected after scoring (out of distribution)
                self.context.set_response_status(answer["status"], http.HTTPStatus(answer["status"]).phrase, idx=idx)
        self._time("PigmentInferenceTime", start)
        rejected = sum(isinstance(p, Failure) for p in prepared)
        log.info("batch of %d: %d answered, %d rejected", len(prepared), len(prepared) - rejected, rejected)
        return answers

    def explain_handle(self, prepared: list[Sample | Failure], raw_data: list[Any]) -> list[dict[str, Any]]:
        """``/explanations/pigment``. BaseHandler routes the whole batch here when its FIRST request is an
        explanation, so each request is still answered as it asked (see :meth:`_explanation_requests`)."""
        return self.inference(prepared)

    def _explanation_requests(self, n: int) -> list[bool]:
        """Which of the batch's requests came to ``/explanations`` (TorchServe sets an ``explain`` header on each)."""
        return [self.context.get_request_header(idx, "explain") == "True" for idx in range(n)]

    def postprocess(self, answers: list[dict[str, Any]]) -> list[Any]:
        if kserve_v2.envelope_active(self.context):  # v2 outputs; the envelope wraps them into one v2 response
            return kserve_v2.envelope_result(answers[0], self.context)
        return answers

    def _repeated_part(self, idx: int, request: Any) -> Failure | None:
        """A field sent twice in one multipart body (TorchServe hands us only its last copy), from Content-Length."""
        headers = {k.lower(): v for k, v in self.context.get_all_request_header(idx).items() if isinstance(v, str)}
        return repeated_part_failure(request, headers.get("content-type"), headers.get("content-length"))

    def _count(self, prepared: list[Sample | Failure]) -> None:
        metrics = self.context.metrics
        for item in prepared:
            # Always pass a fresh list: TorchServe appends its default dimensions to the list it is given.
            if isinstance(item, Failure):
                metrics.add_counter("PigmentRejectedRequests", 1, dimensions=[Dimension("Status", str(item.status))])
            else:
                metrics.add_counter("PigmentRequests", 1, dimensions=[Dimension("Modalities", item.subset)])

    def _time(self, name: str, start: float) -> None:
        self.context.metrics.add_time(name, round((time.perf_counter() - start) * 1000, 3), dimensions=[])


def _device(gpu_id: int | None) -> torch.device:
    """``cuda:<gpu_id>`` when TorchServe assigned a GPU (deviceType gpu) and CUDA works, else CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")

