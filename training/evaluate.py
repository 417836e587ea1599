"""Score a checkpoint on labelled data: ``python -m training.evaluate --checkpoint CKPT --data DATA --out OUT``.

Every labelled lesion in DATA is scored with all the modalities it has (a simulated multispectral view counts when
the checkpoint's data config simulates it, as in training), then again with each modality subset by masking the
inputs. ``--split val`` scores only the checkpoint's own validation lesions, ``--split test`` the test lesions of a
manifest's fixed split (DATA must be its training data).

Writes to OUT:

* ``metrics.csv``  one row per lesion: lesion_id, patient_id, true_score, pred_score, abs_error, true_severity,
  pred_severity, modalities_used (e.g. ``clinical+dermoscopy+multispectral``), multispectral_simulated,
  pred_clinical_only, interval_low, interval_high, in_distribution, ood_score (``model.trust``; empty cells when
  the checkpoint has no calibration)
* ``summary.json`` every number, keys below
* ``score_distribution.png``, ``severity_distribution.png``, ``pred_vs_true.png``, ``reliability.png`` (mean true vs
  mean predicted score per predicted-score bin, with the lesions of each bin counted per skin-tone band)

Skin tone: the ``skin_tone_band`` column of a manifest when every lesion has one (``training.import_data`` writes
it), else that column of DATA's ``synth_truth.csv`` when there is one (the synthetic benchmark), else the ITA band of
the skin around the lesion measured by ``model.colorimetry`` on the dermoscopy image (else the clinical one); a
lesion whose segmentation fails is ``unmeasured``.

``summary.json`` keys (a "metrics block" is ``n, mse, mae, rmse, spearman, severity_accuracy, quadratic_kappa,
confusion_matrix``; the matrix is 3x3, rows = true Mild/Moderate/Severe, columns = predicted; ``spearman`` and
``quadratic_kappa`` are null when undefined, e.g. constant predictions):

=============================  ================================================================================
``checkpoint``                 path of the evaluated checkpoint
``model_version``              the checkpoint's ``provenance.model_version``
``data``                       the ``--data`` argument; ``data_hash`` its fingerprint (labels + file list)
``split``                      ``"all"`` (every labelled lesion) or ``"val"`` (the checkpoint's validation split)
``n_lesions``                  lesions scored; ``skipped`` counts of lesions left out, per reason
``severity_thresholds``        ``mild_max``, ``moderate_max`` from the checkpoint
``simulate_multispectral``     whether a missing multispectral view was simulated (from the checkpoint)
``overall``                    metrics block, each lesion with every modality it has
``baseline_mean``              metrics block of always predicting ``train_label_mean``
``train_label_mean``           mean training label (from the checkpoint; else the evaluated labels' mean, and
                               ``baseline_source`` says which)
``mae_ratio_to_baseline``      ``overall.mae / baseline_mean.mae`` (below 0.5: the model learned)
``subsets``                    ``clinical_only``, ``clinical+dermoscopy``, ``clinical+multispectral``, ``all``: a
                               metrics block over the lesions that have those modalities, scored with exactly
                               them, plus ``clinical_only_mae`` on the same lesions for a like-for-like comparison
``severity_counts``            ``{"true": {Mild, Moderate, Severe}, "pred": {...}}``
``by_skin_tone``               ``{band: metrics block}`` for each band of ``model.colorimetry.SKIN_TONE_BANDS`` (light
                               to dark; ``{"n": 0}`` when empty), then ``unmeasured`` if any; the n sum to n_lesions
``skin_tone_source``           ``"manifest"``, ``"synth_truth.csv"`` or ``"measured_ita"`` (dermoscopy, else clinical)
``by_site``                    ``{site: metrics block}`` when the manifest gives a ``site`` (lesions without one:
                               ``unknown``); absent otherwise
``trust``                      null for a checkpoint without calibration; else ``coverage_target``, ``overall``
                               (each lesion with its own modalities) and ``subsets`` (as above): ``n``,
                               ``coverage`` (share of true scores inside the interval), ``mean_width``, ``brier``
                               (of the band probabilities, summed over the 3 bands), ``brier_baseline`` (of always
                               forecasting ``baseline_band_frequencies``, the training labels' band shares, or the
                               evaluated labels' when the checkpoint lacks them: ``baseline_source``),
                               ``ood_flagged`` (share with ``in_distribution`` false)
``bootstrap``                  95% percentile intervals resampling lesions: ``{"mae": [lo, hi], "quadratic_kappa":
                               [lo, hi] or null, "n_resamples": 1000, "seed": 0}``
=============================  ================================================================================
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt
import numpy as np
import torch

from model.checkpoint import LoadedModel, load_for_inference
from model.cli import run
from model.colorimetry import SKIN_TONE_BANDS, SegmentationError, measure
from model.config import AUX_MODALITIES
from model.preprocessing import load_image
from model.scoring import assess, collate, forward_all
from model.severity import LABELS, severity_index, severity_label
from training.data import Lesion, available_modalities, index_dataset, lesion_sample, select
from training.metrics import bootstrap_intervals, score_metrics

log = logging.getLogger("training.evaluate")

SUBSETS: dict[str, tuple[str, ...]] = {
    "clinical_only": (),
    "clinical+dermoscopy": ("dermoscopy",),
    "clinical+multispectral": ("multispectral",),
    "all": AUX_MODALITIES,
}
"""Modality subsets scored separately: the auxiliary modalities each one uses (clinical is always used)."""
UNMEASURED = "unmeasured"
"""Skin-tone band of a lesion whose skin could not be measured (segmentation failed)."""
RELIABILITY_BINS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="e.g. RUN_DIR/best_model.pth")
    p.add_argument("--data", type=Path, required=True, help="dataset folder or manifest .csv")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.csv, summary.json and plots")
    p.add_argument("--split", choices=("all", "val", "test"), default="all",
                   help="all labelled lesions (default), or only the checkpoint's validation or test lesions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    loaded = load_for_inference(args.checkpoint, args.device)
    index = index_dataset(args.data)
    lesions = lesions_for_split(index.lesions, args.split, loaded.provenance, str(args.data))
    predictions, trust = predict_subsets(loaded, lesions, args.batch_size, args.device)
    summary = summarize(loaded, lesions, predictions)
    summary["trust"] = trust_summary(loaded, lesions, trust)
    tones, tone_source = skin_tones(lesions, args.data)
    summary.update(checkpoint=str(args.checkpoint), data=str(args.data), data_hash=index.data_hash,
                   split=args.split, skipped=index.skip_counts(), skin_tone_source=tone_source,
                   by_skin_tone=by_skin_tone(lesions, predictions["available"], tones, loaded))
    if any(x.site for x in lesions):
        summary["by_site"] = by_site(lesions, predictions["available"], loaded)
    write_outputs(args.out, loaded, lesions, predictions, summary, tones, trust["available"])
    print_summary(summary, args.out)
    return summary


def lesions_for_split(lesions: list[Lesion], split: str, provenance: dict[str, Any], source: str) -> list[Lesion]:
    if split == "all":
        return lesions
    ids = (provenance.get("split") or {}).get(split)
    if not ids:
        raise ValueError(f"this checkpoint records no {split} lesions (a test split comes from a manifest's split "
                         f"column); evaluate with --split all")
    return select(lesions, list(ids), source)


def predict_subsets(loaded: LoadedModel, lesions: list[Lesion], batch_size: int = 32,
                    device: str = "cpu") -> tuple[dict[str, np.ndarray], dict[str, list[dict[str, Any] | None]]]:
    """Scores ``[N]`` per key: ``"available"`` (each lesion's own modalities) and each of :data:`SUBSETS`, and the
    same keys' trust fields (``model.scoring.assess``: interval, band probabilities, OOD flag) per lesion.

    Every lesion goes through the one scoring path (``model.scoring``); a subset hides the auxiliary modalities
    it does not use. A subset's score for a lesion lacking one of its modalities is NaN (it is not in that subset)
    and its trust entry None.
    """
    out: dict[str, list[np.ndarray]] = {name: [] for name in ("available", *SUBSETS)}
    trust: dict[str, list[dict[str, Any] | None]] = {name: [] for name in out}
    for start in range(0, len(lesions), batch_size):
        samples = [lesion_sample(x, loaded.data_cfg) for x in lesions[start:start + batch_size]]
        present = collate(samples)[3]  # [B, 2]
        full = forward_all(loaded.model, samples, device)
        out["available"].append(full.scores.numpy())
        trust["available"].extend(assess(loaded, full, samples))
        for name, aux in SUBSETS.items():
            wanted = torch.tensor([m in aux for m in AUX_MODALITIES]).expand_as(present)
            has_all = (present | ~wanted).all(dim=1)  # [B]
            masked = forward_all(loaded.model, samples, device, aux_mask=wanted)
            out[name].append(np.where(has_all.numpy(), masked.scores.numpy(), np.nan))
            trust[name].extend(f if ok else None for f, ok in zip(assess(loaded, masked, samples), has_all.tolist(),
                                                                 strict=True))
    return {name: np.concatenate(parts).astype(np.float64) for name, parts in out.items()}, trust


def trust_summary(loaded: LoadedModel, lesions: list[Lesion],
                  trust: dict[str, list[dict[str, Any] | None]]) -> dict[str, Any] | None:
    """Coverage, width, Brier score and OOD share of the answers' trust fields (None: the checkpoint has none)."""
    if loaded.trust is None or loaded.trust.calibration is None:
        return None
    true = np.array([x.score for x in lesions], dtype=np.float64)
    frequencies, source = loaded.trust.band_frequencies, "checkpoint"
    if frequencies is None:
        labels = [severity_label(t, loaded.severity) for t in true]
        frequencies, source = {k: labels.count(k) / len(labels) for k in LABELS}, "evaluated_labels"
    blocks = {name: trust_block(true, fields, frequencies, loaded) for name, fields in trust.items()}
    return {"coverage_target": loaded.trust.calibration.coverage, "overall": blocks.pop("available"),
            "subsets": blocks, "baseline_band_frequencies": frequencies, "baseline_source": source}


def trust_block(true: np.ndarray, fields: list[dict[str, Any] | None], frequencies: dict[str, float],
                loaded: LoadedModel) -> dict[str, Any]:
    """``n, coverage, mean_width, brier, brier_baseline, ood_flagged`` over the lesions that have ``fields``."""
    rows = [i for i, f in enumerate(fields) if f is not None]
    if not rows:
        return {"n": 0}
    onehot = np.eye(len(LABELS))[[severity_index(true[i], loaded.severity) for i in rows]]  # [n, 3]
    probs = np.array([[fields[i]["severity_probabilities"][k] for k in LABELS] for i in rows])
    baseline = np.array([frequencies[k] for k in LABELS])
    low = np.array([fields[i]["interval"]["low"] for i in rows])
    high = np.array([fields[i]["interval"]["high"] for i in rows])
    flagged = [fields[i]["in_distribution"] is False for i in rows]
    return {
        "n": len(rows),
        "coverage": float(((true[rows] >= low) & (true[rows] <= high)).mean()),
        "mean_width": float((high - low).mean()),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "brier_baseline": float(((baseline - onehot) ** 2).sum(axis=1).mean()),
        "ood_flagged": float(np.mean(flagged)),
    }


def summarize(loaded: LoadedModel, lesions: list[Lesion], predictions: dict[str, np.ndarray]) -> dict[str, Any]:
    """The numbers of ``summary.json`` (see the module docstring)."""
    severity = loaded.severity
    true = np.array([x.score for x in lesions], dtype=np.float64)
    pred = predictions["available"]
    mean = loaded.provenance.get("train_label_mean")
    baseline_source = "checkpoint"
    if mean is None:
        log.warning("the checkpoint has no train_label_mean; the baseline predicts the evaluated labels' mean")
        mean, baseline_source = float(true.mean()), "evaluated_labels"
    overall = score_metrics(true, pred, severity)
    baseline = score_metrics(true, np.full_like(true, mean), severity)
    subsets = {}
    for name in SUBSETS:
        rows = ~np.isnan(predictions[name])
        block = score_metrics(true[rows], predictions[name][rows], severity)
        block["clinical_only_mae"] = float(np.abs(predictions["clinical_only"][rows] - true[rows]).mean()) \
            if rows.any() else None
        subsets[name] = block
    return {
        "model_version": loaded.version,
        "n_lesions": len(lesions),
        "severity_thresholds": {"mild_max": severity.mild_max, "moderate_max": severity.moderate_max},
        "simulate_multispectral": loaded.data_cfg.simulate_multispectral,
        "overall": overall,
        "baseline_mean": baseline,
        "train_label_mean": float(mean),
        "baseline_source": baseline_source,
        "mae_ratio_to_baseline": overall["mae"] / baseline["mae"] if baseline["mae"] > 0 else None,
        "subsets": subsets,
        "severity_counts": {
            "true": _counts(true, severity),
            "pred": _counts(pred, severity),
        },
        "bootstrap": bootstrap_intervals(true, pred, severity, n_resamples=1000, seed=0),
    }


def skin_tones(lesions: list[Lesion], data: Path) -> tuple[list[str], str]:
    """Each lesion's skin-tone band and where the bands came from (``"manifest"``, ``"synth_truth.csv"`` or
    ``"measured_ita"``)."""
    if lesions and all(x.skin_tone_band for x in lesions):
        return [x.skin_tone_band for x in lesions], "manifest"
    truth = (data if data.is_dir() else data.parent) / "synth_truth.csv"
    if truth.is_file():
        with truth.open(newline="") as f:
            reader = csv.DictReader(f)
            bands = {row["lesion_id"]: row["skin_tone_band"] for row in reader} \
                if "skin_tone_band" in (reader.fieldnames or []) else None
        if bands is not None:
            return [bands.get(x.lesion_id) or UNMEASURED for x in lesions], "synth_truth.csv"
    return [_measured_band(x) for x in lesions], "measured_ita"


def _measured_band(lesion: Lesion) -> str:
    """ITA band of the skin around the lesion, on dermoscopy (even lighting, lesion centred) else clinical."""
    try:
        return measure(load_image(lesion.dermoscopy or lesion.clinical)).skin_tone_band
    except SegmentationError as error:
        log.info("%s: skin tone not measured (%s)", lesion.lesion_id, error.reason)
        return UNMEASURED


def by_skin_tone(lesions: list[Lesion], pred: np.ndarray, tones: list[str], loaded: LoadedModel) -> dict[str, Any]:
    """``{band: metrics block}`` light to dark (every band, ``{"n": 0}`` when empty), ``unmeasured`` last if any."""
    true = np.array([x.score for x in lesions], dtype=np.float64)
    tones_arr = np.array(tones, dtype=object)
    bands = list(SKIN_TONE_BANDS) + ([UNMEASURED] if UNMEASURED in tones else [])
    return {band: score_metrics(true[tones_arr == band], pred[tones_arr == band], loaded.severity) for band in bands}


def by_site(lesions: list[Lesion], pred: np.ndarray, loaded: LoadedModel) -> dict[str, Any]:
    """``{site: metrics block}`` in alphabetical order; lesions without a site count as ``unknown``."""
    true = np.array([x.score for x in lesions], dtype=np.float64)
    sites = np.array([x.site or "unknown" for x in lesions], dtype=object)
    return {site: score_metrics(true[sites == site], pred[sites == site], loaded.severity)
            for site in sorted(set(sites))}


def _counts(scores: np.ndarray, severity) -> dict[str, int]:
    labels = [severity_label(s, severity) for s in scores]
    return {name: labels.count(name) for name in LABELS}


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


def write_outputs(out: Path, loaded: LoadedModel, lesions: list[Lesion], predictions: dict[str, np.ndarray],
                  summary: dict[str, Any], tones: list[str] | None = None,
                  trust: list[dict[str, Any] | None] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(out / "metrics.csv", loaded, lesions, predictions, trust)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    true = np.array([x.score for x in lesions])
    plot_score_distribution(out / "score_distribution.png", true, predictions["available"])
    plot_severity_distribution(out / "severity_distribution.png", summary["severity_counts"])
    plot_pred_vs_true(out / "pred_vs_true.png", true, predictions["available"], summary)
    plot_reliability(out / "reliability.png", true, predictions["available"], tones or [UNMEASURED] * len(true))


def write_metrics_csv(path: Path, loaded: LoadedModel, lesions: list[Lesion],
                      predictions: dict[str, np.ndarray], trust: list[dict[str, Any] | None] | None = None) -> None:
    severity = loaded.severity
    trust = trust or [None] * len(lesions)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lesion_id", "patient_id", "true_score", "pred_score", "abs_error", "true_severity",
                         "pred_severity", "modalities_used", "multispectral_simulated", "pred_clinical_only",
                         *TRUST_COLUMNS])
        for i, lesion in enumerate(lesions):
            pred = float(predictions["available"][i])
            used = available_modalities(lesion, loaded.data_cfg)
            writer.writerow([lesion.lesion_id, lesion.patient_id, f"{lesion.score:.6f}", f"{pred:.6f}",
                             f"{abs(pred - lesion.score):.6f}", severity_label(lesion.score, severity),
                             severity_label(pred, severity), "+".join(used),
                             used.get("multispectral") == "simulated",
                             f"{predictions['clinical_only'][i]:.6f}", *trust_cells(trust[i])])


