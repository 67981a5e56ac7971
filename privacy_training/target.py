"""The target model fB' on cached anonymized images: augmentation, the training task, scoring.

Images arrive as uint8 (N, 3, R, R) tensors (the cache); a batch is gathered by index,
converted to float in [0, 1] and augmented on the fly with one ``grid_sample`` for the
whole batch (a random square crop of at least ``min_crop_scale`` of the side, resized back,
and a horizontal flip), so augmentation costs one kernel and never re-reads files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aux_code.fit import Selection, Stepper, StoredModel, Task
from aux_code.runtime import DistInfo, check_batches, data_parallel, rank_rows
from aux_code.metrics import CMAPResult, cmap, macro_f1
from aux_code.models.mgfn import count_parameters
from aux_code.schedule import Schedule
from privacy_training.data import PrivacyDataError, to_float
from privacy_training.report import save_test_predictions


def augment_theta(b: int, *, min_crop_scale: float, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The training augmentation of b images as affine matrices (b, 2, 3) for :func:`warp` (CPU): a
    random square crop (side in [min_crop_scale, 1] of the image, anywhere inside it), resized back
    to (H, W), then a horizontal flip with probability 1/2. Drawn apart from the images so every
    rank draws a whole global batch's and warps its own shard."""
    scale = torch.empty(b).uniform_(min_crop_scale, 1.0, generator=generator) if min_crop_scale < 1.0 else torch.ones(b)
    # Centre offset in normalised coordinates, keeping the crop inside [-1, 1].
    shift = (torch.rand(b, 2, generator=generator) * 2.0 - 1.0) * (1.0 - scale)[:, None]
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * sign
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    return theta


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) resampled bilinearly through the affine matrices theta (B, 2, 3)."""
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rank_loss_weight(local: int, total: int, world_size: int) -> float | None:
    """The factor that makes a per-rank mean over ``local`` of a global batch's ``total`` items its
    share of the global mean (the ranks' losses then average to it); None when the shards are equal."""
    return None if local * world_size == total else local * world_size / total


class TargetTask(Task):
    """The target model fB' trained on cached anonymized images (BCE-with-logits, Adam, the schedule),
    selected on validation cMAP. ``train`` holds uint8 images (N, 3, R, R) and labels (N, A) on the device.

    Each epoch is a fresh shuffle by the task's own generator (which also draws the augmentations);
    a last batch of one image is dropped (BatchNorm needs two).

    Under torchrun ``optim.batch_size`` stays the global batch: every rank draws the same
    shuffle and the augmentations of the whole global batch from the same generator, trains
    the DistributedDataParallel wrapper on its contiguous shard, and weights its loss so the
    ranks' losses average to the global batch mean (a last batch smaller than the world size
    is dropped: some rank would have no image). Validation and test scoring run on every rank
    (rank 0's values decide, aux_code.fit); rank 0 alone writes the predictions.
    """

    name = "target"

    def __init__(self, model: nn.Module, spec: dict, *, images: torch.Tensor, labels: torch.Tensor,
                 val: tuple[torch.Tensor, np.ndarray], test: tuple[torch.Tensor, np.ndarray], attributes: tuple[str, ...],
                 cache_key: str, cfg, device: torch.device, extra: Callable[[dict, dict], dict],
                 predictions: Path | None = None, name: str = "target", init: str | dict | None = None,
                 dist: DistInfo | None = None) -> None:
        """``val`` / ``test``: (uint8 images, labels); ``extra(test report, selected epoch's record)`` adds the
        stage's own results (comparison with raw, leakage, the other attackers) to the selected model's
        reports; ``predictions``: where ``finish`` writes the test labels and logits
        (privacy_training.report.save_test_predictions), None: nowhere. ``name``: the task's name in its
        checkpoints (an attacker's); ``init``: where the model's weights started (default: model.weights or
        'scratch'); ``dist``: the run's ranks (None: one process)."""
        o = cfg.optim
        self.model, self.spec, self.device = model, spec, device
        self.images, self.labels, self.val, self.test, self.extra = images, labels, val, test, extra
        self.attributes, self.cache_key, self.predictions = attributes, cache_key, predictions
        self.batch_size, self.eval_batch, self.f1_threshold = o.batch_size, cfg.eval.batch_size, cfg.eval.f1_threshold
        self.min_crop_scale, self.flip = cfg.augment.min_crop_scale, cfg.augment.flip
        self.epochs, self.eval_every = o.epochs, cfg.eval.every
        self.selection = Selection("cmap", "max", "max validation cMAP over evaluated epochs (validation carved from train; test never used)")
        self.optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.schedule = Schedule(cfg.schedule, lr=o.lr, optimizers=[self.optimizer], mode="max")
        self.generator = torch.Generator().manual_seed(cfg.run.seed)
        self.name = name
        self.init = init if init is not None else (cfg.model.weights or "scratch")
        self.dist = dist if dist is not None else DistInfo.single(device)
        check_batches(self.dist.world_size, [("optim.batch_size", o.batch_size)])
        self.train_model = data_parallel(model, self.dist, sync_bn=cfg.ddp.sync_batchnorm)

    def models(self) -> dict[str, StoredModel]:
        return {"target": StoredModel("target", self.spec, self.model)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"target": self.optimizer}

    def task_state(self) -> dict:
        return {"generator": self.generator.get_state(), "cache_key": self.cache_key}

    def load_task_state(self, state: dict) -> None:
        if state.get("cache_key") != self.cache_key:
            raise PrivacyDataError(
                f"the resume checkpoint was trained on other images (cache key {state.get('cache_key')} vs "
                f"{self.cache_key}: anonymizer, resolution or dataset changed); use a new run.name or run.resume=false"
            )
        self.generator.set_state(state["generator"])

    def batches(self, epoch: int) -> list[torch.Tensor]:
        self.model.train()
        n = self.images.shape[0]
        order = torch.randperm(n, generator=self.generator)
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < max(2, self.dist.world_size):
            batches = batches[:-1]
        return batches

    def train_step(self, idx: torch.Tensor, stepper: Stepper) -> dict[str, float]:
        d = self.dist
        # Every rank draws the whole global batch's augmentations: the generator stays in step.
        # In one process the shard is the batch and train_model the model.
        theta = augment_theta(len(idx), min_crop_scale=self.min_crop_scale, flip=self.flip, generator=self.generator)
        local = rank_rows(idx, d.rank, d.world_size).to(self.device)
        x = warp(to_float(self.images[local]), rank_rows(theta, d.rank, d.world_size))
        loss = F.binary_cross_entropy_with_logits(self.train_model(x), self.labels[local])
        weight = rank_loss_weight(len(local), len(idx), d.world_size)
        return stepper.update({"loss": loss if weight is None else loss * weight}, self.optimizer)

    def report(self, images: torch.Tensor, labels: np.ndarray, *, save: Path | None = None) -> dict:
        """score_split of the current model on uint8 images (N, 3, R, R); ``save``: also write the labels and logits there
        (rank 0; every rank returns once the file is there)."""
        logits = predict_logits(self.model, images, batch_size=self.eval_batch, device=self.device)
        if save is not None:
            write_predictions(save, labels, logits, self.attributes, self.dist)
        return score_split(logits, labels, attributes=self.attributes, f1_threshold=self.f1_threshold)

    def validate(self, epoch: int) -> dict[str, float]:
        return {"cmap": self.report(*self.val)["cmap"]}

    def finish(self, selected: dict) -> dict:
        test = self.report(*self.test, save=self.predictions)
        return {**self.extra(test, dict(selected)), "validation": self.report(*self.val), "test": test,
                "model": {**self.spec, "parameters": count_parameters(self.model), "init": self.init}}


def write_predictions(path: Path, labels: np.ndarray, logits: np.ndarray, attributes: tuple[str, ...], dist: DistInfo) -> None:
    """save_test_predictions on rank 0; the other ranks wait for it (the attackers' intervals read the file)."""
    if dist.is_main:
        save_test_predictions(path, labels, logits, attributes)
    if dist.distributed:
        torch.distributed.barrier()


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
