"""Score one lesion from image files: ``python -m training.infer_single --checkpoint CKPT --clinical PATH``.

Optional ``--dermoscopy PATH`` and ``--multispectral PATH``; ``--json`` prints a JSON object instead of the result
block. A thin command line over the one scoring path (``model.scoring``) that the server uses too, so the score
equals what ``handler.predictor`` answers for the same files.

Multispectral policy (the same as serving's default): a missing multispectral image is NOT simulated; the model
sees exactly the modalities given. ``--simulate-multispectral`` derives the (H, S, L) view from the dermoscopy
image, else the clinical one, as training does when ``data.simulate_multispectral`` is true; that reproduces
``training.evaluate``'s per-lesion score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from model import scoring
from model.checkpoint import LoadedModel, load_for_inference
from model.cli import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.infer_single", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="e.g. RUN_DIR/best_model.pth")
    p.add_argument("--clinical", type=Path, required=True, help="clinical photo (required)")
    p.add_argument("--dermoscopy", type=Path, help="dermoscopy image of the same lesion")
    p.add_argument("--multispectral", type=Path, help="multispectral image of the same lesion")
    p.add_argument("--simulate-multispectral", action="store_true",
                   help="without --multispectral, simulate the view from dermoscopy/clinical as training does")
    p.add_argument("--json", action="store_true", help="print JSON (score, severity, modalities, attention)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    loaded = load_for_inference(args.checkpoint, args.device)
    files = {"clinical": args.clinical, "dermoscopy": args.dermoscopy, "multispectral": args.multispectral}
    answer = predict_files(loaded, files, simulate_multispectral=args.simulate_multispectral, device=args.device)
    print(json.dumps(answer, indent=2) if args.json else result_block(answer))
    return answer


def predict_files(loaded: LoadedModel, files: dict[str, Path | None], simulate_multispectral: bool = False,
                  device: str | torch.device = "cpu") -> dict[str, Any]:
    """Image files -> the answer dict, through the one scoring path (``model.scoring``)."""
    sample = scoring.prepare_files(files, loaded.data_cfg, simulate_multispectral=simulate_multispectral)
    return scoring.score(loaded, [sample], device)[0]


def trust_lines(answer: dict[str, Any]) -> list[str]:
    """The interval, band probabilities, OOD flag and quality warnings, when the checkpoint has them."""
    lines = []
    if answer.get("interval"):
        i = answer["interval"]
        lines.append(f"{i['coverage']:.0%} interval      : {i['low']:.4f} - {i['high']:.4f}")
        lines.append("Band probabilities : " + ", ".join(f"{k} {v:.2f}"
                                                          for k, v in answer["severity_probabilities"].items()))
    if answer.get("in_distribution") is not None:
        verdict = "yes" if answer["in_distribution"] else "NO: unlike the training images, do not rely on the score"
        lines.append(f"In distribution    : {verdict} (score {answer['ood_score']:.2f}, "
                     f"threshold {answer['ood_threshold']:.2f})")
    for w in answer.get("quality_warnings") or []:
        lines.append(f"Quality warning    : {w['modality']}: {w['warning']}")
    return lines


def result_block(answer: dict[str, Any]) -> str:
    """The design's result block."""
    return "\n".join([
        "========== RESULT ==========",
        f"Pigmentation Score  : {answer['score']:.4f}",
        f"Severity Level     : {answer['severity']}",
        *trust_lines(answer),
        "============================",
    ])


if __name__ == "__main__":
    run(main)
