"""Score -> severity label: the one place the bands are defined (their thresholds travel in the checkpoint)."""

from __future__ import annotations

from model.config import SeverityConfig

LABELS: tuple[str, ...] = ("Mild", "Moderate", "Severe")


def severity_index(score: float, cfg: SeverityConfig = SeverityConfig()) -> int:
    """0, 1 or 2 for Mild [0, mild_max], Moderate (mild_max, moderate_max], Severe (moderate_max, 1]."""
    if score <= cfg.mild_max:
        return 0
    if score <= cfg.moderate_max:
        return 1
    return 2


def severity_label(score: float, cfg: SeverityConfig = SeverityConfig()) -> str:
    """The severity name of ``score`` (a boundary value belongs to the milder band, as designed)."""
    return LABELS[severity_index(score, cfg)]
