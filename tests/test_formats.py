"""Real phone photos in: MPO, WebP, HEIC and AVIF at 12 MP, each written by its own encoder with an EXIF orientation
other than 1, decode upright and score exactly like the same pixels sent as PNG, offline (``infer_single``, the
Predictor) and served (REST and gRPC against the session's shared TorchServe); the pixel limits hold for every
format before a pixel is decoded. What upright means comes from the photo's corner marks (tests/phone_photos.py).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from handler.predictor import Predictor, PredictorOptions
from model.checkpoint import load_for_inference
from model.preprocessing import (
    ImageLimits,
    InputError,
    decode_image,
    preprocess_bytes,
    preprocess_path,
)
from serving.grpc_client import GrpcClient, encode_request
from tests.conftest import TINY_DATA_CFG
from tests.phone_photos import (
    FORMATS,
    HEIGHT,
    WIDTH,
    decoded_upright,
    marks_are_upright,
    phone_photo,
    png,
    upright_pixels,
)
from tests.torchserve_harness import java_available
from training.data import index_dataset
from training.infer_single import predict_files

FORMAT_NAMES = list(FORMATS)


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint)  # eager_fp32: the exact reference


@pytest.fixture(scope="module")
def references(predictor) -> dict[str, dict]:
    """format -> the PNG of its independently decoded upright pixels, and the Predictor's answer for that PNG."""
    out = {}
    for fmt in FORMAT_NAMES:
        data = png(decoded_upright(phone_photo(fmt), TINY_DATA_CFG.image_size))
        out[fmt] = {"png": data, "answer": predictor.predict([{"clinical_image": data}])[0]}
    return out


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_a_phone_photo_is_stored_rotated_and_decodes_upright(fmt):
    photo = phone_photo(fmt)
    if fmt != "HEIF":  # the file really is stored turned (libheif turns a HEIC while decoding it)
        assert not marks_are_upright(np.asarray(Image.open(io.BytesIO(photo.data)).convert("RGB")))
    decoded = decode_image(photo.data, "clinical_image")
    assert decoded.size == (WIDTH, HEIGHT) and decoded.mode == "RGB"
    assert marks_are_upright(np.asarray(decoded))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_the_model_input_equals_that_of_the_same_pixels_sent_as_png(fmt, references):
    photo = phone_photo(fmt)
    for modality in ("clinical", "multispectral"):
        as_sent = preprocess_bytes(photo.data, modality, TINY_DATA_CFG)
        as_png = preprocess_bytes(references[fmt]["png"], modality, TINY_DATA_CFG)
        assert torch.equal(as_sent, as_png), modality


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_the_predictor_scores_a_phone_photo_like_its_pixels_as_png(fmt, predictor, references):
    (answer,) = predictor.predict([{"clinical_image": phone_photo(fmt).data}])
    assert answer == references[fmt]["answer"]
    # and like the original upright picture before the lossy encoder: the format costs the score nothing visible
    (original,) = predictor.predict([{"clinical_image": png(upright_pixels())}])
    assert abs(answer["score"] - original["score"]) <= 0.01


def test_the_shipped_backend_scores_every_format_within_its_tolerance(tiny_checkpoint, references):
    shipped = Predictor(tiny_checkpoint, PredictorOptions(backend="openvino_bf16"))
    for fmt in FORMAT_NAMES:
        (answer,) = shipped.predict([{"clinical_image": phone_photo(fmt).data}])
        assert abs(answer["score"] - references[fmt]["answer"]["score"]) <= 0.01, fmt
        assert answer["severity"] == references[fmt]["answer"]["severity"], fmt


def test_infer_single_scores_phone_photos_named_jpg_like_their_pixels_as_png(tiny_checkpoint, references, tmp_path):
    loaded = load_for_inference(tiny_checkpoint)
    for fmt in FORMAT_NAMES:
        photo = tmp_path / f"forearm_{fmt.lower()}.jpg"  # as a phone or a browser names them, whatever the format
        photo.write_bytes(phone_photo(fmt).data)
        as_png = tmp_path / f"forearm_{fmt.lower()}.png"
        as_png.write_bytes(references[fmt]["png"])
        assert predict_files(loaded, {"clinical": photo, "dermoscopy": photo}) == \
            predict_files(loaded, {"clinical": as_png, "dermoscopy": as_png}), fmt


