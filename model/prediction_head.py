"""Regression head: fused feature -> severity score in [0, 1]."""

from __future__ import annotations

from torch import Tensor, nn


class PredictionHead(nn.Module):
    """MLP ``D -> hidden[0] -> ... -> 1`` with ReLU and dropout, then a sigmoid. ``[B, D] -> [B]``."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 64), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(-1).sigmoid()
