"""Served saliency: the Predictor's explanation answers, then one real TorchServe ``/explanations/pigment`` call."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from handler.predictor import OVERLAY_MAX_SIDE, Predictor, PredictorOptions
from model.accelerate import available_backends
from tests.images import SUBSETS, image_bytes, request_for
from tests.torchserve_harness import java_available


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint)


def png_of_size(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_size(answer: dict, modality: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(answer["heatmaps"][modality]["png_base64"]))).size


def test_an_explanation_has_the_score_and_one_map_per_sent_modality_and_is_deterministic(predictor):
    request = request_for(SUBSETS[-1], seed=7)
    first, second = predictor.explain([request]), predictor.explain([request])
    (answer,) = first
    assert set(answer) == set(predictor.predict([request])[0]) | {"heatmaps"}
    assert list(answer["heatmaps"]) == answer["modalities"] == list(SUBSETS[-1])
    for entry in answer["heatmaps"].values():
        assert 0.0 <= entry["peak"] <= 1.0
    # Same Grad-CAM model as prediction under eager_fp32: the same score and severity.
    # An explanation is the prediction's answer (every field, from the one scoring path) plus the maps.
    (predicted,) = predictor.predict([request])
    assert {k: v for k, v in answer.items() if k != "heatmaps"} == predicted
    assert first == second  # byte-identical base64 overlays for the same input


def test_the_overlay_keeps_the_sent_image_size_and_aspect_and_caps_the_longest_side(predictor):
    (answer,) = predictor.explain([{"clinical_image": png_of_size(120, 72),
                                    "dermoscopy_image": png_of_size(1300, 500, seed=1)}])
    assert overlay_size(answer, "clinical") == (120, 72)
    assert overlay_size(answer, "dermoscopy") == (OVERLAY_MAX_SIDE, round(500 * OVERLAY_MAX_SIDE / 1300))


def test_a_bad_explanation_request_gets_the_same_failure_as_a_prediction_and_the_batch_goes_on(predictor):
    bad = [{"dermoscopy_image": image_bytes(1)}, {"clinical_image": b"not a photo"}, {"xray": image_bytes(2)}]
    good = request_for(("clinical",), seed=3)
    explained = predictor.explain([*bad, good])
    assert explained[:3] == predictor.predict(bad)
    assert "heatmaps" in explained[3]


@pytest.mark.skipif("openvino_bf16" not in available_backends(), reason="needs `pip install openvino`")
def test_an_accelerated_backend_explains_with_an_eager_fp32_copy(tiny_checkpoint, predictor):
    request = request_for(("clinical", "dermoscopy"), seed=11)
    accelerated = Predictor(tiny_checkpoint, PredictorOptions(backend="openvino_bf16"))
    (answer,) = accelerated.explain([request])
    assert answer == predictor.explain([request])[0]
    assert accelerated._eager is not None and accelerated._eager is not accelerated.loaded.model


@pytest.mark.skipif(not java_available(), reason="TorchServe needs Java 17 (scripts/ensure_java.sh)")
def test_the_explanations_endpoint_returns_a_map_per_modality_and_a_400_naming_the_missing_clinical_image(served):
    def post(route: str, request: dict[str, bytes]) -> requests.Response:
        files = {name: (f"{name}.png", data) for name, data in request.items()}
        barrier.wait()  # sent together, so TorchServe may batch explanations with a prediction
        return requests.post(f"{served.inference_url}/{route}/pigment", files=files, headers=served.auth(),
                             timeout=120)

    good = request_for(("clinical", "dermoscopy", "multispectral"), seed=21)
    calls = [("explanations", good), ("explanations", {"dermoscopy_image": image_bytes(22)}), ("predictions", good)]
    barrier = threading.Barrier(len(calls))
    with ThreadPoolExecutor(len(calls)) as pool:
        explained, missing, predicted = pool.map(lambda call: post(*call), calls)
    assert explained.status_code == 200, explained.text
    assert set(explained.json()["heatmaps"]) == {"clinical", "dermoscopy", "multispectral"}
    assert explained.json()["score"] == predicted.json()["score"] and "heatmaps" not in predicted.json()
    assert missing.status_code == 400 and missing.json()["field"] == "clinical_image"
