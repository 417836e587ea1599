"""Fit what tells a user how far to trust a score (``model.trust``), and store it in a checkpoint.

    python -m training.calibrate --checkpoint CKPT --data DIR [--coverage 0.9] --out CKPT2

``training.train`` calls :func:`fit_trust` at the end of training with its own split: the training lesions give the
feature distribution of each encoder and the statistics of each view (``model.trust.ViewStatistics``), the
validation lesions the conformal residuals per modality subset and the
out-of-distribution thresholds. This command does the same without training:

* DIR is the checkpoint's training data (same data hash, split recorded): exactly what training would have done
  (its calibration split when ``data.calibration_fraction`` made one, else its validation split, which also chose
  the checkpoint: such intervals can under-cover, docs/trust.md);
* other labelled data: every lesion of DIR calibrates the interval and the thresholds; the feature distributions
  and view statistics stay the checkpoint's, or, for a checkpoint that has none, are fitted on half of DIR's
  patients (seeded split) and the thresholds are set on the other half.

The result's ``provenance.calibration`` says what was used (data, hash, lesions per subset, which subsets fall back
to the pooled residuals).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import scoring
from model.checkpoint import LoadedModel, load_checkpoint, model_from_checkpoint, save_checkpoint
from model.config import AUX_MODALITIES, MODALITIES
from model.severity import LABELS, severity_label
from model.trust import (
    CHANNELS,
    DEFAULT_COVERAGE,
    MIN_SUBSET_LESIONS,
    OOD_QUANTILE,
    TRUST_FORMAT,
    OODDetector,
    fit_calibration,
    fit_detector,
    fit_distributions,
    fit_views,
    subset_name,
)
from training.data import Lesion, index_dataset, lesion_sample, select, split_by_patient

log = logging.getLogger("training.calibrate")


@dataclass
class Scored:
    """Lesions scored with every modality subset they have.

    ``true [N]``; ``subsets[name] [N]`` the score with exactly that subset (NaN where the lesion lacks one of its
    modalities); ``features [N, M, D]`` each encoder's feature; ``present [N, M]`` bool the modalities each has;
    ``appearance [N, M, K]`` each sent view's statistics (``model.scoring.appearance``; NaN for a simulated view).
    """

    true: np.ndarray
    subsets: dict[str, np.ndarray]
    features: torch.Tensor
    present: torch.Tensor
    appearance: torch.Tensor


def aux_subsets() -> list[tuple[str, ...]]:
    """Every set of auxiliary modalities, from none to all."""
    return [c for k in range(len(AUX_MODALITIES) + 1) for c in combinations(AUX_MODALITIES, k)]


def score_lesions(model: torch.nn.Module, lesions: list[Lesion], data_cfg, batch_size: int = 32,
                  device: str | torch.device = "cpu", subsets: bool = True) -> Scored:
    """Score each lesion with each modality subset it has (``model.scoring``, auxiliary views hidden by the mask;
    ``subsets=False``: only with every view it has, all that fitting the distributions needs) and keep its encoder
    features and view statistics (from the forward with every view it has)."""
    model.eval()
    names = {aux: subset_name(("clinical", *aux)) for aux in aux_subsets()} if subsets else {}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names.values()}
    features, present, appearance = [], [], []
    for start in range(0, len(lesions), batch_size):
        samples = [lesion_sample(x, data_cfg) for x in lesions[start:start + batch_size]]
        full = scoring.forward_all(model, samples, device)
        features.append(full.features)
        present.append(full.present)
        appearance.append(scoring.appearance(samples, full.present))
        available = full.present[:, 1:]  # [B, 2] over AUX_MODALITIES
        for aux, name in names.items():
            wanted = torch.tensor([m in aux for m in AUX_MODALITIES]).expand_as(available)
            has_all = (available | ~wanted).all(dim=1)  # [B]
            scores = full.scores.numpy() if aux == tuple(AUX_MODALITIES) \
                else scoring.forward(model, samples, device, aux_mask=wanted)[0].numpy()  # every view: full's
            parts[name].append(np.where(has_all.numpy(), scores, np.nan))
    return Scored(np.array([x.score for x in lesions], dtype=np.float64),
                  {k: np.concatenate(v).astype(np.float64) for k, v in parts.items()},
                  torch.cat(features), torch.cat(present), torch.cat(appearance))


def residuals_by_subset(scored: Scored) -> dict[str, np.ndarray]:
    """Signed residuals (true - predicted) of the lesions that have each subset."""
    return {k: (scored.true - v)[~np.isnan(v)] for k, v in scored.subsets.items()}


def predictions_by_subset(scored: Scored) -> dict[str, np.ndarray]:
    """The predicted scores behind :func:`residuals_by_subset`, in the same order."""
    return {k: v[~np.isnan(v)] for k, v in scored.subsets.items()}


def training_features(scored: Scored) -> dict[str, np.ndarray]:
    """``{modality: [N_m, D]}``: the features of the lesions that have each modality."""
    return {m: scored.features[scored.present[:, i], i].numpy() for i, m in enumerate(MODALITIES)}


def training_views(scored: Scored) -> dict[str, np.ndarray]:
    """``{modality: [N_m, K]}``: the statistics of the views the lesions sent for each modality (not simulated)."""
    measured = ~torch.isnan(scored.appearance[..., 0])  # [N, M]
    return {m: scored.appearance[measured[:, i], i].numpy() for i, m in enumerate(MODALITIES)}


def fit_trust(model: torch.nn.Module, data_cfg, severity, fit_lesions: list[Lesion] | None,
              calibration_lesions: list[Lesion], coverage: float = DEFAULT_COVERAGE,
              kept: OODDetector | None = None, device: str | torch.device = "cpu",
              batch_size: int = 32) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's ``"trust"`` section and a provenance summary.

    Args:
        fit_lesions: lesions whose encoder features and view statistics define the training distribution (None:
            keep those of ``kept``, a checkpoint's detector; one fitted before view statistics stays without).
        calibration_lesions: lesions not trained on, for the residuals, the OOD scales and thresholds.
    """
    if kept is not None:
        distributions, views = kept.distributions, kept.views
    elif fit_lesions:
        fitted = score_lesions(model, fit_lesions, data_cfg, batch_size, device, subsets=False)
        distributions, views = fit_distributions(training_features(fitted)), fit_views(training_views(fitted))
    else:
        raise ValueError("no lesions to fit the feature distributions on")
    scored = score_lesions(model, calibration_lesions, data_cfg, batch_size, device)
    residuals = residuals_by_subset(scored)
    calibration = fit_calibration(residuals, coverage, predictions=predictions_by_subset(scored))
    ood = fit_detector(distributions, views, scored.features, scored.appearance, scored.present, OOD_QUANTILE)
    counts = {k: len(v) for k, v in residuals.items()}
    provenance = {
        "coverage": coverage,
        "calibration_lesions": len(calibration_lesions),
        "fit_lesions": len(fit_lesions) if fit_lesions else None,
        "lesions_per_subset": counts,
        "pooled_fallback": sorted(k for k, n in counts.items() if n < MIN_SUBSET_LESIONS),
        "min_lesions": MIN_SUBSET_LESIONS,
        "half_widths": {k: calibration.half_width(k) for k in counts},
        "band_half_widths": {k: calibration.band_half_widths(k, severity) for k in counts},
        "ood_quantile": OOD_QUANTILE,
        "ood_thresholds": dict(ood.thresholds),
        "ood_lesions_per_subset": {k: int(scored.present[:, [MODALITIES.index(m) for m in k.split("+")]].all(1).sum())
                                   for k in ood.thresholds},
        "ood_pooled_threshold": ood.pooled_threshold,
        "ood_scales": {m: dict(zip(CHANNELS, v, strict=True)) for m, v in (ood.scales or {}).items()},
        "ood_views_fitted": sorted(ood.views or {}),
    }
    for name in provenance["pooled_fallback"]:
        log.warning("subset %s has %d calibration lesions (< %d): its answers use the pooled residuals", name,
                    counts[name], MIN_SUBSET_LESIONS)
    section = {"format": TRUST_FORMAT, "calibration": calibration.to_dict(), "ood": ood.to_dict()}
    if fit_lesions:
        section["train_band_frequencies"] = band_frequencies(fit_lesions, severity)
    return section, provenance


