"""Offline saliency: Grad-CAM overlays for one lesion, or how often the heat falls on the lesion in a benchmark.

One lesion::

    python -m training.explain --checkpoint CKPT --clinical PATH [--dermoscopy PATH] [--multispectral PATH] \\
        --out DIR [--json]

writes ``DIR/<modality>_gradcam.png`` (the map over the original photo, at its size) for each image given and
prints the score, its severity and, per modality, the overlay's path (``--json``: base64 PNGs instead, as the
served explanation returns them).

A benchmark with lesion masks (``training.synth`` writes ``masks/{clinical,dermoscopy}/<id>.png``)::

    python -m training.explain --checkpoint CKPT --data SYNTH_DIR --lesion-heat-report [--limit N] [--out DIR]

scores each lesion as training and evaluation do (``training.data.lesion_tensors``), and for the clinical and
dermoscopy maps counts the lesions whose mean heat inside the mask (resized to the map with nearest neighbour)
exceeds the mean heat outside. A lesion whose map is all zeros counts as "not more inside". Prints the fraction per
modality and, with ``--out``, writes ``DIR/lesion_heat_report.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model.checkpoint import LoadedModel, load_for_inference
from model.cli import run
from model.config import AUX_MODALITIES, MODALITIES
from model.preprocessing import load_image
from model.saliency import aux_mask_for, explain, overlay_base64, overlay_png
from model.scoring import prepare_files
from model.severity import severity_label
from training.data import index_dataset, lesion_tensors

MASKED_MODALITIES: tuple[str, ...] = ("clinical", "dermoscopy")  # the views training.synth writes masks for
REPORT_FILE = "lesion_heat_report.json"


def explain_files(loaded: LoadedModel, paths: dict[str, Path], out_dir: Path | None,
                  inline: bool = False) -> dict[str, Any]:
    """Explain one lesion given as image files -> ``{score, severity, heatmaps: {modality: {path | png_base64}}}``."""
    images = {m: load_image(p) for m, p in paths.items()}  # full size, for the overlays
    # The model sees exactly what serving feeds it: the one scoring path's preparation (model.scoring).
    sample = prepare_files(paths, loaded.data_cfg)
    tensors = {m: t.unsqueeze(0) for m, t in sample.images.items()}  # [1, 3, S, S]
    result = explain(loaded.model, tensors, aux_mask_for(tensors))
    heatmaps: dict[str, dict[str, Any]] = {}
    for modality, heat in result.heatmaps.items():
        entry: dict[str, Any] = {"source": str(paths[modality]), "peak": float(heat.max())}
        if inline:
            entry["png_base64"] = overlay_base64(images[modality], heat)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{modality}_gradcam.png"
            path.write_bytes(overlay_png(images[modality], heat))
            entry["path"] = str(path)
        heatmaps[modality] = entry
    return {"score": result.score, "severity": severity_label(result.score, loaded.severity), "heatmaps": heatmaps}


def lesion_heat_report(loaded: LoadedModel, data_dir: Path, limit: int | None = None) -> dict[str, Any]:
    """Per masked modality: how many lesions have more mean heat inside their mask than outside."""
    lesions = index_dataset(data_dir).lesions[:limit]
    counts = {m: {"lesions": 0, "more_inside": 0, "ratios": []} for m in MASKED_MODALITIES}
    for lesion in lesions:
        sample = lesion_tensors(lesion, loaded.data_cfg)
        present = ["clinical"] + [m for m, p in zip(AUX_MODALITIES, sample["aux_mask"]) if p]
        tensors = {m: sample[m].unsqueeze(0) for m in present}
        heatmaps = explain(loaded.model, tensors, sample["aux_mask"].unsqueeze(0)).heatmaps
        for modality in MASKED_MODALITIES:
            mask_path = data_dir / "masks" / modality / f"{lesion.lesion_id}.png"
            if modality not in heatmaps or not mask_path.is_file():
                continue
            inside, outside = inside_outside(heatmaps[modality], mask_path)
            tally = counts[modality]
            tally["lesions"] += 1
            tally["more_inside"] += int(inside > outside)
            tally["ratios"].append((inside + 1e-6) / (outside + 1e-6))
    report: dict[str, Any] = {"data": str(data_dir), "checkpoint_version": loaded.version, "modalities": {}}
    for modality, tally in counts.items():
        n = tally["lesions"]
        report["modalities"][modality] = {
            "lesions": n,
            "more_heat_inside": tally["more_inside"],
            "fraction": tally["more_inside"] / n if n else None,
            "median_inside_to_outside": float(np.median(tally["ratios"])) if n else None,
        }
    return report


def inside_outside(heatmap: np.ndarray, mask_path: Path) -> tuple[float, float]:
    """Mean heat inside and outside a binary mask image, the mask resized to the ``[S, S]`` heatmap."""
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"{mask_path}: unreadable mask")
    inside = cv2.resize(mask, heatmap.shape[::-1], interpolation=cv2.INTER_NEAREST) > 127
    if inside.all() or not inside.any():
        return float(heatmap.mean()), float(heatmap.mean())  # no contrast possible: counts as not more inside
    return float(heatmap[inside].mean()), float(heatmap[~inside].mean())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.explain", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--clinical", type=Path, help="clinical photo of one lesion (required without --data)")
    p.add_argument("--dermoscopy", type=Path)
    p.add_argument("--multispectral", type=Path)
    p.add_argument("--out", type=Path, help="folder for the overlays or the report")
    p.add_argument("--json", action="store_true", help="print JSON with base64 PNG overlays")
    p.add_argument("--data", type=Path, help="benchmark folder with masks/ (with --lesion-heat-report)")
    p.add_argument("--lesion-heat-report", action="store_true", help="fraction of lesions with more heat inside")
    p.add_argument("--limit", type=int, default=None, help="only the first N lesions of --data")
    args = p.parse_args(argv)
    if args.lesion_heat_report != (args.data is not None):
        p.error("--lesion-heat-report and --data go together")
    if not args.lesion_heat_report and args.clinical is None:
        p.error("--clinical is required to explain one lesion (or use --data DIR --lesion-heat-report)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loaded = load_for_inference(args.checkpoint)
    if args.lesion_heat_report:
        report = lesion_heat_report(loaded, args.data, args.limit)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / REPORT_FILE).write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return
    paths = {m: getattr(args, m) for m in MODALITIES if getattr(args, m)}
    result = explain_files(loaded, paths, args.out, inline=args.json)
    if args.json:
        print(json.dumps(result))
        return
    print(f"score {result['score']:.3f} ({result['severity']})")
    for modality, entry in result["heatmaps"].items():
        print(f"  {modality:<13} {entry.get('path', '(no --out: overlay not written)')}")


if __name__ == "__main__":
    run(main)
