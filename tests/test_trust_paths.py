"""The trust fields on every path: training.calibrate, the predictor (incl. reject_out_of_distribution), an old
checkpoint, infer_single, evaluate's metrics.csv and KServe v2 tensors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.kserve_v2 import answer_from_tensors, answer_tensors
from handler.predictor import Predictor, PredictorOptions
from model.checkpoint import load_checkpoint
from model.config import MODALITIES
from model.trust import MIN_SUBSET_LESIONS, NULL_FIELDS, conformal_quantile
from tests.answers import assert_close_answer
from tests.images import infer_single_answer, request_for

ROOT = Path(__file__).resolve().parents[1]
TRUST_KEYS = set(NULL_FIELDS) | {"quality_warnings"}


def lesion_request(data: Path, lesion_id: str) -> dict[str, bytes]:
    """The synthetic lesion's own files as a request (clinical, and dermoscopy when it has one)."""
    request = {"clinical_image": (data / "clinical" / "images" / f"{lesion_id}.jpg").read_bytes()}
    dermoscopy = data / "dermoscopy" / "images" / f"{lesion_id}.png"
    if dermoscopy.is_file():
        request["dermoscopy_image"] = dermoscopy.read_bytes()
    return request


def labels(data: Path) -> dict[str, float]:
    with (data / "labels.csv").open() as f:
        return {row["lesion_id"]: float(row["score"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint)


def test_calibrated_checkpoint_is_weights_only_and_its_provenance_names_pooled_subsets(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    summary = checkpoint["provenance"]["calibration"]
    counts = summary["lesions_per_subset"]
    assert summary["pooled_fallback"] == sorted(k for k, n in counts.items() if n < MIN_SUBSET_LESIONS)
    assert summary["pooled_fallback"], "60 lesions, half for calibration: some subset must fall back"
    residuals = checkpoint["trust"]["calibration"]["residuals"]
    assert {k: len(v) for k, v in residuals.items()} == counts


def test_each_stored_prediction_plus_its_residual_is_a_calibration_lesions_label(tiny_checkpoint, trust_data):
    calibration = torch.load(tiny_checkpoint, weights_only=True)["trust"]["calibration"]
    truth = np.array(sorted(labels(trust_data).values()))
    for subset, residuals in calibration["residuals"].items():
        predicted = np.asarray(calibration["predictions"][subset])
        assert len(predicted) == len(residuals) and ((predicted >= 0) & (predicted <= 1)).all()
        implied = predicted + np.asarray(residuals)
        assert np.abs(implied[:, None] - truth[None, :]).min(axis=1).max() < 1e-6, subset


def test_interval_half_width_is_the_conformal_quantile_of_the_calibration_residuals(predictor, tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    residuals = checkpoint["trust"]["calibration"]["residuals"]
    pooled = np.abs(np.concatenate([np.asarray(v) for v in residuals.values()]))
    (answer,) = predictor.predict([request_for(("clinical",), seed=3)])
    own = residuals.get("clinical", [])
    q = conformal_quantile(np.abs(np.asarray(own)), 0.9) if len(own) >= MIN_SUBSET_LESIONS \
        else conformal_quantile(pooled, 0.9)
    assert answer["interval"]["low"] == pytest.approx(max(0.0, answer["score"] - q), abs=1e-4)
    assert answer["interval"]["high"] == pytest.approx(min(1.0, answer["score"] + q), abs=1e-4)
    assert sum(answer["severity_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_noise_images_are_flagged_out_of_distribution_and_training_like_lesions_are_not(predictor, trust_data):
    lesion_ids = sorted(labels(trust_data))[:10]
    lesions = predictor.predict([lesion_request(trust_data, i) for i in lesion_ids])
    noise = predictor.predict([request_for(("clinical", "dermoscopy"), seed=s) for s in range(5)])
    assert sum(a["in_distribution"] for a in lesions) >= 8
    assert not any(a["in_distribution"] for a in noise)
    assert min(a["ood_score"] for a in noise) > max(a["ood_score"] for a in lesions)


def test_reject_out_of_distribution_is_a_422_naming_the_field_and_the_rest_of_the_batch_is_answered(
        tiny_checkpoint, trust_data):
    rejecting = Predictor(tiny_checkpoint, PredictorOptions(reject_out_of_distribution=True))
    lesion_id = next(i for i in sorted(labels(trust_data))
                     if rejecting.predict([lesion_request(trust_data, i)])[0].get("in_distribution"))
    good = lesion_request(trust_data, lesion_id)
    odd = dict(good, dermoscopy_image=request_for(("clinical",), seed=7)["clinical_image"])  # noise as dermoscopy
    answers = rejecting.predict([good, odd, good])
    assert answers[1]["status"] == 422 and answers[1]["field"] == "dermoscopy_image"
    assert "dermoscopy_image" in answers[1]["error"] and "reject_out_of_distribution" in answers[1]["error"]
    assert answers[0]["in_distribution"] is True and answers[0] == answers[2]


def test_an_old_checkpoint_still_serves_with_null_trust_fields(uncalibrated_checkpoint, caplog):
    with caplog.at_level("WARNING"):
        old = Predictor(uncalibrated_checkpoint)
    (answer,) = old.predict([request_for(("clinical", "dermoscopy"), seed=2)])
    assert {k: answer[k] for k in NULL_FIELDS} == NULL_FIELDS
    assert isinstance(answer["quality_warnings"], list)
    assert "training.calibrate" in caplog.text


def test_infer_single_json_carries_the_same_trust_fields_as_the_predictor(predictor, tiny_checkpoint, tmp_path):
    request = request_for(("clinical", "dermoscopy", "multispectral"), seed=4)
    offline = infer_single_answer(tiny_checkpoint, request, tmp_path)
    (served,) = predictor.predict([request])
    assert TRUST_KEYS <= set(offline)
    assert_close_answer(served, {**offline, "score": round(offline["score"], 4)}, tol=1e-4)


def test_v2_tensors_carry_the_trust_fields_and_nulls_as_empty_tensors(predictor, uncalibrated_checkpoint):
    (answer,) = predictor.predict([request_for(("clinical", "dermoscopy"), seed=5)])
    tensors = {t["name"]: t for t in answer_tensors(answer)}
    assert tensors["interval"]["shape"] == [2] and tensors["in_distribution"]["datatype"] == "BOOL"
    assert_close_answer(answer_from_tensors(list(tensors.values())), answer)
    (null_answer,) = Predictor(uncalibrated_checkpoint).predict([request_for(("clinical",), seed=5)])
    null_tensors = {t["name"]: t for t in answer_tensors(null_answer)}
    assert null_tensors["interval"]["shape"] == [0] and null_tensors["ood_score"]["shape"] == [0]
    assert answer_from_tensors(list(null_tensors.values())) == null_answer


def test_explanations_carry_the_trust_fields(predictor):
    request = request_for(("clinical", "dermoscopy"), seed=6)
    (explained,) = predictor.explain([request])
    (predicted,) = predictor.predict([request])
    assert_close_answer({k: explained[k] for k in predicted}, predicted)


def test_evaluate_writes_trust_columns_and_a_coverage_summary(tiny_checkpoint, trust_data, tmp_path):
    from training import evaluate

    summary = evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", str(trust_data),
                             "--out", str(tmp_path)])
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    truth = labels(trust_data)
    low = np.array([float(r["interval_low"]) for r in rows])
    high = np.array([float(r["interval_high"]) for r in rows])
    true = np.array([truth[r["lesion_id"]] for r in rows])
    trust = summary["trust"]
    assert trust["overall"]["coverage"] == pytest.approx(((true >= low) & (true <= high)).mean())
    assert trust["overall"]["mean_width"] == pytest.approx((high - low).mean(), abs=1e-5)
    flagged = np.mean([r["in_distribution"] == "False" for r in rows])
    assert trust["overall"]["ood_flagged"] == pytest.approx(flagged)
    assert json.loads((tmp_path / "summary.json").read_text())["trust"]["overall"]["n"] == len(rows)
    # Brier of the band probabilities, recomputed from the answers by hand (sklearn's brier is binary-only)
    assert 0.0 <= trust["overall"]["brier"] <= 2.0


def test_calibrate_cli_user_error_is_one_line_and_exit_2(tiny_checkpoint, tmp_path):
    result = subprocess.run([sys.executable, "-m", "training.calibrate", "--checkpoint", str(tiny_checkpoint),
                             "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out.pth")],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_recalibrating_at_a_lower_coverage_narrows_the_interval(uncalibrated_checkpoint, trust_data, tmp_path):
    from training import calibrate

    widths = {}
    for coverage in (0.5, 0.9):
        out = calibrate.main(["--checkpoint", str(uncalibrated_checkpoint), "--data", str(trust_data),
                              "--coverage", str(coverage), "--out", str(tmp_path / f"c{coverage}.pth")])
        (answer,) = Predictor(out).predict([request_for(("clinical",), seed=8)])
        widths[coverage] = answer["interval"]["high"] - answer["interval"]["low"]
        assert answer["interval"]["coverage"] == coverage
    assert widths[0.5] < widths[0.9]


def test_every_modality_has_a_fitted_feature_distribution(tiny_checkpoint):
    ood = torch.load(tiny_checkpoint, weights_only=True)["trust"]["ood"]
    assert set(ood["modalities"]) == set(MODALITIES)


def test_calibrating_an_uncalibrated_checkpoint_does_not_warn_that_it_lacks_calibration(uncalibrated_checkpoint,
                                                                                         trust_data, caplog):
    from training.calibrate import calibrate_checkpoint

    with caplog.at_level("WARNING", logger="model.trust"):
        calibrated = calibrate_checkpoint(load_checkpoint(uncalibrated_checkpoint), trust_data)
    assert "calibration" in calibrated["trust"] and "has no calibration" not in caplog.text


def rendered_request(pixels: np.ndarray) -> dict[str, bytes]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return {"clinical_image": buffer.getvalue()}


def test_flat_colour_and_bare_skin_photos_are_flagged_by_their_view_statistics(predictor, tiny_checkpoint,
                                                                               trust_data):
    """Colour constancy (and any encoder) can make a flat field or bare skin look like the skin around a lesion;
    the view statistics (colour, spread, lesion contrast) still tell them apart."""
    summary = torch.load(tiny_checkpoint, weights_only=True)["provenance"]["calibration"]
    assert summary["ood_views_fitted"] == sorted(m for m in MODALITIES if (trust_data / m).is_dir())
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:96] / np.array([72, 96])[:, None, None]
    skin = np.array([224, 185, 160]) * (0.9 + 0.2 * xx[..., None]) + rng.normal(0, 4, (72, 96, 3))
    odd = [rendered_request(np.full((72, 96, 3), c, dtype=float)) for c in [(30, 90, 200), (128, 128, 128)]]
    odd.append(rendered_request(skin))
    answers = predictor.predict(odd)
    assert not any(a["in_distribution"] for a in answers), [a["ood_score"] for a in answers]
    lesions = predictor.predict([lesion_request(trust_data, i) for i in sorted(labels(trust_data))[:10]])
    assert sum(a["in_distribution"] for a in lesions) >= 8
