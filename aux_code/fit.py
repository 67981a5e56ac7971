"""The one training loop of the project: ``fit(task, ctx)``.

Every training (stage 1's utility / identity / budget / minimax, stage 2's target model and
probe, stage 4's MGFN, and every detector or anonymizer added later) is a :class:`Task`:
the task owns its models, optimizers, batches, train step and validation; the loop owns
everything they share::

    for epoch in range(resumed_epoch, task.epochs):
        schedule.start_epoch(epoch)                       # the task's lr schedule, if any
        for step, batch in enumerate(task.batches(epoch)):
            terms = task.train_step(batch, stepper)        # the task calls stepper.update(...)
        if validation is due:
            metrics = task.validate(epoch + 1)             # select on task.selection (never a test set)
        save last.pt (+ best.pt), log metrics.jsonl / TensorBoard
    load best.pt; results = task.finish(...)              # test metrics of the selected epoch
    write results.json (one schema: selection, epochs, precision, config hash + the task's part)

The :class:`Stepper` is the only place where a loss is checked for non-finite values (naming
the stage, step, minimax half and every term), scaled for fp16, backpropagated and stepped.
Under torchrun every rank runs the loop: training metrics are all-reduced means, validation
metrics are rank 0's (broadcast, so every rank selects, schedules and stops alike), rank 0 alone
writes; how a task shards its batches and wraps its models is the task's (aux_code.runtime's
data-parallel helpers). results.json records ``world_size``.

Checkpoints are plain data: ``models`` (stored-model records, aux_code.models.stored),
``optimizers``, ``scalers``, ``schedule``, ``task_state``, ``history``, ``config``, ``task``,
``epoch``, RNG states and the selection state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sized

import torch
from torch import nn

from aux_code.checkpoint import CheckpointError, atomic_write_json, load_checkpoint, load_state_dict_strict
from aux_code.config import experiment_hash, to_dict
from aux_code.datasets import DatasetError, dataset_digests
from aux_code.models.stored import pack_model
from aux_code.precision import Precision
from aux_code.runtime import all_reduce_mean, broadcast_metrics
from aux_code.schedule import Schedule
from aux_code.training import BEST, LAST, RunContext, check_finite


@dataclass(frozen=True)
class Selection:
    """Which validation value picks the reported epoch. ``metric`` is a key of validate()'s dict."""

    metric: str
    mode: Literal["max", "min"]
    rule: str


@dataclass(frozen=True)
class StoredModel:
    """A model the checkpoint stores as a record that later stages rebuild (aux_code.models.stored)."""

    kind: str
    spec: Mapping[str, Any]
    module: nn.Module


class Stepper:
    """Backward and optimiser steps for a task, under the run's precision (one scaler per name)."""

    def __init__(self, precision: Precision, *, stage: str) -> None:
        self.precision = precision
        self.stage = stage
        self.step = 0
        self.scalers: dict[str, torch.amp.GradScaler] = {}

    def autocast(self):
        return self.precision.autocast()

    def check(self, terms: Mapping[str, torch.Tensor | float], *, half: str = "") -> None:
        where = self.stage + (f" ({half} step)" if half else "")
        check_finite(self.step, terms, where=where)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *, name: str = "model") -> None:
        """Backpropagate ``loss`` and step ``optimizer`` (gradients must have been zeroed by the caller)."""
        self.accumulate(loss, name=name)
        self.step_optimizer(optimizer, name=name)

    def accumulate(self, loss: torch.Tensor, *, name: str = "model") -> None:
        """Backpropagate ``loss`` into the gradients (under ``name``'s loss scaler), without a step:
        several calls, then one ``step_optimizer``, sum the gradients of several micro-batches."""
        if name not in self.scalers:
            scaler = self.precision.scaler()
            if scaler is None:
                loss.backward()
                return
            self.scalers[name] = scaler
        self.scalers[name].scale(loss).backward()

    def step_optimizer(self, optimizer: torch.optim.Optimizer, *, name: str = "model") -> None:
        """Step ``optimizer`` on the accumulated gradients (unscaled, skipped on inf, as GradScaler does)."""
        scaler = self.scalers.get(name)
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)
        scaler.update()

    def update(self, terms: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer, *, half: str = "",
               name: str = "model") -> dict[str, float]:
        """check + zero_grad + backward(terms["loss"]) + step; returns the terms as floats."""
        self.check(terms, half=half)
        optimizer.zero_grad(set_to_none=True)
        self.backward(terms["loss"], optimizer, name=name)
        return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}

    def state_dict(self) -> dict:
        return {k: s.state_dict() for k, s in self.scalers.items()}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        for k, sd in d.items():
            scaler = self.precision.scaler()
            if scaler is not None:
                scaler.load_state_dict(sd)
                self.scalers[k] = scaler


