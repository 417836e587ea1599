"""Request -> answer, without TorchServe: decode, validate, batch, predict, format.

A request is what TorchServe hands a handler for one HTTP call: a dict of field name -> value. Two shapes
are accepted:

* multipart/form-data: ``{"clinical_image": bytes, "dermoscopy_image": bytes, "multispectral_image": bytes}``
  (clinical required, the others optional);
* a JSON object with the same names and base64 strings as values, which TorchServe passes as a single
  ``"body"`` (or ``"data"``) entry, either already parsed (a dict) or as raw bytes.

Nothing is silently ignored: an unknown field, a missing clinical image, broken base64 or a file that is not a
supported image makes that request an :class:`Failure` (HTTP status, field, message) while the rest of the
batch is answered. All valid requests of a batch go through one forward per encoder, even when they carry
different modality subsets (absent rows are zeros and ``aux_mask`` marks them), so each answer equals the
answer the request gets alone.

An explanation request (TorchServe's ``/explanations/pigment``, or :meth:`Predictor.explain`) is decoded and
validated exactly like a prediction and answered with the score plus a Grad-CAM overlay per modality
(``model.saliency``), computed on the eager fp32 torch model whatever the serving backend.

A missing multispectral view is not simulated unless ``PredictorOptions.simulate_multispectral`` says so: the
answer reflects exactly what the user sent (``training.infer_single`` follows the same policy).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model import saliency, scoring
from model.accelerate import accelerate
from model.answer import SCORE_DECIMALS
from model.checkpoint import load_for_inference
from model.config import MODALITIES
from model.fusion_model import FusionModel
from model.preprocessing import DEFAULT_LIMITS, ImageLimits, InputError, decode_image
from model.scoring import Sample

log = logging.getLogger(__name__)

FIELDS: dict[str, str] = {f"{m}_image": m for m in MODALITIES}
"""Request field -> modality: ``clinical_image`` (required), ``dermoscopy_image``, ``multispectral_image``."""
REQUIRED_FIELD = "clinical_image"
BODY_KEYS = ("body", "data")
"""Names under which TorchServe passes a non-multipart body (``data`` comes from KServe-style envelopes)."""
OVERLAY_MAX_SIDE = 1024
"""Longest side of an explanation's overlay PNG: a 12 MP photo's overlay would be ~20 MB of base64."""


@dataclass(frozen=True)
class PredictorOptions:
    """The ``handler:`` section of ``serve_config/model-config.yaml`` (loaded strictly: unknown keys are errors).

    ``threads`` is the torch intra-op thread count per worker; 0 lets the TorchServe handler pick
    ``cpu_count // maxWorkers`` so that all workers together do not oversubscribe the cores. ``backend`` is how the
    encoders run (``model.accelerate.BACKENDS``): ``eager_fp32`` is the exact reference; the shipped
    model-config.yaml serves ``openvino_bf16`` on CPU (docs/performance.md says why) and a GPU takes ``eager_bf16``.
    """

    threads: int = 0
    simulate_multispectral: bool = False
    max_pixels: int = DEFAULT_LIMITS.max_pixels
    max_full_decode_pixels: int = DEFAULT_LIMITS.max_full_decode_pixels
    min_side: int = DEFAULT_LIMITS.min_side
    backend: str = "eager_fp32"
    reject_out_of_distribution: bool = False
    """False: an image unlike the training data is scored and flagged (``in_distribution: false``); True: that
    request is a 422 naming the image's field (the one farthest from the training distribution)."""

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, max_full_decode_pixels=self.max_full_decode_pixels,
                           min_side=self.min_side)


@dataclass(frozen=True)
class Failure:
    """A request that cannot be answered with a score: its HTTP status, the field at fault and why."""

    status: int
    field: str
    message: str

    @classmethod
    def from_error(cls, error: InputError) -> Failure:
        return cls(error.status, error.field, str(error))

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "status": self.status}


