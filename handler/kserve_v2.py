"""Open inference protocol v2 (KServe "v2") <-> pigment requests and answers, without TorchServe or kserve imports.

One v2 request is one lesion. Its inputs are the images, each a BYTES tensor of shape ``[1]`` holding the base64 of
the image file; ``clinical`` is required, ``dermoscopy`` and ``multispectral`` are optional::

    {"id": "42", "inputs": [{"name": "clinical", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]},
                            {"name": "dermoscopy", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}]}

The answer's outputs (:func:`answer_tensors`) carry the same values as the JSON answer of ``/predictions``:
``score`` FP32 [1], ``severity`` BYTES [1], ``modalities`` BYTES [k], ``simulated`` BYTES [m] (m may be 0),
``attention`` FP32 [3] with ``attention_tokens`` BYTES [3] naming its entries, ``model_version`` BYTES [1], and how
far to trust the score: ``interval`` FP32 [2] (low, high), ``interval_coverage`` FP32 [1],
``interval_calibrated_on`` BYTES [1], ``severity_probabilities`` FP32 [3] in the order of ``severity_labels``
BYTES [3], ``in_distribution`` BOOL [1], ``ood_score`` FP32 [1], ``ood_threshold`` FP32 [1] (each of these with
shape [0] where the JSON answer has null: a checkpoint without calibration), and ``quality_warnings`` BYTES [k]
(``"<modality>:<warning>"``, k may be 0).
A rejected request answers ``error`` BYTES [1], ``field`` BYTES [1], ``status`` INT32 [1] (TorchServe, with that
HTTP status); the KServe-native server answers v2's own ``{"error": ...}`` instead.

Two servers use this module: the TorchServe handler behind TorchServe's ``kservev2`` request envelope
(:func:`envelope_active`, :func:`prepare_envelope`, :func:`envelope_result`) and kserve/pigment_kserve.py
(:func:`request_from_inputs`, :func:`answer_tensors`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from handler.predictor import FIELDS, REQUIRED_FIELD, Failure, Predictor
from model.fusion_model import ATTENTION_TOKENS
from model.preprocessing import InputError
from model.scoring import Sample
from model.severity import LABELS

log = logging.getLogger(__name__)

INPUTS: dict[str, str] = {modality: name for name, modality in FIELDS.items()}
"""v2 input name -> Predictor field: ``clinical`` -> ``clinical_image`` and so on."""
REQUIRED_INPUT = FIELDS[REQUIRED_FIELD]
NUMPY_DTYPES = {"FP32": np.float32, "INT32": np.int32, "BOOL": np.bool_, "BYTES": object}
"""How each output datatype reaches TorchServe's envelope, which derives the v2 datatype from the numpy dtype."""


def request_from_inputs(inputs: Sequence[Any]) -> dict[str, Any]:
    """The v2 inputs of one request -> a Predictor request ``{"body": {"clinical_image": "<base64>", ...}}``.

    Each input is a mapping or an object with ``name``, ``datatype``, ``shape`` and ``data``; ``data`` is a list
    holding one base64 string (or bytes), or, behind TorchServe's envelope, that string itself.

    Raises:
        InputError: an unknown or repeated input name, a datatype other than BYTES, a shape other than [1],
            data that is not one base64 string, or no ``clinical`` input.
    """
    body: dict[str, str] = {}
    for tensor in inputs:
        name, datatype, shape, data = (_get(tensor, key) for key in ("name", "datatype", "shape", "data"))
        if name not in INPUTS:
            raise InputError(str(name), f"unknown v2 input {name!r}; valid inputs are {', '.join(INPUTS)} "
                                        f"({REQUIRED_INPUT} required), each BYTES of shape [1] holding base64")
        if INPUTS[name] in body:
            raise InputError(name, "appears more than once in the inputs; send each image once")
        if datatype != "BYTES":
            raise InputError(name, f"datatype must be BYTES (a base64-encoded image file), got {datatype!r}")
        if shape is not None and list(shape) != [1]:
            raise InputError(name, f"shape must be [1] (one image per request), got {list(shape)}")
        body[INPUTS[name]] = _one_string(name, data)
    if REQUIRED_FIELD not in body:
        raise InputError(REQUIRED_INPUT, f"is required (the clinical photo); optional inputs: "
                                         f"{', '.join(n for n in INPUTS if n != REQUIRED_INPUT)}")
    return {"body": body}