@pytest.mark.parametrize("fmt", ["WEBP", "HEIF", "AVIF"])
def test_formats_decoded_at_full_size_have_the_lower_pixel_limit_and_it_is_checked_before_decoding(fmt, monkeypatch):
    photo = phone_photo(fmt)
    limits = ImageLimits(max_pixels=64_000_000, max_full_decode_pixels=WIDTH * HEIGHT - 1)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded before the limit was checked")

    monkeypatch.setattr(type(Image.open(io.BytesIO(photo.data))), "load", no_decoding)
    with pytest.raises(InputError) as refused:
        decode_image(photo.data, "clinical_image", limits)
    assert refused.value.field == "clinical_image" and refused.value.status == 400
    assert f"{WIDTH * HEIGHT} pixels" in str(refused.value) and "full size" in str(refused.value)


def test_a_jpeg_or_mpo_keeps_the_higher_limit_and_is_still_refused_beyond_it(monkeypatch):
    photo = phone_photo("MPO")
    lower = ImageLimits(max_pixels=64_000_000, max_full_decode_pixels=WIDTH * HEIGHT - 1)
    assert decode_image(photo.data, "clinical_image", lower, draft_size=64).size == (504, 378)  # 1/8 DCT scale
    monkeypatch.setattr(type(Image.open(io.BytesIO(photo.data))), "load", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(InputError, match="over the limit of"):
        decode_image(photo.data, "clinical_image", ImageLimits(max_pixels=WIDTH * HEIGHT - 1))


# ---- served: REST and gRPC against the session's shared TorchServe (eager_fp32, tests/conftest.py) ----

served_only = pytest.mark.skipif(not java_available(), reason="TorchServe needs Java 17 (scripts/ensure_java.sh)")


def _same(served: dict, expected: dict) -> None:
    """Equal up to the documented rounding (4 decimals) and float noise across batch compositions."""
    assert abs(served["score"] - expected["score"]) <= 1e-4
    assert all(abs(served["attention"][t] - w) <= 1e-4 for t, w in expected["attention"].items())
    assert {k: v for k, v in served.items() if k not in ("score", "attention")} == \
        {k: v for k, v in expected.items() if k not in ("score", "attention")}


@served_only
def test_rest_and_grpc_score_every_phone_format_like_its_pixels_as_png(served, references):
    for fmt in FORMAT_NAMES:
        data = phone_photo(fmt).data
        rest = requests.post(f"{served.inference_url}/predictions/pigment", headers=served.auth(), timeout=120,
                             files={"clinical_image": (f"forearm.{fmt.lower()}", data)})
        assert rest.status_code == 200, (fmt, rest.text)
        _same(rest.json(), references[fmt]["answer"])
        with GrpcClient(f"127.0.0.1:{served.ports.grpc_inference}") as client:
            status, answer, error = client.predict(encode_request("pigment", {"clinical_image": data}),
                                                   served.key("inference"), 120)
        assert (status, error) == (200, ""), fmt
        _same(json.loads(answer), references[fmt]["answer"])


def test_a_dataset_folder_of_phone_formats_is_indexed_and_decoded(tmp_path):
    for folder in ("clinical", "dermoscopy"):
        (tmp_path / folder / "images").mkdir(parents=True)
    small = {fmt: Image.fromarray(decoded_upright(phone_photo(fmt), 64)).resize((96, 72)) for fmt in ("HEIF", "WEBP")}
    small["HEIF"].save(tmp_path / "clinical/images/a.HEIC", format="HEIF")
    small["WEBP"].save(tmp_path / "dermoscopy/images/a.webp", format="WEBP")
    (tmp_path / "labels.csv").write_text("lesion_id,score\na,0.5\n")
    (lesion,) = index_dataset(tmp_path).lesions
    assert (lesion.clinical.name, lesion.dermoscopy.name) == ("a.HEIC", "a.webp")
    assert preprocess_path(lesion.clinical, "clinical", TINY_DATA_CFG).shape == (3, 64, 64)
