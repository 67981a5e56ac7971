"""Plumbing under the one training loop (aux_code.fit): run directory, resume, best tracking, loss guard.

A training stage's ``run(cfg)`` does::

    ctx = start_run(cfg, stage="anomaly")          # seeds, device, run dir, config, logger
    try:
        return fit(task, ctx, cfg=cfg, stage="anomaly", precision=precision)   # resume_or / save inside
    finally:
        ctx.finish()

Checkpoints carry the python/numpy/torch RNG states so a resumed CPU run with
``run.deterministic=true`` reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
import yaml

from aux_code.checkpoint import CheckpointError, atomic_copy, checkpoint_epoch, load_checkpoint, remove_stale_temporaries, save_checkpoint
from aux_code.config import ConfigError, flatten_mapping, to_dict, write_run_config
from aux_code.runtime import DistInfo, MetricLogger, init_runtime, run_dir_for, seed_everything

LAST = "last.pt"
BEST = "best.pt"

# What a resumed run may change: how long it trains, where files live, how it runs and logs.
# Anything else (model, data, loss, optimiser, seed) would silently continue a different
# experiment from the old weights.
RESUMABLE_KEYS = ("optim.epochs", "paths.", "run.name", "run.resume", "run.log_every", "run.num_workers",
                  "run.device", "eval.plot_videos")


class ResumeMismatchError(ConfigError):
    """A run directory holds a checkpoint made with another config than the one given now."""


def check_resumable(run_dir: Path, cfg: Any) -> None:
    """Raise when ``run_dir`` has a checkpoint whose config differs from ``cfg`` beyond RESUMABLE_KEYS."""
    saved = run_dir / "config.yaml"
    if not ((run_dir / LAST).is_file() and saved.is_file()):
        return
    old = flatten_mapping(yaml.safe_load(saved.read_text()) or {})
    new = flatten_mapping(to_dict(cfg))
    changed = sorted(
        key for key in set(old) | set(new)
        if old.get(key) != new.get(key) and not any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS)
    )
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ResumeMismatchError(
            f"{run_dir} holds a run made with another config ({shown}{more}); resuming would continue that run. "
            "Use a new run.name, or run.resume=false to start this one over"
        )


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the stage, step, half and every loss term."""


def check_finite(step: int, terms: Mapping[str, torch.Tensor | float], *, where: str = "") -> None:
    """Stop the run, naming where (stage and minimax half), the step and the terms, when any loss term is not finite."""
    values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
    if not all(math.isfinite(v) for v in values.values()):
        shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        prefix = f"{where}: " if where else ""
        raise NonFiniteLossError(f"{prefix}non-finite loss at step {step}: {shown}")


def rng_state() -> dict:
    """Python, numpy and torch CPU RNG states as plain data (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_version, py_keys, py_gauss = random.getstate()
    return {
        "python_version": py_version,
        "python_keys": list(py_keys),
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python_keys"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


@dataclass
class BestTracker:
    """Keeps the best validation value under an explicit rule ("max" or "min")."""

    mode: Literal["max", "min"] = "max"
    best: float | None = None
    best_epoch: int | None = None

    def update(self, value: float, epoch: int) -> bool:
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch = float(value), epoch
        return better

    def state_dict(self) -> dict:
        return {"mode": self.mode, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.mode, self.best, self.best_epoch = d["mode"], d["best"], d["best_epoch"]


@dataclass
class RunContext:
    """Everything a stage's training loop needs from the runtime."""

    run_dir: Path
    dist: DistInfo
    logger: MetricLogger
    resume: bool
    best: BestTracker = field(default_factory=BestTracker)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def resume_or_none(self) -> dict | None:
        """The last checkpoint of this run directory (its RNG and best-tracker state applied), or None
        when there is nothing to resume or resuming is off (the caller then starts fresh).

        best.pt is made to hold the epoch last.pt selects first (see :meth:`save`)."""
        path = self.run_dir / LAST
        if not (self.resume and path.is_file()):
            return None
        state = load_checkpoint(path, what="resume checkpoint")
        if "rng" in state:
            set_rng_state(state["rng"])
        if "best" in state:
            self.best.load_state_dict(state["best"])
            if self.dist.is_main:
                self.repair_best(state)
        return state

    def repair_best(self, state: Mapping[str, Any]) -> None:
        """Make best.pt hold the epoch that ``state`` (last.pt) selects.

        last.pt is the one record of the selection: it names the best epoch. save() writes
        last.pt first and best.pt after it, so a kill between the two leaves a last.pt whose
        best epoch is its own epoch while best.pt holds an older one (or a half-written
        temporary): last.pt then *is* the best state, and is copied. Any other disagreement
        cannot come from a kill of this code and is an error."""
        best_epoch = (state.get("best") or {}).get("best_epoch")
        if best_epoch is None:
            return
        best, last = self.run_dir / BEST, self.run_dir / LAST
        held = checkpoint_epoch(best)
        if held == best_epoch:
            return
        if int(state["epoch"]) == int(best_epoch):
            atomic_copy(last, best)
            print(f"[resume] {best} held epoch {held}, {last} selects its own epoch {best_epoch} "
                  "(the run stopped between the two writes): best.pt rewritten from last.pt", flush=True)
            return
        raise CheckpointError(
            f"{best} holds epoch {held} but {last} (epoch {state['epoch']}) selects epoch {best_epoch}; the "
            "selected weights are gone, so the run cannot report a consistent selection: start it over "
            "with run.resume=false (or another run.name)"
        )

    def save(self, state: Mapping[str, Any], *, epoch: int, metric: float | None = None) -> bool:
        """Write last.pt (always) and best.pt (when ``metric`` improves); rank 0 only.

        last.pt is the one atomic record that decides: model state, the best tracker and the
        selected epoch. It is written first; best.pt, a copy of it made when the epoch became
        the best, second. Whatever instant a kill comes, the next :meth:`resume_or_none`
        finds a last.pt whose selection best.pt holds, or repairs it (:meth:`repair_best`).
        Returns whether this epoch became the best.
        """
        improved = metric is not None and self.best.update(metric, epoch)
        if self.dist.is_main:
            data = dict(state)
            data.update(epoch=epoch, rng=rng_state(), best=self.best.state_dict())
            save_checkpoint(data, self.run_dir / LAST)
            if improved:
                atomic_copy(self.run_dir / LAST, self.run_dir / BEST)
        return improved

    def finish(self) -> None:
        self.logger.close()


def start_run(cfg: Any, *, stage: str, tensorboard: bool = True) -> RunContext:
    """Seed, pick the device, create <paths.runs>/<stage>/<run.name>, write the resolved config.

    The best tracker's direction is the task's (fit sets it from ``task.selection``)."""
    dist = init_runtime(cfg.run.device)
    seed_everything(cfg.run.seed, rank=dist.rank, deterministic=cfg.run.deterministic)
    run_dir = run_dir_for(cfg.paths.runs, stage, cfg.run.name)
    if cfg.run.resume:
        check_resumable(run_dir, cfg)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Half-written files of a killed run (atomic_write's temporaries) are never read: clear them.
        remove_stale_temporaries(run_dir)
        write_run_config(cfg, run_dir)
    logger = MetricLogger(run_dir, enabled=dist.is_main, tensorboard=tensorboard)
    return RunContext(run_dir=run_dir, dist=dist, logger=logger, resume=cfg.run.resume)
