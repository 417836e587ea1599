"""One modality's image encoder: a timm Swin Transformer, globally average-pooled to a feature vector.

This is the only place that calls ``timm.create_model``. Pretrained ImageNet weights are a build-time option:
from a local file (``pretrained_file``) or through timm's hub download. Loading a trained checkpoint never
needs them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
from torch import Tensor, nn

from model.config import ModelConfig

log = logging.getLogger(__name__)


class SwinEncoder(nn.Module):
    """``[B, 3, S, S]`` image -> ``[B, num_features]`` (768 for Swin-T)."""

    def __init__(self, cfg: ModelConfig, image_size: int, pretrained: bool = False):
        super().__init__()
        kwargs = dict(cfg.backbone_kwargs)
        kwargs.setdefault("img_size", image_size)
        self.backbone = _create_backbone(cfg, kwargs, pretrained)
        self.num_features: int = self.backbone.num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images)  # num_classes=0 + avg pool: the head is an identity after pooling


def _create_backbone(cfg: ModelConfig, kwargs: dict, pretrained: bool) -> nn.Module:
    common = dict(num_classes=0, global_pool="avg", **kwargs)
    if not pretrained:
        return timm.create_model(cfg.backbone, pretrained=False, **common)
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.pretrained_file={str(path)!r} does not exist; point it at a local ImageNet weight file "
                f"for {cfg.backbone} (.pth or .safetensors) or set model.pretrained=false"
            )
        log.info("loading %s ImageNet weights from %s", cfg.backbone, path)
        return timm.create_model(cfg.backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **common)
    try:
        return timm.create_model(cfg.backbone, pretrained=True, **common)
    except Exception as exc:  # no network, hub offline, missing cache: all end the same way for the user
        raise RuntimeError(
            f"could not load pretrained ImageNet weights for {cfg.backbone} ({type(exc).__name__}: {exc}). "
            f"Without network access, download them elsewhere and pass the file with "
            f"--set model.pretrained_file=PATH, or train from scratch with --set model.pretrained=false"
        ) from exc

