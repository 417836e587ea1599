"""How far to trust a score: a conformal interval, severity-band probabilities and an out-of-distribution flag.

Everything here is fitted once, at the end of training (``training.train``) or later on other labelled data
(``training.calibrate``), and travels in the checkpoint under ``"trust"`` as plain lists and tensors, so the
checkpoint stays ``weights_only``-loadable. Serving only reads it.

**Interval** (split conformal, per modality subset). The calibration lesions are scored with every modality subset
they have (inputs masked, as ``training.evaluate`` does), and the signed residuals ``r = true - predicted`` are kept
per subset (``"clinical"``, ``"clinical+dermoscopy"``, ...). For a new score ``s`` scored with subset ``k``, the
interval is ``[s - q, s + q]`` clipped to [0, 1], where ``q`` is the ``ceil((n + 1) * coverage)``-th smallest
``|r|`` of subset ``k`` (n residuals). If the calibration lesions and the new lesion are exchangeable, the interval
holds the true score with probability at least ``coverage`` (marginally, over lesions; not for every lesion). A
subset with fewer than ``MIN_SUBSET_LESIONS`` residuals uses the residuals of all subsets pooled, and the answer's
``interval.calibrated_on`` says ``"pooled"``.

**Per predicted band** (Mondrian conformal): the error is not the same everywhere on the scale (near 0 the scores
cannot be far off; mid-scale lesions are), so when the calibration also stored each residual's predicted score,
the residuals are narrowed to the calibration lesions whose *predicted* band is the new score's band, if there are
at least ``MIN_SUBSET_LESIONS`` of them (``calibrated_on``: ``"clinical+dermoscopy, predicted Moderate"``). The
band is a function of the prediction alone, so the guarantee holds within each band. Checkpoints calibrated
before the predictions were stored keep the subset-wide residuals.

**Band probabilities**: the same residuals read as a predictive distribution. The true score of a lesion scored
``s`` is taken to be ``clip(s + r_i, 0, 1)`` with equal weight for each calibration residual ``r_i`` of its subset;
a band's probability is the fraction of those values that fall in it (a boundary value belongs to the milder band,
as in ``model.severity``). This is the empirical distribution the conformal interval is a quantile of, so interval
and probabilities never disagree about the spread; it assumes the error does not depend on the score within the
residuals used (the predicted band's, below, where there are enough).

**Out of distribution**: each view is compared with the training lesions' views of its modality on three
channels (``CHANNELS``):

* its encoder's pooled feature (``FusionOutput.features``): a Mahalanobis distance with a Ledoit-Wolf shrunk
  covariance, divided by ``sqrt(D)`` so that a typical training lesion is near 1 whatever the feature width;
* its colour statistics (``model.quality.APPEARANCE``: the illuminant estimate and the CIELAB spreads the image
  had before colour constancy divided them out): the same distance over those six numbers;
* its lesion's contrast with the skin around it: how many training stds fainter it is on the log scale (0 when it
  is as dark or darker; a view in which no lesion is found counts as ``NO_LESION_CONTRAST``).

Each channel is divided by its scale, the ``OOD_QUANTILE`` quantile of that channel over the calibration views of
that modality, and a view's distance is the largest of its channels; a request's ``ood_score`` is the largest over
the modalities it sent. It is out of distribution above the threshold of its subset, the ``OOD_QUANTILE`` quantile
of the calibration lesions' scores for that subset (when fewer than ``MIN_SUBSET_LESIONS`` have the whole subset,
every lesion counts with the subset's modalities it has: :func:`thresholds_from`); calibration lesions with a view
in which no lesion was found do not count (:func:`fit_detector`). A simulated view has no statistics of its own
and is compared on its feature alone; a detector fitted before the view statistics existed compares features
alone, unscaled, as it always did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.colorimetry import MIN_RELATIVE_CONTRAST
from model.config import MODALITIES, SeverityConfig
from model.quality import APPEARANCE
from model.severity import LABELS

log = logging.getLogger(__name__)

TRUST_FORMAT = 1
DEFAULT_COVERAGE = 0.9
MIN_SUBSET_LESIONS = 30
"""Fewer calibration residuals than this in a subset: its interval and probabilities use the pooled residuals."""
OOD_QUANTILE = 0.99
POOLED = "pooled"
NULL_FIELDS: dict[str, Any] = {"interval": None, "severity_probabilities": None, "in_distribution": None,
                               "ood_score": None, "ood_threshold": None}
"""The trust fields of an answer when the checkpoint carries no calibration (trained before it existed)."""


def subset_name(modalities: Sequence[str]) -> str:
    """``["dermoscopy", "clinical"] -> "clinical+dermoscopy"``: modalities in ``MODALITIES`` order."""
    return "+".join(m for m in MODALITIES if m in modalities)


def all_subsets() -> list[str]:
    """Every subset a request can have: clinical plus any of the auxiliary modalities."""
    aux = MODALITIES[1:]
    return [subset_name(["clinical", *(m for j, m in enumerate(aux) if bits >> j & 1)]) for bits in range(4)]


# ---------------------------------------------------------------------------------------------------- interval


def conformal_quantile(abs_residuals: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest value (split conformal); ``inf`` when n is too small for it."""
    n = len(abs_residuals)
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        return math.inf
    return float(np.sort(abs_residuals)[rank - 1])


