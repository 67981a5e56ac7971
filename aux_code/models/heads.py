"""The embedding head for the temporal-distinctive triplet loss (TeD-SPAD code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingHead"]


class EmbeddingHead(nn.Module):
    """(B, in_dim) pooled utility feature -> (B, out_dim) unit-norm embedding.

    Linear(in_dim, hidden) - BN - ReLU - Linear(hidden, out_dim, no bias) - BN - L2 normalise
    (2048 -> 512 -> 128 at full size). The second Linear has no bias because the BN after
    it would cancel one.
    """

    def __init__(self, *, in_dim: int = 2048, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if feature.dim() != 2 or feature.shape[1] != self.in_dim:
            raise ValueError(f"EmbeddingHead expects (B, {self.in_dim}) features, got shape {tuple(feature.shape)}")
        return F.normalize(self.net(feature), dim=1)