class Predictor:
    """A checkpoint's model with its preprocessing and severity bands, answering batches of requests."""

    def __init__(self, checkpoint: str | Path, options: PredictorOptions = PredictorOptions(),
                 device: str | torch.device = "cpu", max_batch: int = 1):
        """``max_batch`` is the largest batch :meth:`answer` will get (TorchServe's batchSize): the backend is
        warmed up for every size up to it, so no request pays a compile."""
        self.options = options
        self.device = torch.device(device)
        self.checkpoint = Path(checkpoint)
        self.loaded = load_for_inference(checkpoint, self.device)
        self._eager: FusionModel | None = None  # Grad-CAM's fp32 copy when the backend replaced the encoders
        accelerate(self.loaded.model, options.backend, max_batch, threads=torch.get_num_threads())
        self.limits = options.limits
        log.info("loaded %s (model_version %s) on %s, backend %s; simulate_multispectral=%s", checkpoint,
                 self.version, self.device, options.backend, options.simulate_multispectral)

    @property
    def version(self) -> str:
        return self.loaded.version

    def predict(self, requests: list[Any]) -> list[dict[str, Any]]:
        """Answer every request of a batch: a score answer or a :meth:`Failure.body`, in request order."""
        return self.answer(self.prepare(requests))

    def prepare(self, requests: list[Any]) -> list[Sample | Failure]:
        """Decode and validate each request on its own, so one bad request never fails the others."""
        return [self._prepare_one(request) for request in requests]

    def explain(self, requests: list[Any]) -> list[dict[str, Any]]:
        """Like :meth:`predict`, but each valid request is answered with Grad-CAM overlays (:meth:`explain_sample`)."""
        return self.answer(self.prepare(requests), explain=[True] * len(requests))

    def answer(self, prepared: list[Sample | Failure], explain: Sequence[bool] | None = None) -> list[dict[str, Any]]:
        """One batched forward for all samples, then one answer per entry (failures pass through as bodies).

        ``explain[i]`` marks entries to answer with :meth:`explain_sample` instead (TorchServe may batch
        explanation and prediction requests together); they are left out of the batched forward.
        """
        explain = [False] * len(prepared) if explain is None else list(explain)
        samples = [p for p, e in zip(prepared, explain, strict=True) if isinstance(p, Sample) and not e]
        scored = iter(self._score(samples))
        return [item.body() if isinstance(item, Failure) else self.explain_sample(item) if wants_explanation
                else next(scored) for item, wants_explanation in zip(prepared, explain, strict=True)]

    def _score(self, samples: list[Sample]) -> list[dict[str, Any]]:
        """One batched forward -> an answer per sample, or a 422 body where ``reject_out_of_distribution`` says."""
        if not samples:
            return []
        out = self.forward_all(samples)
        trust = scoring.assess(self.loaded, out, samples, SCORE_DECIMALS)
        answers = []
        for i, sample in enumerate(samples):
            if self.options.reject_out_of_distribution and trust[i]["in_distribution"] is False:
                answers.append(self._out_of_distribution(sample, trust[i], out.features[i:i + 1],
                                                         out.present[i:i + 1]).body())
                continue
            answers.append(scoring.answer(self.loaded, sample, float(out.scores[i]), out.attention[i].tolist(),
                                          SCORE_DECIMALS, trust[i]))
        return answers

    def _out_of_distribution(self, sample: Sample, trust: dict[str, Any], features: Tensor,
                             present: Tensor) -> Failure:
        """The 422 of a request whose images are unlike the training data, naming the farthest image's field."""
        views = scoring.appearance([sample], present) if self.loaded.trust.uses_appearance else None
        distances = self.loaded.trust.ood.distances(features, views)[0].masked_fill(~present[0], -1.0)  # [M]
        modality = MODALITIES[int(distances.argmax())]
        return Failure(422, f"{modality}_image",
                       f"{modality}_image: does not look like the lesion images the model was trained on "
                       f"(out-of-distribution score {trust['ood_score']} > threshold {trust['ood_threshold']}); "
                       f"send a photo of a pigmented skin lesion, or ask the operator to set "
                       f"handler.reject_out_of_distribution=false to score it with a warning")

    def explain_sample(self, sample: Sample) -> dict[str, Any]:
        """One sample -> the answer (``model.scoring.answer``) plus ``heatmaps: {modality: {"png_base64", "peak"}}``.

        The score comes from the eager fp32 model that the maps differentiate, so with an accelerated backend it
        can differ from the predicted score in the last decimals. Each overlay is drawn over the sent photo decoded
        at full size (no JPEG draft), aspect ratio kept, longest side at most ``OVERLAY_MAX_SIDE``; ``peak`` is the
        map's maximum (0.0: nothing in that image raised the score, see ``model.saliency``).
        """
        eager = self._eager_model()
        tensors = {m: t.unsqueeze(0).to(self.device) for m, t in sample.images.items()}  # [1, 3, S, S]
        result = saliency.explain(eager, tensors, saliency.aux_mask_for(tensors).to(self.device))
        heatmaps = {}
        for modality, heat in result.heatmaps.items():
            photo = decode_image(sample.sources[modality], f"{modality}_image", self.limits)
            heatmaps[modality] = {"png_base64": saliency.overlay_base64(photo, heat, max_side=OVERLAY_MAX_SIDE),
                                  "peak": round(float(heat.max()), SCORE_DECIMALS)}
        out = scoring.forward_all(eager, [sample], self.device)  # the same fp32 model, for attention and trust
        trust = scoring.assess(self.loaded, out, [sample], SCORE_DECIMALS)[0]
        return {**scoring.answer(self.loaded, sample, float(out.scores[0]), out.attention[0].tolist(),
                                 SCORE_DECIMALS, trust), "heatmaps": heatmaps}

    def _eager_model(self) -> FusionModel:
        """The fp32 torch model for Grad-CAM: the served one under ``eager_fp32``; otherwise a second copy, loaded
        on the first explanation and kept (accelerated encoders have no autograd graph, OpenVINO's not even the
        torch weights), so prediction-only workers never pay its memory."""
        if self.options.backend == "eager_fp32":
            return self.loaded.model
        if self._eager is None:
            log.info("first explanation under backend %s: loading an eager fp32 copy of %s for Grad-CAM",
                     self.options.backend, self.checkpoint)
            self._eager = load_for_inference(self.checkpoint, self.device).model
        return self._eager

    def forward(self, samples: list[Sample]) -> tuple[Tensor, Tensor]:
        """Samples with any modality subsets -> scores ``[B]`` and attention ``[B, 3]`` (``model.scoring.forward``)."""
        return scoring.forward(self.loaded.model, samples, self.device)

    def forward_all(self, samples: list[Sample]) -> scoring.Forward:
        """:meth:`forward` plus each encoder's feature and the modalities used (``model.scoring.forward_all``)."""
        return scoring.forward_all(self.loaded.model, samples, self.device)

    def _prepare_one(self, request: Any) -> Sample | Failure:
        try:
            return self._decode(read_fields(request))
        except InputError as error:
            return Failure.from_error(error)

    def _decode(self, fields: dict[str, bytes]) -> Sample:
        """Validated field bytes -> a :class:`model.scoring.Sample` (the one scoring path's preparation)."""
        sources = {FIELDS[name]: data for name, data in fields.items()}
        return scoring.prepare(sources, self.loaded.data_cfg, self.limits, self.options.simulate_multispectral,
                               names={m: f"{m}_image" for m in sources})



