"""Small heads on frozen or trained features: the triplet embedding (TeD-SPAD code) and the privacy probe (Table 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingHead", "MLPProbe"]


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


class MLPProbe(nn.Module):
    """Standardised feature (N, D) -> attribute logits (N, A).

    Linear(D, hidden) - ReLU - Dropout - Linear(hidden, A), or one Linear when hidden == 0.
    The feature mean/std of the training split are buffers, so the probe carries its own
    normalisation.
    """

    def __init__(self, in_dim: int, num_outputs: int, *, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_outputs))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_outputs))

    def set_normalisation(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(dim=0))
        # Constant feature dimensions (dead units) would divide by zero.
        self.std.copy_(features.std(dim=0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std)
