"""Cross-attention fusion: the clinical feature queries the auxiliary-modality tokens."""

from __future__ import annotations

import math

from torch import Tensor, nn


class CrossAttention(nn.Module):
    """Clinical query attends to auxiliary-modality tokens; the residual keeps the clinical signal.

    Separate Q/K/V projections, ``heads`` heads, an output projection, then ``LayerNorm(out + query)``.
    Absent tokens are masked per sample, so a sample's result does not depend on what else is in its batch.
    """

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"feature size {dim} is not divisible by attention_heads={heads}; choose a divisor")
        self.heads = heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: Tensor, kv: Tensor, kv_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[B, 1, D], [B, N, D], [B, N] bool (True = present) -> fused [B, 1, D], weights [B, heads, 1, N].

        Every sample must have at least one present token.
        """
        b, n, _ = kv.shape
        q = self._split(self.q_proj(query))  # [B, h, 1, d]
        k = self._split(self.k_proj(kv))  # [B, h, N, d]
        v = self._split(self.v_proj(kv))
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, h, 1, N]
        if kv_mask is not None:
            logits = logits.masked_fill(~kv_mask.view(b, 1, 1, n), float("-inf"))
        weights = logits.softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, 1, -1)  # [B, 1, D]
        return self.norm(self.out_proj(out) + query), weights

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)