def read_fields(request: Any) -> dict[str, bytes]:
    """A TorchServe request (multipart dict or JSON body) -> ``{field: encoded image bytes}``, validated.

    Raises:
        InputError: unknown fields (all named, with the valid ones), no ``clinical_image``, a JSON body that is
            not an object, a repeated JSON key, a value that is not base64 text.
    """
    if not isinstance(request, Mapping):
        raise InputError("body", f"expected form fields or a JSON object, got {type(request).__name__}")
    if len(request) == 1 and next(iter(request)) in BODY_KEYS:
        fields = _json_fields(*next(iter(request.items())))
    else:
        _reject_unknown(request)
        fields = {name: _as_bytes(value) for name, value in request.items()}
    if REQUIRED_FIELD not in fields:
        raise InputError(REQUIRED_FIELD, f"is required (the clinical photo); optional fields: {_optional()}")
    return fields


MULTIPART_SLACK_PER_PART = 2048
"""Bytes of multipart framing allowed per part (boundary, Content-Disposition with a long file name, Content-Type)."""


def repeated_part_failure(request: Any, content_type: str | None, content_length: str | int | None) -> Failure | None:
    """A 400 when a multipart body held more than the parts that reached the handler: a field sent twice.

    TorchServe's worker merges form parts into a dict, so of a repeated field only the last copy arrives. The
    request's Content-Length still counts every copy; a gap larger than multipart framing explains
    (``MULTIPART_SLACK_PER_PART`` per part) means a part was dropped. A repeated part smaller than the slack
    (under ~2 KiB, below any real photo) goes unnoticed.
    """
    if not isinstance(request, Mapping) or not content_length or "multipart/" not in (content_type or "").lower():
        return None
    try:
        declared = int(content_length)
    except ValueError:
        return None
    received = sum(len(_as_bytes(value)) for value in request.values())
    if declared - received <= MULTIPART_SLACK_PER_PART * (len(request) + 1):
        return None
    fields = sorted(request, key=lambda name: (name not in FIELDS, name))
    return Failure(400, ",".join(fields), f"{', '.join(fields)}: the multipart body is {declared} bytes but its "
                                          f"parts hold {received}; a field was sent more than once (only its last "
                                          f"copy would be used); send each field once")