class Task:
    """What fit() needs of a training; subclasses set the attributes and override the methods.

    ``selection`` None means there is no validation split: the last epoch is reported.
    """

    name: str = "task"
    epochs: int = 1
    eval_every: int = 1
    selection: Selection | None = None
    schedule: Schedule | None = None

    def models(self) -> dict[str, StoredModel]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def task_state(self) -> dict:
        """Plain data the task needs to resume (generators, reference metrics)."""
        return {}

    def load_task_state(self, state: Mapping[str, Any]) -> None:
        """Restore task_state(); raise when the checkpoint belongs to other data."""

    def start(self) -> None:
        """Fresh runs only, before the first epoch (e.g. the minimax's epoch-0 validation)."""

    def batches(self, epoch: int) -> Sized | Iterable:
        raise NotImplementedError

    def train_step(self, batch: Any, stepper: Stepper) -> Mapping[str, float]:
        raise NotImplementedError

    def validate(self, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def should_stop(self) -> bool:
        """Early stopping: asked before every epoch after the first (default: never; e.g. the DP autoencoder's patience)."""
        return False

    def score(self, metrics: Mapping[str, float]) -> float:
        """The selection value of one validation (default: the selection metric)."""
        assert self.selection is not None
        return float(metrics[self.selection.metric])

    def finish(self, selected: Mapping[str, Any]) -> dict:
        """After the selected models are loaded: the task's part of results.json (test metrics).

        ``selected`` is the history record of the selected epoch ("epoch", "train_*", "val_*")."""
        return {}


def _means(records: list[Mapping[str, float]], distributed: bool) -> dict[str, float]:
    if not records:
        return {}
    keys = sorted(records[0])
    means = torch.tensor([sum(r[k] for r in records) / len(records) for k in keys], dtype=torch.float64)
    if distributed:
        means = all_reduce_mean(means.float()).double()
    return {k: float(v) for k, v in zip(keys, means)}


def dataset_files(cfg: Any) -> dict[str, dict[str, str]]:
    """``{paths key: {file relative to the root: digest}}`` of the list / annotation / label files of
    every dataset root the run's config requires (aux_code.datasets.dataset_digests)."""
    keys = cfg.required_paths() if hasattr(cfg, "required_paths") and hasattr(cfg, "paths") else []
    out = {}
    for key in keys:
        try:
            out[key] = dataset_digests(key, getattr(cfg.paths, key))
        except (DatasetError, OSError):
            continue  # the stage's own reader reports a broken root, with its own message
    return out


def _changed_files(before: Mapping[str, Mapping[str, str]], now: Mapping[str, Mapping[str, str]]) -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key, {}), now.get(key, {})
        for f in sorted(set(old) | set(new)):
            if old.get(f) != new.get(f):
                state = "removed" if f not in new else "added" if f not in old else "changed"
                out.append(f"paths.{key}/{f} ({state})")
    return out


def _checkpoint(task: Task, stepper: Stepper, history: list[dict], cfg: Any, files: Mapping[str, Any]) -> dict:
    return {
        "models": {k: pack_model(m.kind, m.spec, m.module) for k, m in task.models().items()},
        "optimizers": {k: o.state_dict() for k, o in task.optimizers().items()},
        "scalers": stepper.state_dict(),
        "schedule": task.schedule.state_dict() if task.schedule is not None else {},
        "task_state": task.task_state(),
        "history": history,
        "config": to_dict(cfg),
        "task": task.name,
        "dataset_files": dict(files),
    }


def load_models(task: Task, state: Mapping[str, Any], *, source: str) -> None:
    """Load every model of ``task`` strictly from a checkpoint's ``models`` records."""
    held = state.get("models", {})
    for key, m in task.models().items():
        if key not in held:
            raise CheckpointError(f"{source} holds no model {key!r}; it holds: {', '.join(sorted(held)) or 'none'}")
        load_state_dict_strict(m.module, held[key]["state_dict"], source=f"{source} [models][{key}]")


def _resume(task: Task, stepper: Stepper, ctx: RunContext, files: Mapping[str, Any]) -> tuple[int, list[dict]]:
    state = ctx.resume_or_none()
    if state is None:
        return 0, []
    source = f"resume checkpoint {ctx.run_dir / LAST}"
    if state.get("task") != task.name:
        raise CheckpointError(f"{source} was written by task {state.get('task')!r}, not {task.name!r}; "
                              "use another run.name or run.resume=false")
    # Epochs trained on other labels than the ones the run would finish with are no result of either.
    changed = _changed_files(state.get("dataset_files", files), files)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise CheckpointError(f"{source}: dataset files changed since the run started: {shown}; its epochs so far "
                              "were trained on the old ones: use another run.name or run.resume=false")
    task.load_task_state(state.get("task_state", {}))
    load_models(task, state, source=source)
    for k, opt in task.optimizers().items():
        opt.load_state_dict(state["optimizers"][k])
    stepper.load_state_dict(state.get("scalers", {}))
    if task.schedule is not None:
        task.schedule.load_state_dict(state["schedule"])
    epoch = int(state["epoch"])
    if ctx.dist.is_main:
        print(f"[{stepper.stage}] resuming {ctx.run_dir} after epoch {epoch}/{task.epochs}", flush=True)
    return epoch, list(state["history"])


