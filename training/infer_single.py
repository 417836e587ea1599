"""Score one lesion from image files: ``python -m training.infer_single --checkpoint CKPT --clinical PATH``.

Optional ``--dermoscopy PATH`` and ``--multispectral PATH``; ``--json`` prints a JSON object instead of the result
block. Preprocessing is the serving path (``model.preprocessing``, with the checkpoint's data config), so the score
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

from model.checkpoint import LoadedModel, load_for_inference
from model.config import AUX_MODALITIES
from model.answer import format_answer
from model.preprocessing import image_to_tensor, load_image, simulation_source


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


def load_tensors(files: dict[str, Path | None], loaded: LoadedModel,
                 simulate_multispectral: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Image files -> ``{modality: [3, S, S]}`` for the given modalities, and the names of simulated ones."""
    if files.get("clinical") is None:
        raise ValueError("the clinical image is required; dermoscopy and multispectral are optional")
    cfg = loaded.data_cfg
    images = {m: load_image(path, cfg) for m, path in files.items() if path is not None}
    tensors = {m: image_to_tensor(img, m, cfg) for m, img in images.items()}
    simulated = []
    if simulate_multispectral and "multispectral" not in tensors:
        tensors["multispectral"] = image_to_tensor(images[simulation_source(images)], "multispectral", cfg)
        simulated.append("multispectral")
    return tensors, simulated


@torch.no_grad()
def predict_tensors(loaded: LoadedModel, tensors: dict[str, torch.Tensor], simulated: list[str] | None = None,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """One lesion's tensors ``{modality: [3, S, S]}`` -> the answer dict (score, severity, modalities, attention)."""
    batch = {m: t.unsqueeze(0).to(device) for m, t in tensors.items()}  # [1, 3, S, S]
    out = loaded.model(batch["clinical"], batch.get("dermoscopy"), batch.get("multispectral"))
    modalities = ["clinical", *(m for m in AUX_MODALITIES if m in tensors)]
    return format_answer(float(out.score[0]), out.attention[0].tolist(), modalities, simulated or [],
                         loaded.severity, loaded.version)


def predict_files(loaded: LoadedModel, files: dict[str, Path | None], simulate_multispectral: bool = False,
                  device: str | torch.device = "cpu") -> dict[str, Any]:
    """Image files -> the answer dict; see :func:`predict_tensors`."""
    tensors, simulated = load_tensors(files, loaded, simulate_multispectral)
    return predict_tensors(loaded, tensors, simulated, device)


def result_block(answer: dict[str, Any]) -> str:
    """The design's result block."""
    return "\n".join([
        "========== RESULT ==========",
        f"Pigmentation Score  : {answer['score']:.4f}",
        f"Severity Level     : {answer['severity']}",
        "============================",
    ])


if __name__ == "__main__":
    main()