def _json_fields(name: str, body: Any) -> dict[str, bytes]:
    """A JSON body, parsed or raw -> ``{field: decoded base64 bytes}``; ``null`` values count as absent."""
    if isinstance(body, (bytes, bytearray, str)):
        body = _parse_json(name, body)
    if not isinstance(body, dict):
        raise InputError(name, f"the JSON body must be an object like {{\"{REQUIRED_FIELD}\": \"<base64>\"}}, "
                               f"got a JSON {type(body).__name__}")
    _reject_unknown(body)
    return {key: _b64decode(key, value) for key, value in body.items() if value is not None}


def _parse_json(name: str, raw: bytes | bytearray | str) -> Any:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
    if not text.strip():
        raise InputError(name, f"the request is empty; send multipart/form-data with {REQUIRED_FIELD} "
                               f"(optional: {_optional()}) or a JSON object of base64 strings")
    try:
        return json.loads(text, object_pairs_hook=_no_repeated_keys)
    except json.JSONDecodeError as exc:
        raise InputError(name, f"is neither multipart/form-data nor valid JSON ({exc}); send images as form "
                               f"fields ({', '.join(FIELDS)}) or a JSON object of base64 strings") from None


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InputError(key, "appears more than once in the JSON body; send each image once")
        seen.add(key)
    return dict(pairs)


def _b64decode(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise InputError(name, f"expected a base64-encoded image string, got a JSON {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a browser's data URL: data:image/jpeg;base64,<payload>
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(name, f"is not valid base64 ({exc}); encode the image file's bytes with base64") from None


def _reject_unknown(fields: Mapping[str, Any]) -> None:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InputError(",".join(unknown), f"unknown field(s) {', '.join(map(repr, unknown))}; valid fields are "
                                            f"{', '.join(FIELDS)} ({REQUIRED_FIELD} required)")


def _as_bytes(value: Any) -> bytes:
    """A multipart value as bytes. TorchServe may have decoded text or JSON parts; re-encode them so that
    ``decode_image`` reports what they are ("looks like text") instead of guessing here."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def _optional() -> str:
    return ", ".join(f for f in FIELDS if f != REQUIRED_FIELD)
