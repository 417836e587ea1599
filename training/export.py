"""Export a trained checkpoint for serving: a slim state_dict checkpoint, or a self-describing TorchScript program.

    python -m training.export --checkpoint runs/demo/best_model.pth --format state_dict --out export/pigment.pth
    python -m training.export --checkpoint runs/demo/best_model.pth --format torchscript --out export/pigment.pt

``state_dict``: the same checkpoint format (same ``format_version``, still ``weights_only``-loadable) with only what
serving needs: configs, severity bands, weights, provenance. Optimizer and other resume state are dropped.

``torchscript``: ``torch.jit.trace`` of :class:`TracedFusion`, whose forward takes full-size tensors
``(clinical, dermoscopy, multispectral [B, 3, S, S], aux_mask [B, 2] bool)`` and returns ``(score [B],
attention [B, 3])``. Rows of an absent modality are ignored (pass zeros). The checkpoint's configs and provenance
travel inside the file as ``pigment.json`` (read it with ``torch.jit.load(path, _extra_files={"pigment.json": ""})``),
so the program says how to preprocess its inputs and how to band its scores.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model.checkpoint import REQUIRED_KEYS, load_checkpoint, model_from_checkpoint, save_checkpoint
from model.cli import run
from model.config import AUX_MODALITIES, MODALITIES
from model.fusion_model import ATTENTION_TOKENS, FusionModel

METADATA_FILE = "pigment.json"
SERVING_KEYS = (*REQUIRED_KEYS, "provenance", "trust")


class TracedFusion(nn.Module):
    """FusionModel with every input required and plain tensor outputs, so it traces to one program."""

    def __init__(self, model: FusionModel):
        super().__init__()
        self.model = model

    def forward(self, clinical: Tensor, dermoscopy: Tensor, multispectral: Tensor,
                aux_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, S, S]`` x 3 and ``aux_mask [B, 2]`` bool -> score ``[B]``, attention ``[B, 3]``."""
        out = self.model(clinical, dermoscopy, multispectral, aux_mask)
        return out.score, out.attention


def export_state_dict(checkpoint: dict[str, Any], out: Path) -> Path:
    """Write the serving subset of ``checkpoint`` (atomically, like training does)."""
    return save_checkpoint({k: checkpoint[k] for k in SERVING_KEYS if k in checkpoint}, out)


def export_torchscript(checkpoint: dict[str, Any], out: Path) -> Path:
    """Trace the eval-mode model on CPU and save it with the checkpoint's configs as ``pigment.json``."""
    loaded = model_from_checkpoint(checkpoint)
    size = loaded.data_cfg.image_size
    # Two rows with different subsets: tracing records one program that serves any mix (the model encodes every
    # row while tracing and masks absent ones in attention).
    example = (*torch.randn(3, 2, 3, size, size), torch.tensor([[True, False], [False, True]]))
    with torch.no_grad(), warnings.catch_warnings():
        # timm's patch-size asserts become constants (the image size is fixed by data_config), and torch warns
        # that jit is deprecated in favour of torch.export; neither changes the traced program.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(TracedFusion(loaded.model).eval(), example)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(out), _extra_files={METADATA_FILE: json.dumps(metadata(checkpoint), indent=2)})
    return out


def metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a TorchScript user needs besides the program: configs, bands, provenance and the I/O contract."""
    return {
        **{k: checkpoint[k] for k in ("format_version", "model_config", "data_config", "severity")},
        "provenance": checkpoint.get("provenance", {}),
        "inputs": [*MODALITIES, "aux_mask"],
        "aux_mask_columns": list(AUX_MODALITIES),
        "outputs": {"score": "[B] in [0, 1]", "attention": list(ATTENTION_TOKENS)},
    }


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The exported program (eval mode, CPU) and its ``pigment.json`` metadata."""
    files = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
        program = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return program.eval(), json.loads(files[METADATA_FILE])


EXPORTERS = {"state_dict": export_state_dict, "torchscript": export_torchscript}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by training.train")
    parser.add_argument("--format", required=True, choices=sorted(EXPORTERS))
    parser.add_argument("--out", required=True, type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    out = EXPORTERS[args.format](checkpoint, args.out)
    print(f"wrote {args.format} export of {args.checkpoint} to {out}")


if __name__ == "__main__":
    run(main)
