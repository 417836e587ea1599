"""FusionModel: one Swin encoder per modality, cross-attention fusion, regression head.

Clinical is required and is the query; dermoscopy and multispectral are optional key/value tokens. Which
auxiliary modalities a sample has is given per sample by ``aux_mask``, so one batch may mix modality subsets
and each sample's score equals its score computed alone. A sample with no auxiliary modality attends to a
zero token (the design's clinical-only fallback).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.config import AUX_MODALITIES, MODALITIES, ModelConfig
from model.cross_attention import CrossAttention
from model.prediction_head import PredictionHead
from model.swin_encoder import SwinEncoder

ATTENTION_TOKENS: tuple[str, ...] = ("none",) + AUX_MODALITIES
"""Names of the key/value tokens, in order: the zero fallback token, then each auxiliary modality."""


class FusionOutput(NamedTuple):
    score: Tensor  # [B] in [0, 1]
    attention: Tensor  # [B, len(ATTENTION_TOKENS)] head-averaged attention of the clinical query
    features: Tensor  # [B, len(MODALITIES), D] each encoder's pooled feature (zeros where the modality is absent)


class FusionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, image_size: int, pretrained: bool | None = None):
        """Build the network. ``pretrained`` overrides ``cfg.pretrained`` (loading a checkpoint passes False)."""
        super().__init__()
        pretrained = cfg.pretrained if pretrained is None else pretrained
        self.encoders = nn.ModuleDict({m: SwinEncoder(cfg, image_size, pretrained) for m in MODALITIES})
        self.dim = self.encoders["clinical"].num_features
        self.fusion = CrossAttention(self.dim, cfg.attention_heads)
        self.head = PredictionHead(self.dim, cfg.head_hidden, cfg.dropout)

    def forward_features(self, clinical: Tensor, dermoscopy: Tensor | None = None,
                         multispectral: Tensor | None = None,
                         aux_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Images ``[B, 3, S, S]`` (absent ones None) and ``aux_mask [B, 2]`` bool -> fused ``[B, D]``, weights,
        encoder features.

        ``aux_mask[:, i]`` says whether sample i has ``AUX_MODALITIES[i]``; rows of an absent sample's image
        are ignored (pass zeros). Without ``aux_mask`` every given image counts as present for all samples.
        Returns the fused feature, the attention weights ``[B, heads, 1, 3]`` over ``ATTENTION_TOKENS`` and the
        pooled feature of each encoder ``[B, len(MODALITIES), D]`` (zeros for absent rows), which
        ``model.trust`` measures against the training distribution.
        """
        if clinical is None:
            raise ValueError("the clinical image is required; dermoscopy and multispectral are optional")
        batch = clinical.shape[0]
        images = (dermoscopy, multispectral)
        if aux_mask is None:
            aux_mask = torch.stack(
                [torch.full((batch,), img is not None, dtype=torch.bool, device=clinical.device) for img in images], 1
            )
        query = self.encoders["clinical"](clinical)  # [B, D]
        aux = [self._encode_present(name, img, aux_mask[:, i], query) for i, (name, img) in
               enumerate(zip(AUX_MODALITIES, images))]
        none_token = torch.zeros_like(query)
        kv = torch.stack([none_token] + aux, dim=1)  # [B, 3, D]
        kv_mask = torch.cat([~aux_mask.any(dim=1, keepdim=True), aux_mask], dim=1)  # [B, 3]
        fused, weights = self.fusion(query.unsqueeze(1), kv, kv_mask)
        features = torch.stack([query, *(a * m.unsqueeze(1) for a, m in zip(aux, aux_mask.T))], dim=1)
        return fused.squeeze(1), weights, features

    def forward_head(self, fused: Tensor) -> Tensor:
        """``[B, D] -> [B]`` score in [0, 1]."""
        return self.head(fused)

    def forward(self, clinical: Tensor, dermoscopy: Tensor | None = None, multispectral: Tensor | None = None,
                aux_mask: Tensor | None = None) -> FusionOutput:
        fused, weights, features = self.forward_features(clinical, dermoscopy, multispectral, aux_mask)
        return FusionOutput(self.forward_head(fused), weights.mean(dim=1).squeeze(1), features)

    def _encode_present(self, name: str, images: Tensor | None, present: Tensor, like: Tensor) -> Tensor:
        """Encode only the rows that have this modality (one batched forward); other rows get zeros."""
        if images is None:
            return torch.zeros_like(like)
        if torch.jit.is_tracing():
            # A traced program cannot branch on data: encode every row; absent ones are masked in attention.
            return self.encoders[name](images)
        rows = present.nonzero().squeeze(1)
        if rows.numel() == present.numel():
            return self.encoders[name](images)
        features = torch.zeros_like(like)
        if rows.numel():
            features = features.index_copy(0, rows, self.encoders[name](images.index_select(0, rows)))
        return features
