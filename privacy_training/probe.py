"""Feature-level probe (TeD-SPAD Table 1): how much privacy the utility feature itself carries.

Each (anonymized) privacy image is repeated T times along time into a static clip
(B, C, T, H, W), the utility model fT gives its pooled feature (the 2048-d "after mix_5c"
vector at paper size), and a small MLP probe learns the attributes from the frozen
features. The epoch is selected on the validation split; test cMAP is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from aux_code.fit import Selection, Stepper, StoredModel, Task
from aux_code.metrics import cmap
from aux_code.models.heads import MLPProbe
from aux_code.models.mgfn import count_parameters
from aux_code.runtime import DistInfo, check_batches, data_parallel, rank_rows
from privacy_training.data import to_float
from privacy_training.target import rank_loss_weight, score_split, write_predictions


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


class ProbeTask(Task):
    """The MLP probe on frozen features (N, D) with attribute labels (N, A), BCE-with-logits and Adam;
    validated every epoch on validation cMAP. Batches of fewer than 2 rows are skipped.

    Under torchrun ``batch_size`` is the global batch, sharded over ranks as the target model's
    (privacy_training.target.TargetTask); every rank holds all features."""

    name = "probe"

    def __init__(self, *, features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], attributes: tuple[str, ...],
                 hidden: int, dropout: float, lr: float, weight_decay: float, epochs: int, batch_size: int, seed: int,
                 f1_threshold: float, extra: Callable[[dict], dict], predictions: Path | None = None,
                 dist: DistInfo | None = None, sync_bn: bool = True) -> None:
        """``features`` / ``labels``: {"train", "val", "test"} -> (N, D) / (N, A) on one device; ``extra(test
        report)`` adds the stage's own results (comparison with raw, the utility model) to the selected probe's;
        ``predictions``: where ``finish`` writes the test labels and logits (report.save_test_predictions)."""
        train_x, train_y = features["train"], labels["train"]
        self.spec = {"in_dim": int(train_x.shape[1]), "num_outputs": int(train_y.shape[1]), "hidden": hidden, "dropout": dropout}
        self.probe = MLPProbe(**self.spec).to(train_x.device)
        self.probe.set_normalisation(train_x)
        self.optimizer = torch.optim.Adam(self.probe.parameters(), lr=lr, weight_decay=weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.train_x, self.train_y, self.features = train_x, train_y, features
        self.labels = {k: v.cpu().numpy() for k, v in labels.items()}
        self.attributes, self.batch_size, self.epochs, self.f1_threshold, self.extra = attributes, batch_size, epochs, f1_threshold, extra
        self.predictions = predictions
        self.selection = Selection("cmap", "max", "max validation cMAP over probe epochs (validation carved from train; test never used)")
        self.dist = dist if dist is not None else DistInfo.single(train_x.device)
        check_batches(self.dist.world_size, [("probe.batch_size", batch_size)])
        self.train_probe = data_parallel(self.probe, self.dist, sync_bn=sync_bn)

    def models(self) -> dict[str, StoredModel]:
        return {"probe": StoredModel("probe", self.spec, self.probe)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"probe": self.optimizer}

    def task_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_task_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def batches(self, epoch: int) -> list[torch.Tensor]:
        self.probe.train()
        order = torch.randperm(self.train_x.shape[0], generator=self.generator).to(self.train_x.device)
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [idx for idx in chunks if idx.numel() >= max(2, self.dist.world_size)]

    def train_step(self, idx: torch.Tensor, stepper: Stepper) -> dict[str, float]:
        d = self.dist
        local = rank_rows(idx, d.rank, d.world_size)  # the whole batch in one process
        loss = F.binary_cross_entropy_with_logits(self.train_probe(self.train_x[local]), self.train_y[local])
        weight = rank_loss_weight(len(local), len(idx), d.world_size)
        return stepper.update({"loss": loss if weight is None else loss * weight}, self.optimizer)

    def validate(self, epoch: int) -> dict[str, float]:
        return {"cmap": cmap(self.labels["val"], probe_logits(self.probe, self.features["val"]), attribute_names=self.attributes).cmap}

    def report(self, split: str, *, save: Path | None = None) -> dict:
        logits = probe_logits(self.probe, self.features[split])
        if save is not None:
            write_predictions(save, self.labels[split], logits, self.attributes, self.dist)
        return score_split(logits, self.labels[split], attributes=self.attributes, f1_threshold=self.f1_threshold)

    def finish(self, selected: dict) -> dict:
        test = self.report("test", save=self.predictions)
        return {**self.extra(test), "validation": self.report("val"), "test": test,
                "probe": {**self.spec, "epochs": self.epochs, "parameters": count_parameters(self.probe)}}


@torch.inference_mode()
def probe_logits(probe: MLPProbe, features: torch.Tensor) -> np.ndarray:
    probe.eval()
    return probe(features).double().cpu().numpy()