def band_index(scores: np.ndarray | float, severity: SeverityConfig) -> np.ndarray:
    """Index into ``LABELS`` of each score's band (a boundary value belongs to the milder band, as in
    ``model.severity``)."""
    return np.searchsorted([severity.mild_max, severity.moderate_max], scores, side="left")


def band_probabilities(score: float, residuals: np.ndarray, severity: SeverityConfig) -> dict[str, float]:
    """``{Mild, Moderate, Severe}``: the fraction of ``clip(score + r, 0, 1)`` in each band (see module doc)."""
    bands = band_index(np.clip(score + residuals, 0.0, 1.0), severity)
    counts = np.bincount(bands, minlength=len(LABELS))
    return {label: float(c) / len(residuals) for label, c in zip(LABELS, counts, strict=True)}


@dataclass(frozen=True)
class Calibration:
    """Signed residuals (true - predicted) per subset, optionally the predicted scores they belong to, and the
    coverage their intervals promise."""

    coverage: float
    residuals: dict[str, np.ndarray]
    min_lesions: int = MIN_SUBSET_LESIONS
    predictions: dict[str, np.ndarray] | None = None
    """Per subset, the predicted score of each residual (same order); None in checkpoints calibrated before."""

    @property
    def pooled(self) -> np.ndarray:
        return np.concatenate([r for r in self.residuals.values()]) if self.residuals else np.zeros(0)

    def residuals_for(self, subset: str, score: float | None = None,
                      severity: SeverityConfig | None = None) -> tuple[np.ndarray, str]:
        """The residuals an answer for ``subset`` (and, given ``score`` and ``severity``, that score's predicted
        band) uses, and their name: ``"clinical, predicted Mild"``, the subset, or ``"pooled"``."""
        own = self.residuals.get(subset)
        if own is None or len(own) < self.min_lesions:
            return self.pooled, POOLED
        predicted = (self.predictions or {}).get(subset)
        if score is None or severity is None or predicted is None:
            return own, subset
        band = int(band_index(score, severity))
        same = own[band_index(predicted, severity) == band]
        if len(same) < self.min_lesions:
            return own, subset
        return same, f"{subset}, predicted {LABELS[band]}"

    def half_width(self, subset: str) -> float:
        return conformal_quantile(np.abs(self.residuals_for(subset)[0]), self.coverage)

    def band_half_widths(self, subset: str, severity: SeverityConfig) -> dict[str, float]:
        """``{band: half-width}`` for a score predicted in each band (for provenance and logs)."""
        centres = {"Mild": severity.mild_max / 2, "Moderate": (severity.mild_max + severity.moderate_max) / 2,
                   "Severe": (severity.moderate_max + 1.0) / 2}
        return {band: conformal_quantile(np.abs(self.residuals_for(subset, s, severity)[0]), self.coverage)
                for band, s in centres.items()}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"coverage": self.coverage, "min_lesions": self.min_lesions,
                               "residuals": {k: [float(x) for x in v] for k, v in self.residuals.items()}}
        if self.predictions is not None:
            out["predictions"] = {k: [float(x) for x in v] for k, v in self.predictions.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        predictions = d.get("predictions")
        return cls(float(d["coverage"]), {k: np.asarray(v, dtype=np.float64) for k, v in d["residuals"].items()},
                   int(d.get("min_lesions", MIN_SUBSET_LESIONS)),
                   {k: np.asarray(v, dtype=np.float64) for k, v in predictions.items()} if predictions else None)


def fit_calibration(residuals: Mapping[str, Sequence[float]], coverage: float = DEFAULT_COVERAGE,
                    min_lesions: int = MIN_SUBSET_LESIONS,
                    predictions: Mapping[str, Sequence[float]] | None = None) -> Calibration:
    """Residuals per subset (true - predicted), optionally with the predicted scores -> a :class:`Calibration`."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}; e.g. 0.9 for a 90 % interval")
    kept = {k: np.asarray(v, dtype=np.float64) for k, v in residuals.items() if len(v)}
    if not kept:
        raise ValueError("no calibration residuals: the calibration data has no labelled lesion")
    scores = None
    if predictions is not None:
        scores = {k: np.asarray(predictions[k], dtype=np.float64) for k in kept}
        wrong = [k for k in kept if scores[k].shape != kept[k].shape]
        if wrong:
            raise ValueError(f"predictions of subset {wrong[0]} do not pair with its residuals "
                             f"({scores[wrong[0]].shape} vs {kept[wrong[0]].shape})")
    return Calibration(coverage, kept, min_lesions, scores)


# ------------------------------------------------------------------------------------------ out of distribution


@dataclass(frozen=True)
class FeatureDistribution:
    """One modality's training features: mean ``[D]`` and the shrunk covariance's inverse ``[D, D]``."""

    mean: Tensor
    precision: Tensor

    def distance(self, features: Tensor) -> Tensor:
        """``[N, D] -> [N]``: Mahalanobis distance divided by ``sqrt(D)`` (about 1 for a training lesion)."""
        centred = features.double() - self.mean.double()
        squared = ((centred @ self.precision.double()) * centred).sum(dim=1).clamp_min(0.0)
        return (squared / self.mean.numel()).sqrt().float()


def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean ``[D]``, Ledoit-Wolf shrunk covariance ``[D, D]`` and the shrinkage, of ``features [N, D]``.

    The covariance is ``(1 - a) S + a mu I`` with ``S`` the maximum-likelihood covariance, ``mu = tr(S) / D`` and
    ``a`` the Ledoit & Wolf (2004) estimate of the optimal shrinkage; with fewer lesions than feature dimensions
    ``S`` alone is singular.
    """
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    sample = xc.T @ xc / n
    mu = np.trace(sample) / d
    delta = sample.copy()
    delta[np.diag_indices(d)] -= mu
    delta_sq = (delta ** 2).sum() / d
    beta_sq = ((xc ** 2).T @ (xc ** 2) / n - sample ** 2).sum() / (d * n)
    shrinkage = 0.0 if delta_sq == 0 else min(beta_sq, delta_sq) / delta_sq
    covariance = (1.0 - shrinkage) * sample
    covariance[np.diag_indices(d)] += shrinkage * mu
    return mean, covariance, float(shrinkage)


def fit_feature_distribution(features: np.ndarray) -> FeatureDistribution:
    mean, covariance, _ = ledoit_wolf(features)
    precision = np.linalg.pinv(covariance, hermitian=True)
    return FeatureDistribution(torch.from_numpy(mean).float(), torch.from_numpy(precision).float())


CONTRAST = APPEARANCE.index("lesion_contrast")
CHANNELS = ("features", "colour", "contrast")
"""What each view is compared on: its encoder feature, its colour statistics, its lesion's contrast."""


NO_LESION_CONTRAST = MIN_RELATIVE_CONTRAST / 2
"""The contrast a view without a found lesion counts with on the log scale (its measured contrast is 0): half the
faintest contrast the segmentation accepts, so "no lesion" is fainter than any lesion found."""


def log_contrast(contrast: Tensor | np.ndarray) -> Tensor:
    """Relative contrast -> its log, a view without a lesion counting as ``NO_LESION_CONTRAST``."""
    return torch.as_tensor(contrast, dtype=torch.float64).clamp_min(NO_LESION_CONTRAST).log()


@dataclass(frozen=True)
class ViewStatistics:
    """One modality's training views as ``model.quality`` measures them: the distribution of their colour
    statistics (every column of ``APPEARANCE`` but the contrast) and the mean and std of their lesions' log
    contrast (over the views where a lesion was found; contrast is a ratio, so fainter by half is the same step
    at any darkness)."""

    colour: FeatureDistribution
    contrast_mean: float
    contrast_std: float

    def distances(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """``[N, len(APPEARANCE)]`` -> the colour statistics' distance ``[N]`` and how many stds fainter (log
        contrast) than the training lesions the lesion is ``[N]`` (0 when it is as dark or darker: a darker lesion
        is still a lesion)."""
        colour = self.colour.distance(torch.cat([values[:, :CONTRAST], values[:, CONTRAST + 1:]], dim=1))
        fainter = (self.contrast_mean - log_contrast(values[:, CONTRAST])) / self.contrast_std
        return colour, fainter.clamp_min(0.0).float()


def fit_view_statistics(values: np.ndarray) -> ViewStatistics:
    """``[N, len(APPEARANCE)]`` training views -> :class:`ViewStatistics`."""
    values = np.asarray(values, dtype=np.float64)
    contrast = log_contrast(values[:, CONTRAST][values[:, CONTRAST] > 0]).numpy()
    if len(contrast) < 2:
        raise ValueError(f"a lesion was found in {len(contrast)} of {len(values)} training views: need at least 2")
    return ViewStatistics(fit_feature_distribution(np.delete(values, CONTRAST, axis=1)), float(contrast.mean()),
                          max(float(contrast.std()), 1e-6))


@dataclass(frozen=True)
class OODDetector:
    """Per-modality training distributions and per-subset thresholds on the combined score.

    A detector fitted before the view statistics existed has ``views`` and ``scales`` None: a view's distance is
    its feature distance. Otherwise each of a view's three distances (``CHANNELS``) is divided by its ``scales``
    entry (the ``quantile`` of that distance over the calibration views of that modality, so that 1 means "as far
    as the farthest calibration lesions") and the view's distance is the largest of them.
    """

    distributions: dict[str, FeatureDistribution]
    thresholds: dict[str, float]
    pooled_threshold: float
    quantile: float = OOD_QUANTILE
    views: dict[str, ViewStatistics] | None = None
    scales: dict[str, tuple[float, float, float]] | None = None

    def scores(self, features: Tensor, present: Tensor, appearance: Tensor | None = None) -> Tensor:
        """``features [B, M, D]``, ``present [B, M]`` bool and (optional) ``appearance [B, M, K]`` (NaN rows: view not
        measured) -> ``[B]``: the largest distance over present modalities."""
        distances = self.distances(features, appearance)  # [B, M]
        return distances.masked_fill(~present.cpu(), -math.inf).max(dim=1).values

    def distances(self, features: Tensor, appearance: Tensor | None = None) -> Tensor:
        """``[B, M, D]`` (and ``[B, M, K]``) -> ``[B, M]``: each modality's distance to its training views."""
        channels = self.channel_distances(features, appearance)  # [B, M, 3], NaN where not measured
        if self.scales is None:
            return channels[..., 0]
        scales = torch.tensor([self.scales.get(m, (1.0, 1.0, 1.0)) for m in MODALITIES], dtype=channels.dtype)
        return torch.nan_to_num(channels / scales, nan=-math.inf).max(dim=2).values

    def channel_distances(self, features: Tensor, appearance: Tensor | None = None) -> Tensor:
        """``[B, M, 3]`` unscaled distances per ``CHANNELS`` (NaN where a view's statistics were not measured)."""
        features = features.detach().float().cpu()
        out = torch.full((*features.shape[:2], len(CHANNELS)), math.nan)
        out[..., 0] = torch.stack([self.distributions[m].distance(features[:, i]) for i, m in enumerate(MODALITIES)],
                                  1)
        if appearance is None or self.views is None:
            return out
        for i, m in enumerate(MODALITIES):
            rows = ~torch.isnan(appearance[:, i, 0])
            if m in self.views and rows.any():
                colour, fainter = self.views[m].distances(appearance[rows, i])
                out[rows, i, 1], out[rows, i, 2] = colour, fainter
        return out

    def threshold(self, subset: str) -> float:
        return self.thresholds.get(subset, self.pooled_threshold)

    def to_dict(self) -> dict[str, Any]:
        d = {"quantile": self.quantile, "thresholds": dict(self.thresholds), "pooled_threshold": self.pooled_threshold,
             "modalities": {m: {"mean": d.mean.clone(), "precision": d.precision.clone()}
                            for m, d in self.distributions.items()}}
        if self.views is not None and self.scales is not None:
            d["views"] = {m: {"mean": v.colour.mean.clone(), "precision": v.colour.precision.clone(),
                              "contrast_mean": v.contrast_mean, "contrast_std": v.contrast_std}
                          for m, v in self.views.items()}
            d["scales"] = {m: list(v) for m, v in self.scales.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OODDetector:
        distributions = {m: FeatureDistribution(v["mean"].float(), v["precision"].float())
                         for m, v in d["modalities"].items()}
        views = scales = None
        if "views" in d:
            views = {m: ViewStatistics(FeatureDistribution(v["mean"].float(), v["precision"].float()),
                                       float(v["contrast_mean"]), float(v["contrast_std"]))
                     for m, v in d["views"].items()}
            scales = {m: tuple(float(x) for x in v) for m, v in d["scales"].items()}
        return cls(distributions, {k: float(v) for k, v in d["thresholds"].items()}, float(d["pooled_threshold"]),
                   float(d.get("quantile", OOD_QUANTILE)), views, scales)


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """The ``ceil((n + 1) * quantile)``-th smallest score (the largest one when n is too small): at most a
    ``1 - quantile`` share of lesions like these lies above it."""
    rank = min(len(scores), math.ceil((len(scores) + 1) * quantile))
    return float(np.sort(scores)[rank - 1])


def fit_distributions(train_features: Mapping[str, np.ndarray]) -> dict[str, FeatureDistribution]:
    missing = [m for m in MODALITIES if m not in train_features or len(train_features[m]) < 2]
    if missing:
        raise ValueError(f"no training features for {missing}: every modality needs at least 2 training lesions "
                         f"(set data.simulate_multispectral=true when the data has no multispectral views)")
    return {m: fit_feature_distribution(train_features[m]) for m in MODALITIES}


def fit_views(train_appearance: Mapping[str, np.ndarray]) -> dict[str, ViewStatistics]:
    """``{modality: [N_m, len(APPEARANCE)]}`` measured training views -> :class:`ViewStatistics` per modality; a
    modality with fewer than 2 views with a lesion is left out (its views are compared on their features alone)."""
    return {m: fit_view_statistics(v) for m, v in train_appearance.items()
            if len(v) >= 2 and (np.asarray(v)[:, CONTRAST] > 0).sum() >= 2}


def fit_detector(distributions: dict[str, FeatureDistribution], views: dict[str, ViewStatistics] | None,
                 features: Tensor, appearance: Tensor | None, present: Tensor, quantile: float = OOD_QUANTILE,
                 min_lesions: int = MIN_SUBSET_LESIONS) -> OODDetector:
    """Calibration lesions' features ``[N, M, D]``, view statistics ``[N, M, K]`` (NaN: not measured) and
    ``present [N, M]`` bool -> the detector. ``views`` None: the feature-only detector (thresholds on the feature
    distances, as before the view statistics existed).

    Scales: per modality and channel, the ``quantile`` of that channel's distances over the calibration views.
    Thresholds (:func:`thresholds_from`): on the scaled, combined distances of the calibration lesions in whose
    every measured view a lesion was found. A view without one has contrast 0, as far from the training lesions
    as that makes it; counting such lesions could lift a threshold over every lesionless image.
    """
    available = present.numpy().astype(bool)
    if views is None or appearance is None:
        distances = OODDetector(distributions, {}, 0.0, quantile).distances(features).numpy()
        return thresholds_from(distributions, distances, available, quantile, min_lesions)
    channels = OODDetector(distributions, {}, 0.0, quantile, views).channel_distances(features, appearance).numpy()
    with_lesion = ~(appearance[..., CONTRAST].numpy() == 0).any(axis=1)  # NaN (not measured) counts as found
    scales = {}
    for i, m in enumerate(MODALITIES):
        rows = available[:, i] & with_lesion
        scales[m] = tuple(_scale(channels[rows, i, c], quantile) for c in range(len(CHANNELS)))
    scaled = OODDetector(distributions, {}, 0.0, quantile, views, scales)
    distances = scaled.distances(features, appearance).numpy()
    fitted = thresholds_from(distributions, distances[with_lesion], available[with_lesion], quantile, min_lesions)
    return replace(fitted, views=views, scales=scales)


def _scale(distances: np.ndarray, quantile: float) -> float:
    measured = distances[~np.isnan(distances)]
    return max(quantile_threshold(measured, quantile), 1e-6) if len(measured) else 1.0


def thresholds_from(distributions: dict[str, FeatureDistribution], distances: np.ndarray, available: np.ndarray,
                    quantile: float = OOD_QUANTILE, min_lesions: int = MIN_SUBSET_LESIONS) -> OODDetector:
    """Validation lesions' distances ``[N, M]`` and availability ``[N, M]`` bool -> per-subset thresholds.

    A subset's threshold is the ``quantile`` of ``max over its modalities`` among the lesions that have all of
    them. With fewer than ``min_lesions`` such lesions, every lesion counts with the subset's modalities it has
    (clinical at least): the same statistic over fewer modalities, so a slightly lower (stricter) threshold.
    ``pooled_threshold`` (for a subset never seen) is that fallback over all modalities.
    """
    distances, available = np.asarray(distances, dtype=np.float64), np.asarray(available, dtype=bool)

    def fallback(cols: list[int]) -> float:
        masked = np.where(available[:, cols], distances[:, cols], -np.inf)
        return quantile_threshold(masked.max(axis=1), quantile)

    thresholds = {}
    for subset in all_subsets():
        cols = [MODALITIES.index(m) for m in subset.split("+")]
        rows = available[:, cols].all(axis=1)
        thresholds[subset] = quantile_threshold(distances[rows][:, cols].max(axis=1), quantile) \
            if rows.sum() >= min_lesions else fallback(cols)
    return OODDetector(distributions, thresholds, fallback(list(range(len(MODALITIES)))), quantile)


# ---------------------------------------------------------------------------------------------------- together


@dataclass(frozen=True)
class Trust:
    """A checkpoint's calibration and OOD detector; either may be None (an older checkpoint)."""

    calibration: Calibration | None
    ood: OODDetector | None
    severity: SeverityConfig
    band_frequencies: dict[str, float] | None = None
    """The training labels' share per severity band (the baseline forecast of ``training.evaluate``'s Brier)."""

    @property
    def uses_appearance(self) -> bool:
        """Whether :meth:`assess` wants each view's ``model.quality`` statistics (``appearance``)."""
        return self.ood is not None and self.ood.views is not None

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], severity: SeverityConfig) -> Trust:
        """Read ``checkpoint["trust"]``; without it the fields are null, and a log line says why."""
        section = checkpoint.get("trust") or {}
        calibration = section.get("calibration")
        ood = section.get("ood")
        if calibration is None or ood is None:
            log.warning("the checkpoint has no %s (not calibrated, or written before calibration existed): "
                        "answers carry interval, severity_probabilities, in_distribution and ood_score as null; add "
                        "them with `python -m training.calibrate --checkpoint CKPT --data DIR --out CKPT2`",
                        " and ".join(n for n, v in (("calibration", calibration), ("ood detector", ood)) if v is None))
        frequencies = section.get("train_band_frequencies")
        return cls(Calibration.from_dict(calibration) if calibration else None,
                   OODDetector.from_dict(ood) if ood else None, severity,
                   {k: float(v) for k, v in frequencies.items()} if frequencies else None)

    def assess(self, scores: Sequence[float], features: Tensor, present: Tensor, decimals: int | None = None,
               appearance: Tensor | None = None) -> list[dict[str, Any]]:
        """Scores ``[B]``, encoder features ``[B, M, D]``, ``present [B, M]`` bool and, when
        :attr:`uses_appearance`, the views' statistics ``[B, M, K]`` (``model.scoring.appearance``) -> the trust
        fields of each answer: ``interval``, ``severity_probabilities``, ``in_distribution``, ``ood_score``,
        ``ood_threshold``."""
        subsets = [subset_name([m for m, p in zip(MODALITIES, row, strict=True) if p]) for row in present.tolist()]
        ood = self.ood.scores(features, present, appearance).tolist() if self.ood is not None \
            else [None] * len(subsets)
        return [self._fields(float(s), k, o, decimals) for s, k, o in zip(scores, subsets, ood, strict=True)]

    def _fields(self, score: float, subset: str, ood_score: float | None, decimals: int | None) -> dict[str, Any]:
        def r(x: float) -> float:
            return float(x) if decimals is None else round(float(x), decimals)

        fields = dict(NULL_FIELDS)
        if self.calibration is not None:
            residuals, source = self.calibration.residuals_for(subset, score, self.severity)
            q = conformal_quantile(np.abs(residuals), self.calibration.coverage)
            fields["interval"] = {"low": r(max(0.0, score - q)), "high": r(min(1.0, score + q)),
                                  "coverage": self.calibration.coverage, "calibrated_on": source}
            fields["severity_probabilities"] = {k: r(v) for k, v in
                                                band_probabilities(score, residuals, self.severity).items()}
        if self.ood is not None and ood_score is not None:
            threshold = self.ood.threshold(subset)
            fields.update(in_distribution=bool(ood_score <= threshold), ood_score=r(ood_score),
                          ood_threshold=r(threshold))
        return fields
