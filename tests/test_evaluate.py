"""Evaluation outputs and metrics, and infer_single against a direct model call."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import build_checkpoint, load_for_inference, save_checkpoint
from model.colorimetry import SKIN_TONE_BANDS
from model.config import DataConfig, SeverityConfig
from model.preprocessing import preprocess_path
from tests.conftest import TINY_MODEL_CFG, make_tiny_model
from training import evaluate, infer_single, synth
from training.data import index_dataset, split_by_patient
from training.metrics import bootstrap_intervals, confusion_matrix, quadratic_weighted_kappa, rank_average, spearman

METRIC_KEYS = {"n", "mse", "mae", "rmse", "spearman", "severity_accuracy", "quadratic_kappa", "confusion_matrix"}
SUMMARY_KEYS = {"checkpoint", "model_version", "data", "data_hash", "split", "n_lesions", "skipped",
                "severity_thresholds", "simulate_multispectral", "overall", "baseline_mean", "train_label_mean",
                "baseline_source", "mae_ratio_to_baseline", "subsets", "severity_counts", "by_skin_tone",
                "skin_tone_source", "bootstrap", "trust"}
DATA_CFG = DataConfig(image_size=64)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth"), n=24, seed=6, clinical_size=(96, 72),
                          dermoscopy_size=64)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    """A tiny untrained model with the provenance training writes (split, train-label mean)."""
    lesions = index_dataset(data).lesions
    train_part, val_part = split_by_patient(lesions, 0.25, seed=0)
    provenance = {"model_version": "tiny-eval", "train_label_mean": float(np.mean([x.score for x in train_part])),
                  "split": {"train": [x.lesion_id for x in train_part], "val": [x.lesion_id for x in val_part]}}
    ckpt = build_checkpoint(make_tiny_model(), TINY_MODEL_CFG, DATA_CFG, SeverityConfig(), provenance)
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "best_model.pth")


def test_evaluate_writes_metrics_summary_and_plots_with_the_documented_keys(data, checkpoint, tmp_path):
    summary = evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path)])
    for name in ("metrics.csv", "summary.json", "score_distribution.png", "severity_distribution.png",
                 "pred_vs_true.png", "reliability.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    written = json.loads((tmp_path / "summary.json").read_text())
    assert set(written) == SUMMARY_KEYS and written == json.loads(json.dumps(summary))
    assert set(written["overall"]) == METRIC_KEYS and set(written["baseline_mean"]) == METRIC_KEYS
    assert set(written["subsets"]) == {"clinical_only", "clinical+dermoscopy", "clinical+multispectral", "all"}
    assert written["subsets"]["clinical_only"]["n"] == written["n_lesions"] == 24
    assert written["subsets"]["all"]["n"] == sum(1 for _ in (data / "dermoscopy/images").iterdir())
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert {"lesion_id", "true_score", "pred_score", "true_severity", "pred_severity",
            "modalities_used"} <= set(rows[0])


def test_evaluation_reports_by_skin_tone_with_bootstrap_intervals_around_the_point_estimates(data, checkpoint,
                                                                                              tmp_path):
    summary = evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path)])
    assert summary["skin_tone_source"] == "synth_truth.csv"
    assert list(summary["by_skin_tone"]) == list(SKIN_TONE_BANDS)  # light to dark, empty bands kept as n=0
    assert sum(block["n"] for block in summary["by_skin_tone"].values()) == summary["n_lesions"]
    boot, overall = summary["bootstrap"], summary["overall"]
    assert (boot["n_resamples"], boot["seed"]) == (1000, 0)
    assert boot["mae"][0] <= overall["mae"] <= boot["mae"][1]
    if overall["quadratic_kappa"] is not None:
        assert boot["quadratic_kappa"][0] <= overall["quadratic_kappa"] <= boot["quadratic_kappa"][1]
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_without_synth_truth_the_skin_tone_is_measured_on_the_images(data, checkpoint, tmp_path):
    lesions = index_dataset(data).lesions[:6]
    bands, source = evaluate.skin_tones(lesions, tmp_path / "manifest.csv")  # a folder without synth_truth.csv
    assert source == "measured_ita" and len(bands) == 6
    assert set(bands) <= {*SKIN_TONE_BANDS, evaluate.UNMEASURED}
    truth_bands, _ = evaluate.skin_tones(lesions, data)
    agree = sum(a == b for a, b in zip(bands, truth_bands))
    assert agree >= 3, (bands, truth_bands)  # measured ITA mostly lands in the generator's band


def test_bootstrap_intervals_are_reproducible_and_shrink_with_more_lesions():
    rng = np.random.default_rng(0)
    true = rng.random(400)
    pred = np.clip(true + rng.normal(0, 0.1, 400), 0, 1)
    small = bootstrap_intervals(true[:40], pred[:40], SeverityConfig())
    assert small == bootstrap_intervals(true[:40], pred[:40], SeverityConfig())
    large = bootstrap_intervals(true, pred, SeverityConfig())
    assert np.diff(large["mae"]) < np.diff(small["mae"]) and np.diff(large["quadratic_kappa"]) < np.diff(
        small["quadratic_kappa"])


def test_split_val_scores_exactly_the_checkpoints_validation_lesions(data, checkpoint, tmp_path):
    summary = evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path),
                             "--split", "val"])
    val_ids = load_for_inference(checkpoint).provenance["split"]["val"]
    with (tmp_path / "metrics.csv").open() as f:
        assert [row["lesion_id"] for row in csv.DictReader(f)] == val_ids
    assert summary["n_lesions"] == len(val_ids) and summary["split"] == "val"


def test_rank_average_gives_ties_their_mean_rank():
    np.testing.assert_array_equal(rank_average(np.array([10, 20, 20, 5, 20])), [2, 4, 4, 1, 4])


def test_spearman_matches_known_values():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # with ties: Pearson of ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4]
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(0.9486833)
    assert spearman(np.array([1, 1, 1]), np.array([1, 2, 3])) is None


def test_quadratic_kappa_is_one_for_agreement_and_penalizes_far_errors_more():
    true = np.array([0, 1, 2, 0, 1, 2])
    assert quadratic_weighted_kappa(confusion_matrix(true, true)) == pytest.approx(1.0)
    near = quadratic_weighted_kappa(confusion_matrix(true, np.array([1, 1, 2, 0, 1, 2])))
    far = quadratic_weighted_kappa(confusion_matrix(true, np.array([2, 1, 2, 0, 1, 2])))
    assert 1.0 > near > far
    assert confusion_matrix(np.array([0, 2]), np.array([1, 2])).tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]


def _files(data: Path, lesion_id: str) -> dict[str, Path]:
    return {"clinical": data / "clinical/images" / f"{lesion_id}.jpg",
            "dermoscopy": data / "dermoscopy/images" / f"{lesion_id}.png"}


def _lesion_with_dermoscopy(data: Path) -> str:
    return next(x.lesion_id for x in index_dataset(data).lesions if x.dermoscopy and not x.multispectral)


def test_infer_single_json_equals_a_direct_model_call(data, checkpoint, capsys):
    files = _files(data, _lesion_with_dermoscopy(data))
    answer = infer_single.main(["--checkpoint", str(checkpoint), "--clinical", str(files["clinical"]),
                                "--dermoscopy", str(files["dermoscopy"]), "--json"])
    assert json.loads(capsys.readouterr().out) == answer
    loaded = load_for_inference(checkpoint)
    with torch.no_grad():
        direct = loaded.model(*(preprocess_path(files[m], m, DATA_CFG).unsqueeze(0) for m in files))
    assert answer["score"] == float(direct.score[0])
    assert answer["modalities"] == ["clinical", "dermoscopy"] and answer["simulated"] == []
    assert answer["attention"]["multispectral"] == 0.0 and answer["model_version"] == "tiny-eval"
    assert answer["severity"] in ("Mild", "Moderate", "Severe")


def test_infer_single_prints_the_result_block(data, checkpoint, capsys):
    files = _files(data, _lesion_with_dermoscopy(data))
    infer_single.main(["--checkpoint", str(checkpoint), "--clinical", str(files["clinical"])])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "========== RESULT ==========" and lines[-1] == "============================"
    assert lines[1].startswith("Pigmentation Score  : 0.") and lines[2].startswith("Severity Level     : ")


def test_infer_single_with_simulation_reproduces_the_evaluation_score(data, checkpoint, tmp_path):
    lesion_id = _lesion_with_dermoscopy(data)
    files = _files(data, lesion_id)
    answer = infer_single.predict_files(load_for_inference(checkpoint), files, simulate_multispectral=True)
    evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path)])
    with (tmp_path / "metrics.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["lesion_id"] == lesion_id)
    assert answer["simulated"] == ["multispectral"]
    assert answer["score"] == pytest.approx(float(row["pred_score"]), abs=1e-6)
