"""Stage 1: ``run(cfg)`` trains one of fT (utility_pretrain), fA as identity (identity),
fB with SimCLR (budget_ssl), or the three adversarially (minimax, Algorithm 1).

Every task writes ``<paths.runs>/anonymization/<run.name>/`` with last.pt (every epoch),
best.pt (the selected epoch), metrics.jsonl, TensorBoard events and, as its last action,
results.json. Checkpoints hold the models as :func:`aux_code.models.stored.pack_model`
records under ``ckpt["models"]`` (utility / anonymizer / budget / + embedding for minimax).
Rerunning the same command resumes from last.pt at the epoch boundary; a finished run only
rewrites its results.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sized

import torch
from torch import nn
from torchvision.utils import make_grid, save_image

from anonymization_training.config import AnonymizationConfig
from anonymization_training.data import (
    STREAM_ACTION,
    STREAM_FRAMES,
    STREAM_PRIVACY,
    ActionClips,
    EvalClips,
    EvalFrames,
    EvalImages,
    IdentityFrames,
    ImageSource,
    ImageViews,
    StageDataError,
    VideoSource,
    epoch_batches,
    eval_transform,
    eval_view_keys,
    load_action_splits,
    load_privacy_splits,
    loader,
    train_transform,
)
from anonymization_training.steps import (
    LossWeights,
    MinimaxModels,
    Precision,
    adversary_step,
    anonymize_views,
    anonymizer_step,
    backward_step,
    budget_terms,
)
from aux_code.checkpoint import CheckpointError, atomic_write_json, load_state_dict_strict
from aux_code.config import ConfigError, config_hash
from aux_code.models import anonymize_clip, build_anonymizer, build_budget, build_embedding_head, build_utility
from aux_code.models.stored import load_stored_model, pack_model
from aux_code.training import BEST, LAST, RunContext, check_finite, plain_config, start_run

STAGE = "anonymization"


# --------------------------------------------------------------------------- models


def fresh_anonymizer(cfg: AnonymizationConfig) -> tuple[nn.Module, dict]:
    spec: dict[str, Any] = {"name": cfg.model.anonymizer}
    if cfg.model.anonymizer_width is not None and cfg.model.anonymizer != "identity":
        spec["width"] = cfg.model.anonymizer_width
    return build_anonymizer(**spec), spec


def fresh_utility(cfg: AnonymizationConfig, num_classes: int) -> tuple[nn.Module, dict]:
    arch: dict[str, Any] = {}
    if cfg.model.utility.startswith("i3d_r50"):
        arch["dropout"] = cfg.model.utility_dropout
    weights = cfg.weights_path(cfg.model.utility_weights)
    if weights is not None and not weights.is_file():
        raise CheckpointError(f"utility weights (model.utility_weights) {weights} does not exist")
    model = build_utility(name=cfg.model.utility, num_classes=num_classes, weights=weights, reset_head=weights is not None, **arch)
    spec = {"name": cfg.model.utility, "num_classes": num_classes, **arch}
    if hasattr(model, "stem_variant"):
        spec["stem"] = model.stem_variant  # the weights decide the stem; the spec must rebuild it
    return model, spec


def fresh_budget(cfg: AnonymizationConfig) -> tuple[nn.Module, dict]:
    weights = cfg.weights_path(cfg.model.budget_weights)
    if weights is not None and not weights.is_file():
        raise CheckpointError(f"budget weights (model.budget_weights) {weights} does not exist")
    return build_budget(name=cfg.model.budget, weights=weights), {"name": cfg.model.budget}


def embedding_spec(cfg: AnonymizationConfig, feature_dim: int) -> dict:
    hidden = cfg.model.embedding_hidden or max(feature_dim // 4, 1)
    return {"in_dim": feature_dim, "hidden_dim": hidden, "out_dim": cfg.model.embedding_dim}


def feature_dim_of(model: nn.Module) -> int:
    dim = getattr(model, "feature_dim", None)
    if not isinstance(dim, int):
        raise ValueError(f"utility model {type(model).__name__} does not expose feature_dim")
    return dim


# --------------------------------------------------------------------------- evaluation


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_action(anonymizer: nn.Module | None, utility: nn.Module, data: Iterable, *, num_videos: int,
                    device: torch.device, precision: Precision) -> dict[str, float]:
    """Video-level top-1 (clip logits averaged per video) of fT(fA(clip)); fA None = raw clips."""
    utility.eval()
    if anonymizer is not None:
        anonymizer.eval()
    sums: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    for batch in data:
        batch = _to(batch, device)
        clips = batch["clip"]
        with precision.autocast():
            if anonymizer is not None:
                clips = anonymize_clip(anonymizer, clips)
            logits, _ = utility(clips)
        for row, video, label in zip(logits.float().cpu(), batch["video"].tolist(), batch["label"].tolist()):
            sums[video] = sums.get(video, 0) + row
            labels[video] = label
    if len(sums) != num_videos:
        raise RuntimeError(f"evaluation saw {len(sums)} of {num_videos} videos")
    correct = sum(int(sums[v].argmax()) == labels[v] for v in sums)
    return {"top1": correct / num_videos, "videos": num_videos}


@torch.no_grad()
def evaluate_budget(anonymizer: nn.Module | None, budget: nn.Module, data: Iterable, *, temperature: float,
                    device: torch.device, precision: Precision) -> dict[str, float]:
    """NT-Xent loss and accuracy of fB(fA(views)) over fixed chunks; means weighted by chunk size."""
    budget.eval()
    if anonymizer is not None:
        anonymizer.eval()
    total_loss = total_acc = 0.0
    count = 0
    for batch in data:
        batch = _to(batch, device)
        if batch["view1"].shape[0] < 2:
            # _eval_view_loader folds a 1-image tail into the chunk before it; never drop one silently.
            raise ValueError("evaluate_budget: a chunk of 1 image has no NT-Xent negatives; chunks need >= 2 images")
        if anonymizer is not None:
            v1, v2 = anonymize_views(anonymizer, batch, precision=precision)
        else:
            v1, v2 = batch["view1"], batch["view2"]
        result = budget_terms(budget, v1, v2, temperature=temperature, precision=precision)
        n = v1.shape[0]
        total_loss += float(result.loss) * n
        total_acc += float(result.accuracy) * n
        count += n
    return {"loss": total_loss / count, "acc": total_acc / count}


@torch.no_grad()
def evaluate_l1(anonymizer: nn.Module, data: Iterable, *, device: torch.device, precision: Precision) -> float:
    anonymizer.eval()
    total, count = 0.0, 0
    for batch in data:
        x = batch["image"].to(device)
        with precision.autocast():
            y = anonymizer(x).float()
        total += float((y - x).abs().mean(dim=(1, 2, 3)).sum())
        count += x.shape[0]
    return total / count


@torch.no_grad()
def save_grid(anonymizer: nn.Module, images: torch.Tensor, ctx: RunContext, epoch: int, *, precision: Precision) -> Path | None:
    """Originals (top row) over fA's outputs (bottom row): TensorBoard image + grids/epoch_NNN.png."""
    if images.shape[0] == 0:
        return None
    anonymizer.eval()
    x = images.to(ctx.device)
    with precision.autocast():
        y = anonymizer(x).float()
    tiles = torch.cat([x, y.clamp(0, 1)]).cpu()
    if tiles.shape[-1] < 96:  # small model inputs (the synthetic world's 32 px) are enlarged to be seen
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=96 // tiles.shape[-1], mode="nearest")
    grid = make_grid(tiles, nrow=x.shape[0], padding=2, pad_value=1.0)
    ctx.logger.image("anonymizer/originals_over_outputs", grid, epoch)
    path = ctx.run_dir / "grids" / f"epoch_{epoch:03d}.png"
    if ctx.dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
    return path


