"""Regression and severity-agreement metrics in plain numpy (no scipy), for ``training.evaluate``.

Every function takes 1-D arrays of equal length and returns builtins, so the results go straight into JSON.
Undefined values (Spearman of a constant, kappa when both raters always say the same class) are ``None``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.config import SeverityConfig
from model.severity import LABELS, severity_index


def rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties getting the average of the ranks they span (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Boundaries of runs of equal values; each run gets the mean of its positions (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation: Pearson correlation of the average ranks. None if either side is constant."""
    if len(a) < 2:
        return None
    ra, rb = rank_average(a), rank_average(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else None


def confusion_matrix(true: np.ndarray, pred: np.ndarray, classes: int = len(LABELS)) -> np.ndarray:
    """``[classes, classes]`` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, int), np.asarray(pred, int)), 1)
    return matrix


def quadratic_weighted_kappa(matrix: np.ndarray) -> float | None:
    """Cohen's kappa with quadratic weights from a confusion matrix; None when chance agreement is total."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.sum()
    if n == 0:
        return None
    k = matrix.shape[0]
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    expected = np.outer(matrix.sum(1), matrix.sum(0)) / n
    denom = (weights * expected).sum()
    return float(1.0 - (weights * matrix).sum() / denom) if denom > 0 else None


def score_metrics(true: np.ndarray, pred: np.ndarray, severity: SeverityConfig) -> dict[str, Any]:
    """All of evaluation's numbers for one set of predictions (see ``training.evaluate`` for the keys)."""
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    if len(true) == 0:
        return {"n": 0}
    err = pred - true
    mse = float((err**2).mean())
    true_cls = np.array([severity_index(s, severity) for s in true])
    pred_cls = np.array([severity_index(s, severity) for s in pred])
    matrix = confusion_matrix(true_cls, pred_cls)
    return {
        "n": int(len(true)),
        "mse": mse,
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt(mse)),
        "spearman": spearman(true, pred),
        "severity_accuracy": float((true_cls == pred_cls).mean()),
        "quadratic_kappa": quadratic_weighted_kappa(matrix),
        "confusion_matrix": matrix.tolist(),
    }


def bootstrap_intervals(true: np.ndarray, pred: np.ndarray, severity: SeverityConfig, n_resamples: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap intervals of MAE and quadratic kappa, resampling lesions with replacement.

    All resamples at once: an index matrix ``[R, N]``, per-resample MAE as a row mean and per-resample 3x3
    confusion matrices from one ``bincount``, with no Python loop over resamples. Resamples where kappa is undefined
    are left out of its interval; an interval is None when no resample defines it.

    Returns:
        ``{"mae": [lo, hi], "quadratic_kappa": [lo, hi] | None, "n_resamples": R, "seed": seed}``.
    """
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    n, k = len(true), len(LABELS)
    if n == 0:
        return {"mae": None, "quadratic_kappa": None, "n_resamples": n_resamples, "seed": seed}
    rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))  # [R, N] lesion indices
    mae = np.abs(pred - true)[rows].mean(axis=1)  # [R]
    true_cls = np.array([severity_index(s, severity) for s in true])
    pred_cls = np.array([severity_index(s, severity) for s in pred])
    cells = (true_cls * k + pred_cls)[rows] + (k * k) * np.arange(n_resamples)[:, None]  # [R, N] global cell id
    matrices = np.bincount(cells.ravel(), minlength=n_resamples * k * k).reshape(n_resamples, k, k).astype(float)
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2  # [k, k], as quadratic_weighted_kappa
    expected = matrices.sum(2)[:, :, None] * matrices.sum(1)[:, None, :] / n  # [R, k, k]
    denom = (weights * expected).sum(axis=(1, 2))
    kappa = np.where(denom > 0, 1.0 - (weights * matrices).sum(axis=(1, 2)) / np.where(denom > 0, denom, 1.0), np.nan)
    return {"mae": _interval(mae, level), "quadratic_kappa": _interval(kappa, level), "n_resamples": n_resamples,
            "seed": seed}


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = (1.0 - level) / 2 * 100
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]
