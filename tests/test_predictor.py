"""The framework-free predictor: contract of answers and errors, batching of mixed subsets, offline parity."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handler.predictor import FIELDS, Failure, Predictor, PredictorOptions
from model.checkpoint import load_for_inference
from model.config import from_dict
from model.fusion_model import ATTENTION_TOKENS
from model.preprocessing import preprocess_bytes
from model.severity import LABELS
from tests.images import SUBSETS, image_bytes, infer_single_answer, request_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint)


def as_json(request: dict[str, bytes]) -> dict[str, str]:
    return {name: base64.b64encode(data).decode("ascii") for name, data in request.items()}


@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_answer_follows_the_contract_for_every_modality_subset(predictor, subset):
    (answer,) = predictor.predict([request_for(subset, seed=1)])
    assert set(answer) == {"score", "severity", "modalities", "simulated", "attention", "model_version",
                           "interval", "severity_probabilities", "in_distribution", "ood_score", "ood_threshold",
                           "quality_warnings"}
    assert 0.0 <= answer["score"] <= 1.0 and answer["score"] == round(answer["score"], 4)
    assert answer["severity"] in LABELS
    assert answer["modalities"] == list(subset) and answer["simulated"] == []
    assert list(answer["attention"]) == list(ATTENTION_TOKENS)
    assert sum(answer["attention"].values()) == pytest.approx(1.0, abs=1e-3)
    assert answer["model_version"] == "tiny-test"


def test_answer_equals_the_eager_model_on_the_same_files(predictor, tiny_checkpoint):
    loaded = load_for_inference(tiny_checkpoint)
    request = request_for(("clinical", "dermoscopy", "multispectral"), seed=2)
    tensors = {m: preprocess_bytes(request[f"{m}_image"], m, loaded.data_cfg).unsqueeze(0) for m in FIELDS.values()}
    with torch.no_grad():
        expected = loaded.model(tensors["clinical"], tensors["dermoscopy"], tensors["multispectral"]).score.item()
    (answer,) = predictor.predict([request])
    assert answer["score"] == round(expected, 4)


def test_a_batch_mixing_modality_subsets_equals_each_request_alone(predictor):
    requests = [request_for(subset, seed=10 + i) for i, subset in enumerate(SUBSETS * 2)]
    batched, _ = predictor.forward(predictor.prepare(requests))
    alone = torch.cat([predictor.forward(predictor.prepare([r]))[0] for r in requests])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)


def test_missing_clinical_image_is_a_400_naming_the_field(predictor):
    (answer,) = predictor.predict([{"dermoscopy_image": image_bytes(3)}])
    assert answer["status"] == 400 and answer["field"] == "clinical_image"
    assert "clinical_image" in answer["error"] and "required" in answer["error"]


def test_unknown_only_fields_are_a_400_naming_them_and_the_valid_fields(predictor):
    (answer,) = predictor.predict([{"photo": image_bytes(3), "xray": image_bytes(4)}])
    assert answer["status"] == 400 and answer["field"] == "photo,xray"
    assert all(name in answer["error"] for name in ["'photo'", "'xray'", *FIELDS])


def test_an_unknown_field_beside_valid_ones_is_refused_not_ignored(predictor):
    (answer,) = predictor.predict([{**request_for(("clinical",), 5), "dermoscopy": image_bytes(6)}])
    assert answer["status"] == 400 and answer["field"] == "dermoscopy"


@pytest.mark.parametrize("payload", [b"just some text", b"%PDF-1.4 ...", b""], ids=["text", "pdf", "empty"])
def test_a_file_that_is_not_an_image_is_a_4xx_naming_the_field(predictor, payload):
    (answer,) = predictor.predict([{"clinical_image": image_bytes(3), "dermoscopy_image": payload}])
    assert answer["status"] in (400, 415) and answer["field"] == "dermoscopy_image"
    assert answer["error"].startswith("dermoscopy_image: ")


def test_a_bad_request_does_not_fail_the_rest_of_its_batch(predictor):
    good = request_for(("clinical", "dermoscopy"), seed=7)
    answers = predictor.predict([good, {"dermoscopy_image": image_bytes(1)}, {"clinical_image": b"text"}, good])
    assert [a.get("status") for a in answers] == [None, 400, 415, None]
    assert answers[0] == answers[3] == predictor.predict([good])[0]


@pytest.mark.parametrize("wrap", [
    lambda body: {"body": body},
    lambda body: {"data": body},
    lambda body: {"body": json.dumps(body).encode()},
    lambda body: {"body": bytearray(json.dumps(body).encode())},
], ids=["parsed-body", "parsed-data", "raw-bytes", "raw-bytearray"])
def test_a_json_body_of_base64_images_equals_multipart(predictor, wrap):
    request = request_for(("clinical", "multispectral"), seed=8)
    assert predictor.predict([wrap(as_json(request))]) == predictor.predict([request])


def test_a_data_url_and_null_optional_fields_are_accepted_in_json(predictor):
    request = request_for(("clinical",), seed=9)
    body = {"clinical_image": "data:image/png;base64," + as_json(request)["clinical_image"], "dermoscopy_image": None}
    assert predictor.predict([{"body": body}]) == predictor.predict([request])


@pytest.mark.parametrize("body, field, needle", [
    ({"clinical_image": "not base64 at all!"}, "clinical_image", "base64"),
    ({"clinical_image": 12}, "clinical_image", "int"),
    ({"clinical_image": ["a"]}, "clinical_image", "list"),
    (["clinical_image"], "body", "object"),
    (b'{"clinical_image": "AAAA", "clinical_image": "AAAA"}', "clinical_image", "more than once"),
    (b"\xff\xd8\xff raw jpeg bytes", "body", "multipart"),
    (b"   ", "body", "empty"),
], ids=["broken-base64", "number", "list", "json-array", "repeated-key", "raw-bytes", "blank"])
def test_a_malformed_json_body_is_a_400_naming_the_field(predictor, body, field, needle):
    (answer,) = predictor.predict([{"body": body}])
    assert answer["status"] == 400 and answer["field"] == field and needle in answer["error"]


def test_multispectral_is_simulated_only_when_the_option_says_so(tiny_checkpoint, predictor):
    simulating = Predictor(tiny_checkpoint, PredictorOptions(simulate_multispectral=True))
    request = request_for(("clinical", "dermoscopy"), seed=11)
    (plain,), (simulated,) = predictor.predict([request]), simulating.predict([request])
    assert plain["modalities"] == ["clinical", "dermoscopy"] and plain["simulated"] == []
    assert simulated["modalities"] == ["clinical", "dermoscopy", "multispectral"]
    assert simulated["simulated"] == ["multispectral"]
    as_sent = {**request, "multispectral_image": request["dermoscopy_image"]}  # simulation = dermoscopy as MS view
    assert simulated["score"] == predictor.predict([as_sent])[0]["score"]


def test_image_limits_come_from_the_options(tiny_checkpoint):
    small = Predictor(tiny_checkpoint, PredictorOptions(max_pixels=50 * 50, max_full_decode_pixels=60 * 60))
    (jpeg, png) = small.predict([{"clinical_image": image_bytes(1, size=80, fmt="JPEG")},
                                 {"clinical_image": image_bytes(1, size=80)}])
    assert jpeg["status"] == 400 and jpeg["field"] == "clinical_image" and "2500" in jpeg["error"]
    assert png["status"] == 400 and png["field"] == "clinical_image" and "3600" in png["error"]


def test_options_reject_unknown_keys_with_the_valid_ones():
    with pytest.raises(ValueError, match="valid keys are: threads, simulate_multispectral"):
        from_dict(PredictorOptions, {"thread": 2}, "handler")


def test_failure_body_is_the_documented_error_object():
    assert Failure(415, "clinical_image", "clinical_image: nope").body() == {
        "error": "clinical_image: nope", "field": "clinical_image", "status": 415}


def test_predictor_imports_neither_torchserve_nor_training():
    code = ("import sys, handler.predictor; "
            "sys.exit(any(m.split('.')[0] in ('ts', 'training') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_answer_equals_training_infer_single_on_the_same_jpeg_files(predictor, tiny_checkpoint, tmp_path):
    # 256 px JPEGs for a 64 px model: the DataConfig's JPEG draft decoding is in play on both paths.
    request = request_for(("clinical", "dermoscopy", "multispectral"), seed=12, fmt="JPEG", size=256)
    offline = infer_single_answer(tiny_checkpoint, request, tmp_path)
    (answer,) = predictor.predict([request])
    assert answer["score"] == round(offline["score"], 4)
    assert answer["severity"] == offline["severity"] and answer["modalities"] == offline["modalities"]
    assert answer["attention"] == {t: round(w, 4) for t, w in offline["attention"].items()}