# --------------------------------------------------------------------------- common plumbing


def write_results(run_dir: Path, results: dict) -> None:
    atomic_write_json(run_dir / "results.json", results)


def lr_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up: epoch e (0-based) runs at (e + 1) / (warmup + 1) of the base lr until warm."""
    return min(1.0, (epoch + 1) / (warmup_epochs + 1)) if warmup_epochs > 0 else 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _log(ctx: RunContext, text: str) -> None:
    if ctx.dist.is_main:
        print(f"[anonymization] {text}", flush=True)


def _mean(records: list[dict[str, float]]) -> dict[str, float]:
    keys = records[0].keys() if records else []
    return {k: sum(r[k] for r in records) / len(records) for k in keys}


def _resume_state(ctx: RunContext, cfg: AnonymizationConfig) -> dict | None:
    """last.pt of this run directory, refused when it was written by another task."""
    state = ctx.resume_or(None)
    if state is not None and state.get("task") != cfg.task:
        raise CheckpointError(
            f"resume checkpoint {ctx.run_dir / LAST} was written by task {state.get('task')!r}, not {cfg.task!r}; "
            "use another run.name or run.resume=false"
        )
    return state


@dataclass
class SingleTask:
    """One model trained alone: what differs between utility_pretrain, identity and budget_ssl."""

    key: str                     # model key in ckpt["models"]
    kind: str                    # registry kind
    model: nn.Module
    spec: dict
    select_metric: str           # key of validate()'s dict
    select_mode: str             # "max" | "min"
    batches: Callable[[int], Sized]                      # epoch -> training batches (a DataLoader)
    loss: Callable[[dict, int], dict[str, torch.Tensor]]  # (batch, step) -> terms incl. "loss"
    validate: Callable[[int], dict[str, float]]          # epoch -> validation metrics
    final: Callable[[nn.Module], dict] = lambda m: {}    # extra results from the selected model


def run_single(cfg: AnonymizationConfig, ctx: RunContext, task: SingleTask) -> dict:
    """The epoch loop of the single-model tasks: warm-up, plateau halving, validation, selection, resume."""
    model = task.model.to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    precision = Precision(cfg.optim.amp, ctx.device)
    scaler = precision.scaler()
    sched = {"scale": 1.0, "bad_epochs": 0}
    history: list[dict] = []
    start_epoch = 0
    state = _resume_state(ctx, cfg)
    if state is not None:
        load_state_dict_strict(model, state["models"][task.key]["state_dict"], source=f"resume checkpoint {ctx.run_dir / LAST}")
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        sched, history, start_epoch = dict(state["schedule"]), list(state["history"]), int(state["epoch"])
        _log(ctx, f"resuming {ctx.run_dir} after epoch {start_epoch}/{cfg.optim.epochs}")
    for epoch in range(start_epoch, cfg.optim.epochs):
        started = time.perf_counter()
        set_lr(optimizer, cfg.optim.lr * lr_factor(epoch, cfg.optim.warmup_epochs) * sched["scale"])
        model.train()
        records = []
        batches = task.batches(epoch)
        for i, batch in enumerate(batches):
            step = epoch * len(batches) + i + 1  # global step: the same whether resumed or not
            terms = task.loss(_to(batch, ctx.device), step)
            check_finite(step, terms)
            optimizer.zero_grad(set_to_none=True)
            backward_step(terms["loss"], optimizer, scaler)
            records.append({k: float(v.detach()) for k, v in terms.items()})
            if cfg.run.log_every and (i + 1) % cfg.run.log_every == 0:
                ctx.logger.log(step, records[-1], phase="train")
        if not records:
            raise StageDataError(f"epoch {epoch} of task {cfg.task} had no training batch")
        train_metrics = _mean(records)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                                   **{f"train_{k}": v for k, v in train_metrics.items()}}
        metric = None
        if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs:
            val = task.validate(epoch + 1)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metric = val[task.select_metric]
        metrics["epoch_time_s"] = time.perf_counter() - started
        ctx.logger.log(epoch + 1, metrics, phase="epoch")
        history.append(metrics)
        best = ctx.best.best
        improved = metric is not None and (best is None or (metric > best if task.select_mode == "max" else metric < best))
        if metric is not None and cfg.optim.plateau_patience > 0:
            sched["bad_epochs"] = 0 if improved else sched["bad_epochs"] + cfg.eval.every
            if sched["bad_epochs"] >= cfg.optim.plateau_patience:
                sched["scale"] *= cfg.optim.plateau_factor
                sched["bad_epochs"] = 0
        ctx.save(
            {
                "models": {task.key: pack_model(task.kind, task.spec, model)},
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "schedule": sched,
                "history": history,
                "config": plain_config(cfg),
                "task": cfg.task,
            },
            epoch=epoch + 1,
            metric=metric,
        )
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "lr")
        _log(ctx, f"{cfg.task} epoch {epoch + 1}/{cfg.optim.epochs}: {shown}")
    best_epoch = ctx.best.best_epoch
    selected = next(h for h in history if h["epoch"] == best_epoch)
    best_model, _ = load_stored_model(ctx.run_dir / BEST, task.key)
    results = {
        "task": cfg.task,
        "selected_epoch": best_epoch,
        "selection": {"metric": f"val_{task.select_metric}", "mode": task.select_mode, "value": ctx.best.best},
        "selected": {k: v for k, v in selected.items() if k.startswith("val_")},
        "epochs": cfg.optim.epochs,
        **task.final(best_model.to(ctx.device)),
        "config_hash": config_hash(cfg),
    }
    if ctx.dist.is_main:
        write_results(ctx.run_dir, results)
    return results


# --------------------------------------------------------------------------- the single-model tasks


def _augment(cfg: AnonymizationConfig):
    d = cfg.data
    return train_transform(d.size, scale=d.train_crop_scale, jitter_p=d.color_jitter_p, erase_p=d.erase_p)


def _action_data(cfg: AnonymizationConfig, ctx: RunContext, *, test: bool = False):
    d = cfg.data
    splits = load_action_splits(cfg.paths.ucf101, fold=d.action_fold, val_fraction=d.action_val_fraction,
                                val_seed=d.action_val_seed, by=d.action_val_by)
    started = time.perf_counter()
    train = VideoSource(splits.train, cache=d.cache_in_memory)
    val = VideoSource(splits.val, cache=d.cache_in_memory)
    test_source = VideoSource(splits.test, cache=d.cache_in_memory) if test else None
    _log(ctx, f"action set: {len(splits.classes)} classes, {len(train)} train / {len(val)} val"
              + (f" / {len(splits.test)} test" if test else "") + f" videos ({time.perf_counter() - started:.1f} s to index"
              + (" and decode" if d.cache_in_memory else "") + ")")
    return splits, train, val, test_source


def _eval_clip_loader(cfg: AnonymizationConfig, source: VideoSource) -> tuple[Any, int]:
    d = cfg.data
    ds = EvalClips(source, eval_transform(d.size, scale=d.crop_scale), clip_len=d.clip_len, skip=d.skip,
                   clips_per_video=cfg.eval.clips_per_video)
    return loader(ds, batch_size=cfg.optim.batch_size, num_workers=cfg.run.num_workers), len(source)


def budget_chunks(keys: list, size: int) -> list[list]:
    """Consecutive chunks of ``size`` keys; a 1-key tail joins the chunk before it (no NT-Xent
    negatives alone), so every validation image is counted."""
    chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        tail = chunks.pop()
        chunks[-1] = chunks[-1] + tail
    return chunks


def _eval_view_loader(cfg: AnonymizationConfig, images: ImageSource):
    ds = ImageViews(images, _augment(cfg))
    keys = eval_view_keys(len(images), seed=cfg.run.seed)
    chunks = budget_chunks(keys, cfg.eval.budget_batch)
    return loader(ds, batches=chunks, num_workers=cfg.run.num_workers)


def _steps(cfg: AnonymizationConfig, n_items: int, batch_size: int, *, per_step: int = 1) -> int:
    """Steps per epoch; raises before training when the split cannot fill one batch."""
    if n_items < batch_size:
        raise StageDataError(f"{n_items} training item(s) cannot fill one batch of {batch_size}")
    if cfg.optim.steps_per_epoch is not None:
        return cfg.optim.steps_per_epoch
    steps = n_items // (batch_size * per_step)
    if steps < 1:
        raise StageDataError(f"{n_items} training item(s) cannot fill {per_step} batch(es) of {batch_size}")
    return steps


def task_utility_pretrain(cfg: AnonymizationConfig, ctx: RunContext) -> dict:
    d = cfg.data
    splits, train, val, test = _action_data(cfg, ctx, test=True)
    assert test is not None
    model, spec = fresh_utility(cfg, len(splits.classes))
    ds = ActionClips(train, _augment(cfg), clip_len=d.clip_len, skip=d.skip)
    steps = _steps(cfg, len(train), cfg.optim.batch_size)
    precision = Precision(cfg.optim.amp, ctx.device)
    val_loader, n_val = _eval_clip_loader(cfg, val)
    test_loader, n_test = _eval_clip_loader(cfg, test)

    def batches(epoch: int):
        keys = epoch_batches(len(train), batch_size=cfg.optim.batch_size, num_batches=steps, seed=cfg.run.seed,
                             stream=STREAM_ACTION, epoch=epoch)
        return loader(ds, batches=keys, num_workers=cfg.run.num_workers)

    def loss(batch: dict, step: int) -> dict:
        with precision.autocast():
            logits, _ = model(batch["clip"])
        ce = nn.functional.cross_entropy(logits.float(), batch["label"])
        return {"loss": ce, "top1": (logits.argmax(1) == batch["label"]).float().mean().detach()}

    def validate(epoch: int) -> dict:
        return evaluate_action(None, model, val_loader, num_videos=n_val, device=ctx.device, precision=precision)

    def final(best: nn.Module) -> dict:
        test_metrics = evaluate_action(None, best, test_loader, num_videos=n_test, device=ctx.device, precision=precision)
        return {"test_top1": test_metrics["top1"], "test_split": f"testlist0{d.action_fold}",
                "note": "test_top1 is reported only; selection used val_top1 (carved from the train list)"}

    return run_single(cfg, ctx, SingleTask("utility", "utility", model, spec, "top1", "max", batches, loss, validate, final))


def task_identity(cfg: AnonymizationConfig, ctx: RunContext) -> dict:
    d = cfg.data
    _, train, val, _ = _action_data(cfg, ctx)
    p_train, p_val = load_privacy_splits(cfg.paths.vispr, val_fraction=d.privacy_val_fraction, val_seed=d.privacy_val_seed)
    images_train, images_val = ImageSource(p_train, cache=d.cache_in_memory), ImageSource(p_val, cache=d.cache_in_memory)
    model, spec = fresh_anonymizer(cfg)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model.anonymizer = {cfg.model.anonymizer!r} has no parameters to train")
    ds = IdentityFrames(train, images_train, _augment(cfg), frames_per_video=d.frames_per_video)
    steps = _steps(cfg, len(ds), cfg.optim.batch_size)
    precision = Precision(cfg.optim.amp, ctx.device)
    ev = eval_transform(d.size, scale=d.crop_scale)
    val_loader = loader(EvalFrames(val, images_val, ev), batch_size=cfg.optim.batch_size, num_workers=cfg.run.num_workers)
    grid = _grid_images(cfg, images_val)

    def batches(epoch: int):
        keys = epoch_batches(len(ds), batch_size=cfg.optim.batch_size, num_batches=steps, seed=cfg.run.seed,
                             stream=STREAM_FRAMES, epoch=epoch)
        return loader(ds, batches=keys, num_workers=cfg.run.num_workers)

    def loss(batch: dict, step: int) -> dict:
        x = batch["image"]
        with precision.autocast():
            y = model(x).float()
        return {"loss": (y - x).abs().mean()}

    def validate(epoch: int) -> dict:
        save_grid(model, grid, ctx, epoch, precision=precision)
        return {"l1": evaluate_l1(model, val_loader, device=ctx.device, precision=precision)}

    return run_single(cfg, ctx, SingleTask("anonymizer", "anonymizer", model, spec, "l1", "min", batches, loss, validate))


def task_budget_ssl(cfg: AnonymizationConfig, ctx: RunContext) -> dict:
    d = cfg.data
    p_train, p_val = load_privacy_splits(cfg.paths.vispr, val_fraction=d.privacy_val_fraction, val_seed=d.privacy_val_seed)
    images_train, images_val = ImageSource(p_train, cache=d.cache_in_memory), ImageSource(p_val, cache=d.cache_in_memory)
    model, spec = fresh_budget(cfg)
    ds = ImageViews(images_train, _augment(cfg))
    steps = _steps(cfg, len(images_train), cfg.optim.image_batch_size)
    precision = Precision(cfg.optim.amp, ctx.device)
    val_loader = _eval_view_loader(cfg, images_val)

    def batches(epoch: int):
        keys = epoch_batches(len(images_train), batch_size=cfg.optim.image_batch_size, num_batches=steps,
                             seed=cfg.run.seed, stream=STREAM_PRIVACY, epoch=epoch)
        return loader(ds, batches=keys, num_workers=cfg.run.num_workers)

    def loss(batch: dict, step: int) -> dict:
        result = budget_terms(model, batch["view1"], batch["view2"], temperature=cfg.loss.temperature, precision=precision)
        return {"loss": result.loss, "acc": result.accuracy.detach()}

    def validate(epoch: int) -> dict:
        return evaluate_budget(None, model, val_loader, temperature=cfg.loss.temperature, device=ctx.device, precision=precision)

    return run_single(cfg, ctx, SingleTask("budget", "budget", model, spec, "loss", "min", batches, loss, validate))


def _grid_images(cfg: AnonymizationConfig, images: ImageSource) -> torch.Tensor:
    """The first eval.grid_images validation images under the eval crop: (k, 3, size, size)."""
    k = min(cfg.eval.grid_images, len(images))
    if k == 0:
        return torch.zeros(0, 3, cfg.data.size, cfg.data.size)
    ds = EvalImages(images, eval_transform(cfg.data.size, scale=cfg.data.crop_scale))
    return torch.stack([ds[i]["image"] for i in range(k)])


# --------------------------------------------------------------------------- minimax


def load_init_models(cfg: AnonymizationConfig, num_classes: int) -> tuple[MinimaxModels, dict[str, dict]]:
    """fA, fT, fB from the init checkpoints (or fresh when a key is null) and a fresh embedding head."""
    specs: dict[str, dict] = {}
    path = cfg.init_path("anonymizer")
    if path is None:
        anonymizer, specs["anonymizer"] = fresh_anonymizer(cfg)
    else:
        anonymizer, specs["anonymizer"] = load_stored_model(path, "anonymizer", config_key="init.anonymizer")
    path = cfg.init_path("utility")
    if path is None:
        utility, specs["utility"] = fresh_utility(cfg, num_classes)
    else:
        utility, specs["utility"] = load_stored_model(path, "utility", config_key="init.utility")
        held = getattr(utility, "num_classes", num_classes)
        if held != num_classes:
            raise CheckpointError(
                f"utility checkpoint {path} (init.utility) classifies {held} classes; the action set has {num_classes}"
            )
    path = cfg.init_path("budget")
    if path is None:
        budget, specs["budget"] = fresh_budget(cfg)
    else:
        budget, specs["budget"] = load_stored_model(path, "budget", config_key="init.budget")
    specs["embedding"] = embedding_spec(cfg, feature_dim_of(utility))
    embedding = build_embedding_head(**specs["embedding"])
    return MinimaxModels(anonymizer, utility, embedding, budget), specs


def loss_weights(cfg: AnonymizationConfig) -> LossWeights:
    lo = cfg.loss
    return LossWeights(method=lo.method, omega=lo.omega, margin=lo.margin, invariance_temperature=lo.invariance_temperature,
                       temperature=lo.temperature, w_t=lo.w_t, w_b=lo.w_b)


def selection_score(rule: str, metrics: dict[str, float], initial: dict[str, float], max_drop: float) -> float:
    """The minimax selection value of one validation (higher is better); see EvalSection.select."""
    top1, acc = metrics["action_top1"], metrics["budget_acc"]
    if rule == "action_top1":
        return top1
    if rule == "budget_acc":
        return -acc
    # Inside the margin the score is top1 - acc >= -1; outside it is -1 - acc <= -1, so any epoch
    # inside the margin outranks every epoch outside it, and outside ones still prefer lower acc.
    inside = top1 >= initial["action_top1"] - max_drop - 1e-9
    return top1 - acc if inside else -1.0 - acc


def task_minimax(cfg: AnonymizationConfig, ctx: RunContext) -> dict:
    d, o = cfg.data, cfg.optim
    splits, train, val, _ = _action_data(cfg, ctx)
    p_train, p_val = load_privacy_splits(cfg.paths.vispr, val_fraction=d.privacy_val_fraction, val_seed=d.privacy_val_seed)
    images_train, images_val = ImageSource(p_train, cache=d.cache_in_memory), ImageSource(p_val, cache=d.cache_in_memory)
    weights = loss_weights(cfg)
    action_ds = ActionClips(train, _augment(cfg), clip_len=d.clip_len, skip=d.skip, triplet=weights.temporal,
                            negative_distance=cfg.loss.negative_distance, negative_min_gap=cfg.loss.negative_min_gap)
    image_ds = ImageViews(images_train, _augment(cfg))
    if len(images_train) < o.image_batch_size:
        raise StageDataError(f"{len(images_train)} privacy train image(s) cannot fill a batch of {o.image_batch_size}")
    steps = _steps(cfg, len(train), o.batch_size, per_step=2)

    models, specs = load_init_models(cfg, len(splits.classes))
    for m in models.as_dict().values():
        m.to(ctx.device)
    opt_a = torch.optim.Adam(models.anonymizer.parameters(), lr=o.lr_anonymizer, weight_decay=o.weight_decay)
    opt_t = torch.optim.Adam([*models.utility.parameters(), *models.embedding.parameters()], lr=o.lr_utility,
                             weight_decay=o.weight_decay)
    opt_b = torch.optim.Adam(models.budget.parameters(), lr=o.lr_budget, weight_decay=o.weight_decay)
    optimizers = {"anonymizer": opt_a, "utility": opt_t, "budget": opt_b}
    precision = Precision(o.amp, ctx.device)
    scalers = {k: precision.scaler() for k in optimizers}

    val_loader, n_val = _eval_clip_loader(cfg, val)
    view_loader = _eval_view_loader(cfg, images_val)
    grid = _grid_images(cfg, images_val)

    def validate(epoch: int) -> dict[str, float]:
        action = evaluate_action(models.anonymizer, models.utility, val_loader, num_videos=n_val, device=ctx.device,
                                 precision=precision)
        budget = evaluate_budget(models.anonymizer, models.budget, view_loader, temperature=cfg.loss.temperature,
                                 device=ctx.device, precision=precision)
        save_grid(models.anonymizer, grid, ctx, epoch, precision=precision)
        return {"action_top1": action["top1"], "budget_loss": budget["loss"], "budget_acc": budget["acc"]}

    def packed() -> dict:
        kinds = {"anonymizer": "anonymizer", "utility": "utility", "budget": "budget", "embedding": "embedding"}
        return {k: pack_model(kinds[k], specs[k], m) for k, m in models.as_dict().items()}

    history: list[dict] = []
    state = _resume_state(ctx, cfg)
    if state is not None:
        source = f"resume checkpoint {ctx.run_dir / LAST}"
        for k, m in models.as_dict().items():
            load_state_dict_strict(m, state["models"][k]["state_dict"], source=f"{source} [models][{k}]")
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
            if scalers[k] is not None and state["scalers"].get(k):
                scalers[k].load_state_dict(state["scalers"][k])
        initial, history, start_epoch = dict(state["initial"]), list(state["history"]), int(state["epoch"])
        _log(ctx, f"resuming {ctx.run_dir} after epoch {start_epoch}/{o.epochs}")
    else:
        start_epoch = 0
        initial = validate(0)
        initial["epoch"] = 0
        ctx.logger.log(0, initial, phase="val")
        _log(ctx, "minimax epoch 0 (inits, before any step): " + ", ".join(f"{k}={v:.4g}" for k, v in initial.items()))

    for epoch in range(start_epoch, o.epochs):
        started = time.perf_counter()
        action_keys = epoch_batches(len(train), batch_size=o.batch_size, num_batches=2 * steps, seed=cfg.run.seed,
                                    stream=STREAM_ACTION, epoch=epoch)
        image_keys = epoch_batches(len(images_train), batch_size=o.image_batch_size, num_batches=2 * steps,
                                   seed=cfg.run.seed, stream=STREAM_PRIVACY, epoch=epoch)
        action_iter = iter(loader(action_ds, batches=action_keys, num_workers=cfg.run.num_workers))
        image_iter = iter(loader(image_ds, batches=image_keys, num_workers=cfg.run.num_workers))
        step1, step2 = [], []
        for i in range(steps):
            step = (epoch * steps + i) * 2 + 1
            m1 = anonymizer_step(models, opt_a, _to(next(action_iter), ctx.device), _to(next(image_iter), ctx.device),
                                 weights=weights, step=step, precision=precision, scaler=scalers["anonymizer"])
            m2 = adversary_step(models, opt_t, opt_b, _to(next(action_iter), ctx.device), _to(next(image_iter), ctx.device),
                                weights=weights, step=step + 1, precision=precision,
                                scalers=(scalers["utility"], scalers["budget"]))
            step1.append(m1)
            step2.append(m2)
            if cfg.run.log_every and (i + 1) % cfg.run.log_every == 0:
                ctx.logger.log(step, {**{f"step1_{k}": v for k, v in m1.items()}, **{f"step2_{k}": v for k, v in m2.items()}})
        metrics: dict[str, Any] = {"epoch": epoch + 1, **{f"step1_{k}": v for k, v in _mean(step1).items()},
                                   **{f"step2_{k}": v for k, v in _mean(step2).items()}}
        score = None
        if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == o.epochs:
            val_metrics = validate(epoch + 1)
            metrics.update({f"val_{k}": v for k, v in val_metrics.items()})
            score = selection_score(cfg.eval.select, val_metrics, initial, cfg.eval.max_action_drop)
            metrics["val_selection_score"] = score
        metrics["epoch_time_s"] = time.perf_counter() - started
        ctx.logger.log(epoch + 1, metrics, phase="epoch")
        history.append(metrics)
        ctx.save(
            {
                "models": packed(),
                "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
                "scalers": {k: s.state_dict() if s is not None else {} for k, s in scalers.items()},
                "initial": initial,
                "history": history,
                "config": plain_config(cfg),
                "task": cfg.task,
            },
            epoch=epoch + 1,
            metric=score,
        )
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                          if isinstance(v, float) and (k.startswith("val_") or k in ("step1_L_T", "step1_L_B", "epoch_time_s")))
        _log(ctx, f"minimax ({cfg.loss.method}) epoch {epoch + 1}/{o.epochs}: {shown}")

    best_epoch = ctx.best.best_epoch
    selected = next(h for h in history if h["epoch"] == best_epoch)
    strip = lambda m: {k[4:]: v for k, v in m.items() if k.startswith("val_")}  # noqa: E731
    sel = strip(selected)
    results = {
        "task": cfg.task,
        "method": cfg.loss.method,
        "initial": {k: v for k, v in initial.items() if k != "epoch"},
        "selected": sel,
        "selected_epoch": best_epoch,
        "selection": {"rule": cfg.eval.select, "max_action_drop": cfg.eval.max_action_drop,
                      "within_margin": sel["action_top1"] >= initial["action_top1"] - cfg.eval.max_action_drop - 1e-9},
        "last": strip(history[-1]),
        "epochs": o.epochs,
        "precision": precision.name,
        "config_hash": config_hash(cfg),
    }
    if ctx.dist.is_main:
        write_results(ctx.run_dir, results)
    return results


TASKS: dict[str, Callable[[AnonymizationConfig, RunContext], dict]] = {
    "utility_pretrain": task_utility_pretrain,
    "identity": task_identity,
    "budget_ssl": task_budget_ssl,
    "minimax": task_minimax,
}


def check_inits(cfg: AnonymizationConfig) -> None:
    """minimax: every init checkpoint exists, before any data is read."""
    if cfg.task != "minimax":
        return
    for key in ("anonymizer", "utility", "budget"):
        path = cfg.init_path(key)
        if path is not None and not path.is_file():
            raise CheckpointError(
                f"init checkpoint {path} (config key init.{key} = {getattr(cfg.init, key)!r}, relative to "
                f"paths.runs = {cfg.paths.runs}) does not exist; run the {_PRODUCER[key]} task first or set init.{key}"
            )


_PRODUCER = {"anonymizer": "identity", "utility": "utility_pretrain", "budget": "budget_ssl"}


def run(cfg: AnonymizationConfig) -> dict:
    """The stage (task ``cfg.task``). Returns the results dict (also written to results.json)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The minimax alternates three optimisers on small batches; it is not sharded (yet).
        raise ConfigError("anonymization_training runs as a single process; launch it without torchrun")
    check_inits(cfg)
    ctx = start_run(cfg, stage=STAGE, select="min" if cfg.task in ("identity", "budget_ssl") else "max")
    try:
        return TASKS[cfg.task](cfg, ctx)
    finally:
        ctx.finish()