def _train_epoch(task: Task, stepper: Stepper, ctx: RunContext, epoch: int, log_every: int) -> dict[str, float]:
    batches = task.batches(epoch)
    n = len(batches) if isinstance(batches, Sized) else None
    records = []
    for i, batch in enumerate(batches):
        # The global step is the same whether the run was resumed or not.
        stepper.step = epoch * n + i + 1 if n is not None else len(records) + 1
        records.append(task.train_step(batch, stepper))
        if log_every and (i + 1) % log_every == 0:
            ctx.logger.log(stepper.step, records[-1], phase="train")
    if not records:
        raise ValueError(f"{stepper.stage}: epoch {epoch + 1} of task {task.name} had no training batch")
    return _means(records, ctx.dist.distributed)


def fit(task: Task, ctx: RunContext, *, cfg: Any, stage: str, precision: Precision, log_every: int = 0) -> dict:
    """Train ``task`` to ``task.epochs`` (resuming from last.pt), select, finish; returns results.json's dict."""
    stepper = Stepper(precision, stage=stage)
    if task.selection is not None:
        ctx.best.mode = task.selection.mode
    files = dataset_files(cfg)
    start_epoch, history = _resume(task, stepper, ctx, files)
    if start_epoch == 0 and not history:
        task.start()
    for epoch in range(start_epoch, task.epochs):
        # Asked before each epoch, so a rerun of an early-stopped run does not train on.
        if history and task.should_stop():
            if ctx.dist.is_main:
                print(f"[{stage}] {task.name}: stopped early after epoch {epoch}", flush=True)
            break
        started = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1}
        if task.schedule is not None:
            record["lr"] = task.schedule.start_epoch(epoch)
        record.update({f"train_{k}": v for k, v in _train_epoch(task, stepper, ctx, epoch, log_every).items()})
        value = None
        if task.selection is not None and ((epoch + 1) % task.eval_every == 0 or epoch + 1 == task.epochs):
            metrics = task.validate(epoch + 1)
            if ctx.dist.distributed:
                metrics = broadcast_metrics(metrics)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            value = task.score(metrics)
            record["val_selection_score"] = value
            if task.schedule is not None:
                task.schedule.observe(value, epoch)
        record["epoch_time_s"] = time.perf_counter() - started
        history.append(record)
        ctx.logger.log(epoch + 1, record, phase="epoch")
        ctx.save(_checkpoint(task, stepper, history, cfg, files), epoch=epoch + 1, metric=value)
        if ctx.dist.is_main and value is not None:
            own_score = type(task).score is not Task.score  # else val_selection_score repeats the metric
            shown = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith(("val_", "train_loss"))
                              and (own_score or k != "val_selection_score"))
            print(f"[{stage}] {task.name} epoch {epoch + 1}/{task.epochs}: {shown}", flush=True)
    if ctx.dist.distributed:
        torch.distributed.barrier()  # rank 0 has written best.pt / last.pt before anyone reads them
    return _finish(task, ctx, cfg=cfg, history=history, precision=precision)


def _finish(task: Task, ctx: RunContext, *, cfg: Any, history: list[dict], precision: Precision) -> dict:
    selected = BEST if task.selection is not None else LAST
    state = load_checkpoint(ctx.run_dir / selected, what="selected checkpoint")
    load_models(task, state, source=f"selected checkpoint {ctx.run_dir / selected}")
    epoch = int(state["epoch"])
    expected = ctx.best.best_epoch if task.selection is not None else history[-1]["epoch"]
    if epoch != expected:
        # Reporting one epoch's score with another epoch's weights is the error this guards against.
        raise CheckpointError(f"selected checkpoint {ctx.run_dir / selected} holds epoch {epoch}, but the run's selection "
                              f"(last.pt) is epoch {expected}; start the run over with run.resume=false")
    chosen = next(h for h in history if h["epoch"] == epoch)
    strip = lambda h: {k[4:]: v for k, v in h.items() if k.startswith("val_")}  # noqa: E731
    results: dict[str, Any] = {
        "run": cfg.run.name,
        "run_dir": str(ctx.run_dir),
        "task": task.name,
        "selection": {
            "metric": None if task.selection is None else f"val_{task.selection.metric}",
            "mode": None if task.selection is None else task.selection.mode,
            "value": None if task.selection is None else ctx.best.best,
            "epoch": epoch,
            "checkpoint": selected,
            "rule": "last epoch (no validation split)" if task.selection is None else task.selection.rule,
        },
        "selected": strip(chosen),
        "last": strip(history[-1]),
        "epochs": task.epochs,
        "precision": precision.name,
        "config_hash": experiment_hash(cfg),
        "world_size": ctx.dist.world_size,
    }
    results.update(task.finish(chosen))
    if ctx.dist.is_main:
        atomic_write_json(ctx.run_dir / "results.json", results)
    return results