def answer_tensors(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Predictor answer (score or :meth:`Failure.body`) -> v2 output tensors ``{name, datatype, shape, data}``."""
    if "error" in answer:
        message, field = v2_error(answer)
        return [_tensor("error", "BYTES", [message]), _tensor("field", "BYTES", [field]),
                _tensor("status", "INT32", [answer["status"]])]
    attention = answer["attention"]
    return [
        _tensor("score", "FP32", [answer["score"]]),
        _tensor("severity", "BYTES", [answer["severity"]]),
        _tensor("modalities", "BYTES", list(answer["modalities"])),
        _tensor("simulated", "BYTES", list(answer["simulated"])),
        _tensor("attention", "FP32", [attention[t] for t in ATTENTION_TOKENS]),
        _tensor("attention_tokens", "BYTES", list(ATTENTION_TOKENS)),
        _tensor("model_version", "BYTES", [answer["model_version"]]),
        *trust_tensors(answer),
    ]


def trust_tensors(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trust fields of an answer as v2 tensors; a null field is a tensor of shape [0]."""
    interval, probabilities = answer.get("interval"), answer.get("severity_probabilities")
    in_distribution, ood_score, threshold = (answer.get(k) for k in ("in_distribution", "ood_score", "ood_threshold"))
    return [
        _tensor("interval", "FP32", [interval["low"], interval["high"]] if interval else []),
        _tensor("interval_coverage", "FP32", [interval["coverage"]] if interval else []),
        _tensor("interval_calibrated_on", "BYTES", [interval["calibrated_on"]] if interval else []),
        _tensor("severity_probabilities", "FP32", [probabilities[k] for k in LABELS] if probabilities else []),
        _tensor("severity_labels", "BYTES", list(LABELS)),
        _tensor("in_distribution", "BOOL", [] if in_distribution is None else [bool(in_distribution)]),
        _tensor("ood_score", "FP32", [] if ood_score is None else [ood_score]),
        _tensor("ood_threshold", "FP32", [] if threshold is None else [threshold]),
        _tensor("quality_warnings", "BYTES", [f"{w['modality']}:{w['warning']}"
                                              for w in answer.get("quality_warnings") or []]),
    ]


def v2_error(failure: Mapping[str, Any]) -> tuple[str, str]:
    """A :meth:`Failure.body` in v2 terms: ``(message, field)`` with ``clinical_image`` said as ``clinical``."""
    field = failure["field"]
    v2_field = ",".join(FIELDS.get(name, name) for name in field.split(","))
    message = failure["error"]
    if message.startswith(f"{field}:"):
        message = v2_field + message[len(field):]
    return message, v2_field


def answer_from_tensors(outputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """v2 response outputs -> the ``/predictions`` answer dict (for clients and tests comparing the two APIs)."""
    by_name = {o["name"]: o["data"] for o in outputs}
    if "error" in by_name:
        return {"error": by_name["error"][0], "field": by_name["field"][0], "status": int(by_name["status"][0])}
    return {
        "score": float(by_name["score"][0]),
        "severity": by_name["severity"][0],
        "modalities": list(by_name["modalities"]),
        "simulated": list(by_name["simulated"]),
        "attention": dict(zip(by_name["attention_tokens"], map(float, by_name["attention"]), strict=True)),
        "model_version": by_name["model_version"][0],
        **trust_from_tensors(by_name),
    }


def trust_from_tensors(by_name: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The inverse of :func:`trust_tensors` (float32 values, as a v2 client reads them)."""
    def one(name: str) -> Any:
        return by_name[name][0] if len(by_name.get(name, [])) else None

    interval = by_name.get("interval") or []
    probabilities = by_name.get("severity_probabilities") or []
    return {
        "interval": {"low": float(interval[0]), "high": float(interval[1]),
                     "coverage": float(one("interval_coverage")),
                     "calibrated_on": one("interval_calibrated_on")} if len(interval) else None,
        "severity_probabilities": dict(zip(by_name["severity_labels"], map(float, probabilities), strict=True))
        if len(probabilities) else None,
        "in_distribution": None if one("in_distribution") is None else bool(one("in_distribution")),
        "ood_score": None if one("ood_score") is None else float(one("ood_score")),
        "ood_threshold": None if one("ood_threshold") is None else float(one("ood_threshold")),
        "quality_warnings": [dict(zip(("modality", "warning"), w.split(":", 1), strict=True))
                             for w in by_name.get("quality_warnings") or []],
    }


# -- TorchServe's kservev2 envelope (ts/torch_handler/request_envelope/kservev2.py, TorchServe 0.12) ---------------
# The envelope parses the JSON of the FIRST request of a batch only, hands the handler that request's input
# tensors as if they were the batch (BYTES data already reduced to data[0]), and records their names in
# ``context.input_names``. It then names output i after ``context.input_names[i]`` and derives each output's
# datatype and shape from ``np.array(item)``, and returns ONE response. Hence: batchSize must be 1
# (pytorch/serve#2158), and the handler renames the outputs by replacing ``context.input_names``.


def envelope_active(context: Any) -> bool:
    """True while TorchServe's kservev2 envelope wraps this call (it sets ``context.input_names`` before it)."""
    return isinstance(getattr(context, "input_names", None), list)


def prepare_envelope(predictor: Predictor, inputs: list[Any], context: Any) -> list[Sample | Failure]:
    """The envelope's "batch" (one request's v2 inputs) -> ``[Sample or Failure]`` for that one request."""
    request_ids = getattr(context, "request_ids", None) or {}
    if len(request_ids) > 1:
        log.error("TorchServe batched %d requests but its kservev2 envelope answers only the first one "
                  "(pytorch/serve#2158); register pigment with batchSize 1 (kserve/layout.py does)",
                  len(request_ids))
    try:
        request = request_from_inputs(inputs)
    except InputError as error:
        return [Failure.from_error(error)]
    return predictor.prepare([request])


def envelope_result(answer: Mapping[str, Any], context: Any) -> list[np.ndarray]:
    """One answer -> the arrays the envelope turns into v2 outputs, renaming them via ``context.input_names``."""
    tensors = answer_tensors(answer)
    context.input_names = [t["name"] for t in tensors]
    return [np.array(t["data"], dtype=NUMPY_DTYPES[t["datatype"]]) for t in tensors]


# -- helpers -------------------------------------------------------------------------------------------------------
def _tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


def _get(tensor: Any, key: str) -> Any:
    return tensor.get(key) if isinstance(tensor, Mapping) else getattr(tensor, key, None)


def _one_string(name: str, data: Any) -> str:
    """``["<base64>"]``, ``[b"<base64>"]`` or (behind TorchServe's envelope) ``"<base64>"`` -> the base64 text."""
    if isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii", errors="replace")
    if not isinstance(data, str):
        raise InputError(name, f"data must be one base64 string (shape [1]), got {type(data).__name__}")
    return data
