"""The target model fB' on cached anonymized images: augmentation, epochs, scoring, schedule.

Images arrive as uint8 (N, 3, R, R) tensors (the cache); a batch is gathered by index,
converted to float in [0, 1] and augmented on the fly with one ``grid_sample`` for the
whole batch (a random square crop of at least ``min_crop_scale`` of the side, resized back,
and a horizontal flip), so augmentation costs one kernel and never re-reads files.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aux_code.metrics import CMAPResult, cmap, macro_f1
from aux_code.training import check_finite
from privacy_training.data import to_float


def augment_batch(
    images: torch.Tensor,
    *,
    min_crop_scale: float,
    flip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random square crop (side in [min_crop_scale, 1] of the image, anywhere inside it),
    resized back to (H, W) bilinearly, then a horizontal flip with probability 1/2.

    images: float (B, C, H, W) in [0, 1] -> float (B, C, H, W).
    """
    b = images.shape[0]
    dev = images.device
    scale = torch.empty(b).uniform_(min_crop_scale, 1.0, generator=generator) if min_crop_scale < 1.0 else torch.ones(b)
    # Centre offset in normalised coordinates, keeping the crop inside [-1, 1].
    shift = (torch.rand(b, 2, generator=generator) * 2.0 - 1.0) * (1.0 - scale)[:, None]
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * sign
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(dev), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def warmup_lr(epoch: int, *, lr: float, warmup_epochs: int) -> float:
    """Linear warm-up from lr / 10 (epoch 0) to lr (epoch warmup_epochs and after)."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return lr
    return lr * (0.1 + 0.9 * epoch / warmup_epochs)


class PlateauSchedule:
    """Warm-up, then multiply the learning rate by ``factor`` after ``patience`` evaluations
    without a new best validation cMAP (ties do not count as improvement), floored at ``min_lr``.

    Plain state (``state_dict``) so a resumed run continues the same schedule.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, lr: float, warmup_epochs: int, factor: float, patience: int, min_lr: float):
        self.optimizer = optimizer
        self.base_lr = lr
        self.warmup_epochs = warmup_epochs
        self.factor = factor
        self.patience = patience
        self.min_lr = min_lr
        self.current = warmup_lr(0, lr=lr, warmup_epochs=warmup_epochs)
        self.best: float | None = None
        self.bad = 0
        self.drops = 0
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.current

    def start_epoch(self, epoch: int) -> float:
        """Set the learning rate for 0-based ``epoch``; returns it."""
        if epoch < self.warmup_epochs:
            self.current = warmup_lr(epoch, lr=self.base_lr, warmup_epochs=self.warmup_epochs)
        elif self.drops == 0:
            self.current = self.base_lr
        self._apply()
        return self.current

    def observe(self, metric: float, epoch: int) -> None:
        """Record a validation value; warm-up epochs only set the reference."""
        if self.best is None or metric > self.best:
            self.best, self.bad = metric, 0
            return
        if epoch < self.warmup_epochs:
            return
        self.bad += 1
        if self.bad > self.patience:
            self.current = max(self.current * self.factor, self.min_lr)
            self.drops += 1
            self.bad = 0
            self._apply()

    def state_dict(self) -> dict:
        return {"current": self.current, "best": self.best, "bad": self.bad, "drops": self.drops}

    def load_state_dict(self, d: dict) -> None:
        self.current, self.best, self.bad, self.drops = d["current"], d["best"], d["bad"], d["drops"]
        self._apply()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    min_crop_scale: float,
    flip: bool,
    generator: torch.Generator,
    epoch: int,
) -> dict[str, float]:
    """One pass over the uint8 images (N, 3, R, R) and labels (N, A), both already on the model's device.

    Shuffled with ``generator``; a last batch of one image is dropped (BatchNorm needs two).
    Returns the mean BCE loss, the step count and the wall time.
    """
    start = time.perf_counter()
    model.train()
    n = images.shape[0]
    order = torch.randperm(n, generator=generator)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches = batches[:-1]
    total = torch.zeros((), device=images.device)
    for step, idx in enumerate(batches):
        idx = idx.to(images.device)
        x = augment_batch(to_float(images[idx]), min_crop_scale=min_crop_scale, flip=flip, generator=generator)
        logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx])
        check_finite(epoch * len(batches) + step + 1, {"bce": loss})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return {"loss": float(total) / len(batches), "steps": len(batches), "epoch_time_s": time.perf_counter() - start}


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits (N, A) float64 of uint8 images (N, 3, R, R) in eval mode."""
    model.eval()
    out = [model(to_float(chunk.to(device))).double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(out).numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large negative logits."""
    return torch.sigmoid(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def score_split(logits: np.ndarray, labels: np.ndarray, *, attributes: tuple[str, ...], f1_threshold: float) -> dict:
    """cMAP (with per-attribute AP and excluded attributes), macro F1 on sigmoid probabilities,
    and the positive rate of each attribute (the AP a random ranking would get on average)."""
    result: CMAPResult = cmap(labels, logits, attribute_names=attributes)
    return {
        "cmap": result.cmap,
        "per_attribute_ap": result.per_attribute,
        "excluded_attributes": list(result.excluded),
        "macro_f1": macro_f1(labels, sigmoid(logits), threshold=f1_threshold),
        "positive_rate": {a: float(r) for a, r in zip(attributes, labels.mean(axis=0))},
        "chance_cmap": float(np.mean([labels[:, j].mean() for j, a in enumerate(attributes) if a not in result.excluded])),
    }