TRUST_COLUMNS = ("interval_low", "interval_high", "in_distribution", "ood_score")


def trust_cells(fields: dict[str, Any] | None) -> list[str]:
    """The metrics.csv cells of one answer's trust fields; empty where the checkpoint has none."""
    fields = fields or {}
    interval = fields.get("interval") or {}
    return [f"{interval['low']:.6f}" if interval else "", f"{interval['high']:.6f}" if interval else "",
            "" if fields.get("in_distribution") is None else str(fields["in_distribution"]),
            "" if fields.get("ood_score") is None else f"{fields['ood_score']:.6f}"]


def plot_score_distribution(path: Path, true: np.ndarray, pred: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    ax.hist(true, bins=bins, alpha=0.5, label="true")
    ax.hist(pred, bins=bins, alpha=0.5, label="predicted")
    ax.set(xlabel="pigmentation score", ylabel="lesions", title="Score distribution")
    ax.legend()
    _save(fig, path)


def plot_severity_distribution(path: Path, counts: dict[str, dict[str, int]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(LABELS))
    ax.bar(x - 0.2, [counts["true"][k] for k in LABELS], width=0.4, label="true")
    ax.bar(x + 0.2, [counts["pred"][k] for k in LABELS], width=0.4, label="predicted")
    ax.set_xticks(x, LABELS)
    ax.set(ylabel="lesions", title="Severity distribution")
    ax.legend()
    _save(fig, path)


def plot_pred_vs_true(path: Path, true: np.ndarray, pred: np.ndarray, summary: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=10, alpha=0.6)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for t in summary["severity_thresholds"].values():
        ax.axvline(t, color="grey", lw=0.5)
        ax.axhline(t, color="grey", lw=0.5)
    o = summary["overall"]
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true score", ylabel="predicted score",
           title=f"MAE {o['mae']:.3f}  (mean predictor {summary['baseline_mean']['mae']:.3f})")
    _save(fig, path)


def plot_reliability(path: Path, true: np.ndarray, pred: np.ndarray, tones: list[str]) -> None:
    """Left: mean true vs mean predicted score per predicted-score bin (on the diagonal = calibrated). Right: the
    lesions of each bin per skin-tone band, to see which tones a bin's mean speaks for."""
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    bins = np.clip(np.digitize(pred, edges[1:-1]), 0, RELIABILITY_BINS - 1)  # [N] bin of each prediction
    filled = [b for b in range(RELIABILITY_BINS) if (bins == b).any()]
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    ax.plot([pred[bins == b].mean() for b in filled], [true[bins == b].mean() for b in filled], "o-", label="model")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted score", ylabel="mean true score",
           title="Reliability of the severity score")
    ax.legend(loc="upper left")
    centres, bottom = (edges[:-1] + edges[1:]) / 2, np.zeros(RELIABILITY_BINS)
    for band in [b for b in (*SKIN_TONE_BANDS, UNMEASURED) if b in tones]:
        counts = np.bincount(bins[np.array(tones) == band], minlength=RELIABILITY_BINS)
        bars.bar(centres, counts, width=0.9 / RELIABILITY_BINS, bottom=bottom, label=band)
        bottom += counts
    bars.set(xlim=(0, 1), xlabel="predicted score bin", ylabel="lesions", title="Lesions per bin by skin tone")
    bars.legend(fontsize="small")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(summary: dict[str, Any], out: Path) -> None:
    o, b = summary["overall"], summary["baseline_mean"]
    print(f"{summary['n_lesions']} lesions ({summary['split']}), model {summary['model_version']}")
    print(f"  MAE {o['mae']:.4f}  RMSE {o['rmse']:.4f}  Spearman {_fmt(o['spearman'])}  "
          f"severity accuracy {o['severity_accuracy']:.3f}  kappa {_fmt(o['quadratic_kappa'])}")
    print(f"  mean predictor MAE {b['mae']:.4f}  (ratio {_fmt(summary['mae_ratio_to_baseline'])})")
    for name, block in summary["subsets"].items():
        if block["n"]:
            print(f"  {name:<24} n={block['n']:<5} MAE {block['mae']:.4f}  "
                  f"(clinical only on the same lesions {block['clinical_only_mae']:.4f})")
    boot = summary["bootstrap"]
    kappa = boot["quadratic_kappa"]
    print(f"  95% bootstrap intervals: MAE [{boot['mae'][0]:.4f}, {boot['mae'][1]:.4f}]  kappa "
          + ("n/a" if kappa is None else f"[{kappa[0]:.4f}, {kappa[1]:.4f}]"))
    trust = summary.get("trust")
    if trust:
        for name, block in {"overall": trust["overall"], **trust["subsets"]}.items():
            if block["n"]:
                print(f"  {trust['coverage_target']:.0%} interval {name:<24} n={block['n']:<5} coverage "
                      f"{block['coverage']:.3f}  mean width {block['mean_width']:.3f}  Brier {block['brier']:.4f} "
                      f"(band frequencies {block['brier_baseline']:.4f})  flagged OOD {block['ood_flagged']:.3f}")
    for band, block in summary.get("by_skin_tone", {}).items():
        if block["n"]:
            print(f"  skin tone {band:<14} n={block['n']:<5} MAE {block['mae']:.4f}  "
                  f"kappa {_fmt(block['quadratic_kappa'])}")
    print(f"wrote {out}/summary.json, metrics.csv and plots (skin tone from {summary.get('skin_tone_source')})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run(main)
