"""The checkpoint is the contract between training and serving.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` reads: the format version, the model,
data (preprocessing) and severity configs, the state_dict, provenance (data hash, git commit, metrics,
validation split) and, when training or ``training.calibrate`` fitted it, ``trust`` (``model.trust``: conformal
residuals and the encoders' feature distributions, as lists and tensors). A checkpoint without ``trust`` still
loads; its answers carry the trust fields as null. Serving rebuilds everything from this one file and never needs a
model hub.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import DataConfig, ModelConfig, SeverityConfig, from_dict, to_dict
from model.fusion_model import FusionModel
from model.trust import Trust

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "data_config", "severity", "state_dict")


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with everything needed to serve it."""

    model: FusionModel
    model_cfg: ModelConfig
    data_cfg: DataConfig
    severity: SeverityConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    trust: Trust | None = None
    """Interval, band probabilities and OOD flag (``model.trust``); its parts are None for an older checkpoint."""

    @property
    def version(self) -> str:
        """A short id of the weights (the provenance's ``model_version``, else ``"unversioned"``)."""
        return str(self.provenance.get("model_version", "unversioned"))


def build_checkpoint(model: nn.Module, model_cfg: ModelConfig, data_cfg: DataConfig, severity: SeverityConfig,
                     provenance: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Assemble the checkpoint dict. ``extra`` holds resumable training state (optimizer, epoch, ...)."""
    return {
        "format_version": FORMAT_VERSION,
        "model_config": to_dict(model_cfg),
        "data_config": to_dict(data_cfg),
        "severity": to_dict(severity),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "provenance": dict(provenance or {}),
        **extra,
    }


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temporary file in the same folder, then rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint dict with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint; train one with `python -m training.train` first")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable pigment checkpoint ({type(exc).__name__}: {exc})") from exc
    check_format(checkpoint, path)
    return checkpoint


def check_format(checkpoint: Any, path: str | Path = "checkpoint") -> None:
    """Raise a ValueError that names the file if ``checkpoint`` is not a pigment checkpoint of our version."""
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise ValueError(f"{path}: not a pigment checkpoint (no format_version); was it written by training.train?")
    version = checkpoint["format_version"]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {version!r} is not supported; this pigment reads version "
            f"{FORMAT_VERSION}. Retrain, or use the pigment release that wrote it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}; it was not written by training.train")


def configs_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[ModelConfig, DataConfig, SeverityConfig]:
    return (
        from_dict(ModelConfig, checkpoint["model_config"], "model_config"),
        from_dict(DataConfig, checkpoint["data_config"], "data_config"),
        from_dict(SeverityConfig, checkpoint["severity"], "severity"),
    )


def model_from_checkpoint(checkpoint: dict[str, Any], trust: bool = True) -> LoadedModel:
    """Rebuild the eval-mode model (never downloading pretrained weights) from a loaded checkpoint dict.

    ``trust=False`` skips the checkpoint's trust section (an empty :class:`Trust`, and no warning that it is
    missing): for ``training.calibrate``, which is about to fit a new one."""
    model_cfg, data_cfg, severity = configs_from_checkpoint(checkpoint)
    model = FusionModel(model_cfg, data_cfg.image_size, pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return LoadedModel(model, model_cfg, data_cfg, severity, dict(checkpoint.get("provenance", {})),
                       Trust.from_checkpoint(checkpoint, severity) if trust else Trust(None, None, severity))


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint file and return the eval-mode model on ``device`` with its configs."""
    loaded = model_from_checkpoint(load_checkpoint(path))
    loaded.model.to(device)
    return loaded
