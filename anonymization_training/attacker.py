"""The fresh attacker of stage 1's selection: can an attacker fA never met read the attributes?

The budget model fB is what fA learns to fool, so its accuracy says how well fA fooled it, not
how much private information is left (issue 14: a global tint drove fB's NT-Xent accuracy to 3%
while a target model trained on the tinted images recovered the raw cMAP). The probe here asks
stage 2's question on validation data, cheaply enough to ask it every few epochs on a CPU:

1. fA anonymizes the attacker-train and attacker-validation images (two carves of the privacy
   *train* list, never its test split), clamped to [0, 1] and rounded to 8 bits as stage 2's
   image cache stores them;
2. a small CNN (:class:`TinyAttacker`), freshly initialised, trains ``steps`` Adam steps of
   multi-label BCE on the anonymized attacker-train images and their attribute labels;
3. its cMAP on the anonymized attacker-validation images is the score (``chance``: the cMAP of
   constant scores, i.e. the mean positive rate of the scored attributes). With several attackers
   (seeds ``seed, seed + 1, ...``) the score is the worst case, their max: one attacker can fail to
   learn an attribute that is still there (on the default world one seed scored a TeD-SPAD epoch
   54.2 where three others scored 67.9-70.1, its social-relationship AP 32.6 against about 96),
   and a selection that keeps the lowest of many single-attacker scores picks exactly such failures.

Everything random in a probe (the CNN's init, batches, augmentation) comes from its own seed
inside a forked RNG, so probing at a validation changes nothing in the training that follows.

Layouts: images (N, 3, H, W) float in [0, 1]; labels (N, A) float 0/1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aux_code.metrics import cmap
from aux_code.precision import Precision


class TinyAttacker(nn.Module):
    """(N, 3, H, W) -> (N, num_outputs) logits: three conv3x3-BN-ReLU blocks of widths
    (w, 2w, 4w), each but the last followed by 2x2 max pooling, global mean pooling, linear."""

    def __init__(self, num_outputs: int, *, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class AttackerSettings:
    """What a probe trains: ``steps`` Adam steps (lr ``lr``) of ``batch_size`` images, CNN width ``width``."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    seed: int = 0


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global torch RNG (CPU, and the device's when it is CUDA) seeded with ``seed`` inside,
    restored on exit: a probe neither depends on nor disturbs the training's random stream."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def shift_flip(images: torch.Tensor, generator: torch.Generator, *, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (edge padding) and horizontal flip, per image.

    images (B, C, H, W) -> (B, C, H, W); ``generator`` lives on the images' device."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])  # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])  # (B, W)
    flip = torch.rand(b, generator=generator, device=images.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def anonymize_images(anonymizer: nn.Module | None, images: torch.Tensor, *, device: torch.device, precision: Precision,
                     batch: int = 256) -> torch.Tensor:
    """fA(images) in eval mode, clamped to [0, 1] and rounded to 8-bit levels (what stage 2's cache keeps).

    images (N, 3, H, W) float in [0, 1] (any device) -> (N, 3, H, W) float on ``device``;
    ``anonymizer`` None leaves the images as they are (then only rounded)."""
    if anonymizer is not None:
        anonymizer.eval()
    out = []
    for chunk in images.split(batch):
        x = chunk.to(device)
        if anonymizer is not None:
            with precision.autocast():
                x = anonymizer(x).float()
        out.append((x.clamp(0.0, 1.0) * 255.0).round() / 255.0)
    return torch.cat(out)


def train_attacker(images: torch.Tensor, labels: torch.Tensor, settings: AttackerSettings) -> TinyAttacker:
    """A fresh :class:`TinyAttacker` trained on (images (N, 3, H, W), labels (N, A)) on their device.

    Batches are drawn from seeded permutations (a new one when used up); BCE-with-logits, Adam."""
    if images.shape[0] < 2 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"train_attacker: need >= 2 images with one label row each, got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    device = images.device
    batch = min(settings.batch_size, images.shape[0])
    with isolated_rng(settings.seed, device):
        model = TinyAttacker(labels.shape[1], width=settings.width).to(device)
        generator = torch.Generator(device=device).manual_seed(settings.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        model.train()
        order = torch.randperm(images.shape[0], generator=generator, device=device)
        pos = 0
        for _ in range(settings.steps):
            if pos + batch > order.numel():
                order, pos = torch.randperm(images.shape[0], generator=generator, device=device), 0
            idx = order[pos : pos + batch]
            pos += batch
            x = shift_flip(images[idx], generator)
            loss = F.binary_cross_entropy_with_logits(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def attacker_scores(model: nn.Module, images: torch.Tensor, *, batch: int = 512) -> np.ndarray:
    model.eval()
    return torch.cat([model(chunk) for chunk in images.split(batch)]).float().cpu().numpy()


def fresh_attacker_probe(train_images: torch.Tensor, train_labels: torch.Tensor, val_images: torch.Tensor,
                         val_labels: torch.Tensor, settings: AttackerSettings, *, attackers: int = 1) -> dict[str, float]:
    """Train ``attackers`` fresh attackers (seeds settings.seed + r) on (already anonymized) train
    images, score each on the validation images.

    Returns {"cmap": the worst case (max) validation cMAP over the attackers, "cmap_mean": their mean,
    "chance": cMAP of constant scores on the same labels, "seconds": wall time of training + scoring}.
    Attributes without a positive in the validation labels are left out (as aux_code.metrics.cmap does)."""
    if attackers < 1:
        raise ValueError(f"fresh_attacker_probe: attackers = {attackers} must be >= 1")
    started = time.perf_counter()
    targets = val_labels.cpu().numpy().astype(np.int64)
    scores = []
    for r in range(attackers):
        model = train_attacker(train_images, train_labels.to(train_images.device),
                               dataclasses.replace(settings, seed=settings.seed + r))
        scores.append(cmap(targets, attacker_scores(model, val_images.to(train_images.device))).cmap)
    chance = cmap(targets, np.zeros((targets.shape[0], targets.shape[1]))).cmap
    return {"cmap": max(scores), "cmap_mean": float(np.mean(scores)), "chance": chance,
            "seconds": time.perf_counter() - started}
