"""The learning-rate schedule of every training: linear warm-up, then drop on a plateau.

One meaning per key (the ``schedule`` config section, the same in every stage):

- ``warmup_epochs`` W: epoch e < W (0-based) runs at lr * (warmup_start + (1 - warmup_start) * e / W);
  from epoch W on the full lr.
- ``plateau_patience`` P: after P validations in a row without a new best (ties are no
  improvement; validations inside the warm-up only set the reference), the lr is multiplied
  by ``plateau_factor`` and floored at ``min_lr``. 0: no plateau drops.

The state is plain data so a resumed run continues the same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from aux_code.config import ConfigError, opt


@dataclass
class ScheduleSection:
    """Learning-rate schedule (aux_code.schedule): the same keys and meanings in every stage."""

    warmup_epochs: int = opt(0, "Linear warm-up over the first N epochs, from warmup_start * lr to lr (0: none).")
    warmup_start: float = opt(0.1, "Fraction of the lr at epoch 0 of the warm-up.")
    plateau_patience: int = opt(
        0, "Validations in a row without a new best before the lr is multiplied by plateau_factor (0: never)."
    )
    plateau_factor: float = opt(0.5, "Multiplier of the lr on a plateau.")
    min_lr: float = opt(0.0, "Floor of the lr after plateau drops.")

    def validate(self) -> None:
        if self.warmup_epochs < 0 or self.plateau_patience < 0:
            raise ConfigError("schedule.warmup_epochs and schedule.plateau_patience must be >= 0")
        if not 0.0 < self.warmup_start <= 1.0:
            raise ConfigError(f"schedule.warmup_start = {self.warmup_start} must be in (0, 1]")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ConfigError(f"schedule.plateau_factor = {self.plateau_factor} must be in (0, 1)")
        if self.min_lr < 0:
            raise ConfigError(f"schedule.min_lr = {self.min_lr} must be >= 0")


class Schedule:
    """Sets the lr of ``optimizers`` each epoch and watches validations for plateaus (see module docstring)."""

    def __init__(self, section: ScheduleSection, *, lr: float, optimizers: Sequence[torch.optim.Optimizer],
                 mode: Literal["max", "min"] = "max") -> None:
        self.s = section
        self.base_lr = lr
        self.optimizers = list(optimizers)
        self.mode = mode
        self.current = lr
        self.best: float | None = None
        self.bad = 0
        self.drops = 0

    def lr_at(self, epoch: int) -> float:
        w = self.s.warmup_epochs
        if epoch < w:
            return self.base_lr * (self.s.warmup_start + (1.0 - self.s.warmup_start) * epoch / w)
        return self.current

    def start_epoch(self, epoch: int) -> float:
        """Set and return the lr of 0-based ``epoch``."""
        lr = self.lr_at(epoch)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def observe(self, value: float, epoch: int) -> None:
        """One validation value of 0-based ``epoch``."""
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.bad = value, 0
            return
        if epoch < self.s.warmup_epochs or self.s.plateau_patience == 0:
            return
        self.bad += 1
        if self.bad >= self.s.plateau_patience:
            self.current = max(self.current * self.s.plateau_factor, self.s.min_lr)
            self.drops += 1
            self.bad = 0

    def state_dict(self) -> dict:
        return {"current": self.current, "best": self.best, "bad": self.bad, "drops": self.drops}

    def load_state_dict(self, d: dict) -> None:
        self.current, self.best, self.bad, self.drops = d["current"], d["best"], d["bad"], d["drops"]