def band_frequencies(lesions: list[Lesion], severity) -> dict[str, float]:
    """The share of lesions in each severity band: the constant forecast ``training.evaluate``'s Brier score beats."""
    labels = [severity_label(x.score, severity) for x in lesions]
    return {name: labels.count(name) / len(labels) for name in LABELS}


def calibrate_checkpoint(checkpoint: dict[str, Any], data: Path, coverage: float = DEFAULT_COVERAGE,
                         device: str = "cpu") -> dict[str, Any]:
    """A copy of ``checkpoint`` with a fresh ``"trust"`` section fitted on ``data`` (see the module doc)."""
    loaded: LoadedModel = model_from_checkpoint(checkpoint, trust=False)
    loaded.model.to(device)
    index = index_dataset(data)
    if not index.lesions:
        raise ValueError(f"{data}: no labelled lesion to calibrate on")
    provenance = checkpoint.get("provenance", {})
    split = provenance.get("split") or {}
    kept = None
    if provenance.get("data_hash") == index.data_hash and split.get("train") and split.get("val"):
        held_out = "calibration" if split.get("calibration") else "val"
        fit, calib, how = select(index.lesions, split["train"], str(data)), \
            select(index.lesions, split[held_out], str(data)), f"the checkpoint's own train/{held_out} split"
    elif checkpoint.get("trust", {}).get("ood"):
        kept = OODDetector.from_dict(checkpoint["trust"]["ood"])
        fit, calib, how = None, index.lesions, "every lesion (feature distributions kept from the checkpoint)"
    else:
        fit, calib = split_by_patient(index.lesions, 0.5, seed=0)
        how = "half the patients for the feature distributions, the other half for residuals and thresholds"
    log.info("calibrating on %s: %s", data, how)
    section, summary = fit_trust(loaded.model, loaded.data_cfg, loaded.severity, fit, calib, coverage, kept,
                                 device)
    summary.update(data=str(data), data_hash=index.data_hash, method=how)
    old = checkpoint.get("trust") or {}
    if "train_band_frequencies" not in section and "train_band_frequencies" in old:
        section["train_band_frequencies"] = old["train_band_frequencies"]
    out = dict(checkpoint)
    out["trust"] = section
    out["provenance"] = {**provenance, "calibration": summary}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by training.train")
    p.add_argument("--data", type=Path, required=True, help="labelled dataset folder or manifest .csv")
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE, help="of the interval (default 0.9)")
    p.add_argument("--out", type=Path, required=True, help="where to write the calibrated checkpoint")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if not 0.0 < args.coverage < 1.0:
        p.error(f"--coverage must be in (0, 1), got {args.coverage}")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        checkpoint = calibrate_checkpoint(load_checkpoint(args.checkpoint), args.data, args.coverage, args.device)
    except (ValueError, FileNotFoundError) as error:
        print(f"training.calibrate: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    save_checkpoint(checkpoint, args.out)
    summary = checkpoint["provenance"]["calibration"]
    print(f"wrote {args.out}: {summary['coverage']:.0%} intervals, half-widths "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary["half_widths"].items())
          + f"; OOD thresholds {summary['ood_thresholds']} (pooled {summary['ood_pooled_threshold']:.3f})")
    return args.out


if __name__ == "__main__":
    main()
