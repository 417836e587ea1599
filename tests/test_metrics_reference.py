"""Evaluation's numbers against independent references: scikit-learn and scipy (test-only dependencies,
requirements-dev.txt) for MAE, RMSE, Spearman, quadratic kappa, severity accuracy and the confusion matrix, and the
severity bands written out here from the documented rule: Mild [0, 0.25], Moderate (0.25, 0.60], Severe (0.60, 1],
so a score exactly on an edge belongs to the milder band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats as scipy_stats  # test-only dependencies: requirements-dev.txt (make test installs it)
import sklearn.metrics as sklearn_metrics

from model.checkpoint import build_checkpoint, load_for_inference, save_checkpoint
from model.config import SeverityConfig
from model.severity import LABELS, severity_index, severity_label
from tests.conftest import TINY_DATA_CFG, TINY_MODEL_CFG, make_tiny_model
from training import evaluate
from training.data import Lesion
from training.metrics import score_metrics

MILD_MAX, MODERATE_MAX = 0.25, 0.60  # the design's thresholds, typed here rather than read from SeverityConfig


def reference_band(scores: np.ndarray, mild_max: float = MILD_MAX, moderate_max: float = MODERATE_MAX) -> np.ndarray:
    """0/1/2 by the design's rule; ``side="left"`` puts a score equal to an edge below it."""
    return np.searchsorted([mild_max, moderate_max], np.asarray(scores, np.float64), side="left")


def reference_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    true_cls, pred_cls = reference_band(true), reference_band(pred)
    return {
        "n": len(true),
        "mse": sklearn_metrics.mean_squared_error(true, pred),
        "mae": sklearn_metrics.mean_absolute_error(true, pred),
        "rmse": np.sqrt(sklearn_metrics.mean_squared_error(true, pred)),
        "spearman": scipy_stats.spearmanr(true, pred).statistic,
        "severity_accuracy": sklearn_metrics.accuracy_score(true_cls, pred_cls),
        "quadratic_kappa": sklearn_metrics.cohen_kappa_score(true_cls, pred_cls, weights="quadratic", labels=[0, 1, 2]),
        "confusion_matrix": sklearn_metrics.confusion_matrix(true_cls, pred_cls, labels=[0, 1, 2]).tolist(),
    }


def cohort(n: int, seed: int, noise: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """Labels over [0, 1] with ties and exact band edges, and noisy predictions that cross bands both ways."""
    rng = np.random.default_rng(seed)
    true = np.round(rng.random(n), 2)  # two decimals: ties, and 0.25 / 0.60 occur
    true[:4] = [MILD_MAX, MODERATE_MAX, 0.0, 1.0]
    pred = np.clip(true + rng.normal(0, noise, n), 0, 1)
    pred[4:8] = [MILD_MAX, MODERATE_MAX, np.nextafter(MILD_MAX, 1), np.nextafter(MODERATE_MAX, 1)]
    return true, pred


@pytest.mark.parametrize("seed, n, noise", [(0, 200, 0.12), (1, 57, 0.3), (2, 500, 0.05)])
def test_score_metrics_equal_scikit_learn_and_scipy(seed, n, noise):
    true, pred = cohort(n, seed, noise)
    got, want = score_metrics(true, pred, SeverityConfig()), reference_metrics(true, pred)
    assert got["n"] == want["n"] and got["confusion_matrix"] == want["confusion_matrix"]
    for key in ("mse", "mae", "rmse", "spearman", "severity_accuracy", "quadratic_kappa"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_kappa_counts_each_band_of_disagreement_by_its_square():
    # Hand-checkable: true Mild, Moderate, Severe twice each; one prediction one band off, one two bands off.
    true = np.array([0.1, 0.1, 0.4, 0.4, 0.8, 0.8])
    pred = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.1])
    got = score_metrics(true, pred, SeverityConfig())["quadratic_kappa"]
    # observed weighted disagreement (1/4 + 4/4) / 6; expected from the margins [2,2,2] x [2,3,1]
    rows, cols = np.array([2, 2, 2]), np.array([2, 3, 1])
    weights = (np.subtract.outer(np.arange(3), np.arange(3)) ** 2) / 4
    expected = (weights * np.outer(rows, cols) / 6).sum() / 6
    assert got == pytest.approx(1 - (1.25 / 6) / expected)
    assert got == pytest.approx(sklearn_metrics.cohen_kappa_score([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0],
                                                                  weights="quadratic"))


@pytest.mark.parametrize("score, band", [
    (0.0, "Mild"), (0.2499, "Mild"), (0.25, "Mild"), (np.nextafter(0.25, 1), "Moderate"), (0.2501, "Moderate"),
    (0.5999, "Moderate"), (0.6, "Moderate"), (np.nextafter(0.6, 1), "Severe"), (0.6001, "Severe"), (1.0, "Severe"),
])
def test_a_score_on_a_band_edge_belongs_to_the_milder_band(score, band):
    assert severity_label(float(score)) == band
    assert LABELS[severity_index(float(score))] == band
    assert LABELS[int(reference_band([score])[0])] == band  # the test's own rule agrees with the table


def test_the_band_edges_follow_the_thresholds_a_checkpoint_carries():
    bands = SeverityConfig(mild_max=0.3, moderate_max=0.7)
    assert [severity_label(s, bands) for s in (0.3, 0.3001, 0.7, 0.7001)] == ["Mild", "Moderate", "Moderate",
                                                                               "Severe"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    provenance = {"model_version": "metrics-ref", "train_label_mean": 0.42}
    ckpt = build_checkpoint(make_tiny_model(), TINY_MODEL_CFG, TINY_DATA_CFG, SeverityConfig(), provenance)
    return load_for_inference(save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "m.pth"))


def test_evaluation_summary_values_equal_the_references_including_the_mean_predictor_ratio(loaded):
    true, pred = cohort(120, seed=3)
    has_derm = np.arange(120) % 2 == 0
    lesions = [Lesion(f"l{i}", Path(f"l{i}.png"), float(s), f"p{i}") for i, s in enumerate(true)]
    predictions = {"available": pred, "clinical_only": pred + 0.01,
                   "clinical+dermoscopy": np.where(has_derm, pred - 0.02, np.nan),
                   "clinical+multispectral": np.full(120, np.nan), "all": np.full(120, np.nan)}
    summary = evaluate.summarize(loaded, lesions, predictions)
    want = reference_metrics(true, pred)
    for key in ("mae", "rmse", "spearman", "severity_accuracy", "quadratic_kappa"):
        assert summary["overall"][key] == pytest.approx(want[key], rel=1e-9), key
    assert summary["baseline_mean"]["mae"] == pytest.approx(np.mean(np.abs(true - 0.42)))
    baseline_accuracy = sklearn_metrics.accuracy_score(reference_band(true), reference_band(np.full(120, 0.42)))
    assert summary["baseline_mean"]["severity_accuracy"] == pytest.approx(baseline_accuracy)
    assert summary["mae_ratio_to_baseline"] == pytest.approx(want["mae"] / np.mean(np.abs(true - 0.42)))
    derm = summary["subsets"]["clinical+dermoscopy"]
    assert derm["n"] == has_derm.sum()
    assert derm["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(true[has_derm], pred[has_derm] - 0.02))
    assert derm["clinical_only_mae"] == pytest.approx(np.mean(np.abs(pred[has_derm] + 0.01 - true[has_derm])))
    counts = np.bincount(reference_band(pred), minlength=3)
    assert summary["severity_counts"]["pred"] == dict(zip(LABELS, counts.tolist()))
