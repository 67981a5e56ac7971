"""Feature-level probe (TeD-SPAD Table 1): how much privacy the utility feature itself carries.

Each (anonymized) privacy image is repeated T times along time into a static clip
(B, C, T, H, W), the utility model fT gives its pooled feature (the 2048-d "after mix_5c"
vector at paper size), and a small MLP probe learns the attributes from the frozen
features. The epoch is selected on the validation split; test cMAP is reported.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from aux_code.metrics import cmap
from aux_code.training import check_finite
from privacy_training.data import to_float


def stack_clip(images: torch.Tensor, length: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, T, H, W): every frame of the clip is the same image."""
    if images.dim() != 4:
        raise ValueError(f"stack_clip expects images (B, C, H, W), got shape {tuple(images.shape)}")
    return repeat(images, "b c h w -> b c t h w", t=length)


@torch.inference_mode()
def extract_features(
    utility: nn.Module, images: torch.Tensor, *, clip_length: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """fT pooled features (N, D) float32 on the CPU of uint8 images (N, 3, H, W).

    The utility model returns (logits, feature); only the feature is kept.
    """
    utility.eval()
    feats = []
    for chunk in images.split(batch_size):
        clip = stack_clip(to_float(chunk.to(device)), clip_length)
        _, feature = utility(clip)
        feats.append(feature.float().cpu())
    return torch.cat(feats)


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


def train_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    attributes: tuple[str, ...],
    hidden: int,
    dropout: float,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[MLPProbe, dict]:
    """Train the probe with BCE-with-logits and Adam; keep the epoch of best validation cMAP.

    Features (N, D) float32, labels (N, A) float32, all on one device. Returns the probe
    with the selected weights and {"epoch", "val_cmap", "history": [val cMAP per epoch]}.
    """
    probe = MLPProbe(train_x.shape[1], train_y.shape[1], hidden=hidden, dropout=dropout).to(train_x.device)
    probe.set_normalisation(train_x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    best_state, best_cmap, best_epoch, history = None, -1.0, 0, []
    n = train_x.shape[0]
    for epoch in range(epochs):
        probe.train()
        order = torch.randperm(n, generator=generator).to(train_x.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if idx.numel() < 2:
                continue
            loss = F.binary_cross_entropy_with_logits(probe(train_x[idx]), train_y[idx])
            check_finite(epoch, {"probe_bce": loss})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        probe.eval()
        with torch.inference_mode():
            val_logits = probe(val_x).double().cpu().numpy()
        value = cmap(val_y.cpu().numpy(), val_logits, attribute_names=attributes).cmap
        history.append(value)
        if value > best_cmap:
            best_cmap, best_epoch, best_state = value, epoch + 1, copy.deepcopy(probe.state_dict())
    assert best_state is not None
    probe.load_state_dict(best_state)
    probe.eval()
    return probe, {"epoch": best_epoch, "val_cmap": best_cmap, "history": history}


@torch.inference_mode()
def probe_logits(probe: MLPProbe, features: torch.Tensor) -> np.ndarray:
    probe.eval()
    return probe(features).double().cpu().numpy()
