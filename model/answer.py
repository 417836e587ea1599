"""The answer for one lesion: the one definition of what offline inference and the server return."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from model.config import SeverityConfig
from model.fusion_model import ATTENTION_TOKENS
from model.severity import severity_label
from model.trust import NULL_FIELDS

SCORE_DECIMALS = 4
"""Scores and attention weights are rounded to 4 decimals in served and batch answers; severity is decided on the
exact score."""


def format_answer(score: float, attention: Sequence[float], modalities: Sequence[str], simulated: Sequence[str],
                  severity: SeverityConfig, model_version: str, decimals: int | None = None,
                  trust: Mapping[str, Any] | None = None,
                  quality_warnings: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """``{score, severity, interval, severity_probabilities, in_distribution, ood_score, ood_threshold,
    quality_warnings, modalities, simulated, attention: {token: weight}, model_version}``.

    ``attention`` holds one weight per ``ATTENTION_TOKENS`` entry. With ``decimals`` the score and weights are
    rounded (serving); the severity is always decided on the unrounded score. ``trust`` is one entry of
    ``model.trust.Trust.assess`` (None: the checkpoint has no calibration, the fields are null);
    ``quality_warnings`` comes from ``model.scoring.quality_warnings`` (``model.quality``'s checks).
    """

    def rounded(value: float) -> float:
        return float(value) if decimals is None else round(float(value), decimals)

    return {
        "score": rounded(score),
        "severity": severity_label(float(score), severity),
        **{key: (trust or NULL_FIELDS)[key] for key in NULL_FIELDS},
        "quality_warnings": [dict(w) for w in quality_warnings],
        "modalities": list(modalities),
        "simulated": list(simulated),
        "attention": {token: rounded(w) for token, w in zip(ATTENTION_TOKENS, attention, strict=True)},
        "model_version": model_version,
    }
