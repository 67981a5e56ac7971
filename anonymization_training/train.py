"""Stage 1: ``run(cfg)`` trains one of fT (utility_pretrain), fA as identity (identity),
fB with SimCLR (budget_ssl), or the three adversarially (minimax, Algorithm 1).

Every task writes ``<paths.runs>/anonymization/<run.name>/`` with last.pt (every epoch),
best.pt (the selected epoch), metrics.jsonl, TensorBoard events and, as its last action,
results.json. Checkpoints hold the models as :func:`aux_code.models.stored.pack_model`
records under ``ckpt["models"]`` (utility / anonymizer / budget / + embedding for minimax).
Rerunning the same command resumes from last.pt at the epoch boundary; a finished run only
rewrites its results.

Every task also runs under ``torchrun --nproc_per_node N`` (docs/multi_gpu.md): batch sizes are
global, each rank trains on its shard of every global batch (the same batches at any world
size, so a run resumes under another one), the trained models are DistributedDataParallel
wrappers (the minimax: only the models a step updates; :func:`step_views`), BatchNorm and
NT-Xent see the global batch (``ddp.sync_batchnorm``; ``LossWeights.across_ranks``), validation
runs on every rank and rank 0's numbers decide, and rank 0 alone logs and writes files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Sized

import numpy as np
import torch
from torch import nn
from torchvision.utils import make_grid, save_image

from anonymization_training.attacker import AttackerSettings, anonymize_images, fresh_attacker_probe
from anonymization_training.config import AnonymizationConfig
from anonymization_training.data import (
    STREAM_ACTION,
    STREAM_ATTACKER,
    STREAM_BUDGET_INIT,
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
    sample_seed,
    train_transform,
)
from anonymization_training.steps import (
    BudgetRestarts,
    LossWeights,
    MinimaxModels,
    adversary_step,
    anonymize_views,
    anonymizer_step,
    attribute_terms,
    budget_terms,
    member_key,
)
from aux_code.checkpoint import CheckpointError
from aux_code.config import ConfigError
from aux_code.datasets import VISPR, VISPR_ATTRIBUTES
from aux_code.fit import Selection, Stepper, StoredModel, Task, fit
from aux_code.memory import recompute_blocks
from aux_code.models import anonymize_clip, build_anonymizer, build_budget, build_embedding_head, build_target, build_utility
from aux_code.models.stored import load_stored_model
from aux_code.precision import Precision
from aux_code.runtime import broadcast_metrics, check_batches, data_parallel, per_rank_batch, rank_rows
from aux_code.schedule import Schedule
from aux_code.training import RunContext, start_run
from privacy_training.leakage import ssim

STAGE = "anonymization"


# --------------------------------------------------------------------------- models


def fresh_anonymizer(cfg: AnonymizationConfig) -> tuple[nn.Module, dict]:
    m = cfg.model
    spec: dict[str, Any] = {"name": m.anonymizer}
    if m.anonymizer == "bq":
        spec.update(levels=m.anonymizer_levels, temperature=m.anonymizer_temperature, sigma_max=m.anonymizer_sigma_max)
    elif m.anonymizer_width is not None and m.anonymizer != "identity":
        spec["width"] = m.anonymizer_width
    return build_anonymizer(**spec), spec


def fresh_utility(cfg: AnonymizationConfig, num_classes: int) -> tuple[nn.Module, dict]:
    arch: dict[str, Any] = {}
    if cfg.model.utility.startswith("i3d_r50"):
        arch["dropout"] = cfg.model.utility_dropout
        if cfg.model.utility_clip_input is not None:
            arch["clip_input"] = cfg.model.utility_clip_input
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
def evaluate_budget(anonymizer: nn.Module | None, budget: nn.Module, data: Iterable, *, task: str, temperature: float,
                    device: torch.device, precision: Precision) -> dict[str, float]:
    """fB's loss and accuracy on fB(fA(views)) over fixed chunks, means weighted by chunk size:
    NT-Xent agreement for ``task`` "ntxent", BCE and mean attribute accuracy for "attributes"
    (budget.task; the chunks then carry labels)."""
    budget.eval()
    if anonymizer is not None:
        anonymizer.eval()
    total_loss = total_acc = 0.0
    count = 0
    for batch in data:
        batch = _to(batch, device)
        if task == "ntxent" and batch["view1"].shape[0] < 2:
            # _eval_view_loader folds a 1-image tail into the chunk before it; never drop one silently.
            raise ValueError("evaluate_budget: a chunk of 1 image has no NT-Xent negatives; chunks need >= 2 images")
        if anonymizer is not None:
            v1, v2 = anonymize_views(anonymizer, batch, precision=precision)
        else:
            v1, v2 = batch["view1"], batch["view2"]
        if task == "attributes":
            result = attribute_terms(budget, v1, v2, batch["labels"], precision=precision)
        else:
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


# --------------------------------------------------------------------------- the single-model tasks


def _log(ctx: RunContext, text: str) -> None:
    if ctx.dist.is_main:
        print(f"[anonymization] {text}", flush=True)


class SingleModelTask(Task):
    """One model trained alone with Adam and the schedule: utility_pretrain, identity and budget_ssl
    differ only in the model, its batches, its loss, its validation and what is reported at the end."""

    def __init__(self, cfg: AnonymizationConfig, ctx: RunContext, *, key: str, model: nn.Module, spec: dict,
                 selection: Selection, batches: Callable[[int], Sized],
                 loss: Callable[[nn.Module, dict], dict[str, torch.Tensor]],
                 validate: Callable[[int], dict[str, float]], final: Callable[[nn.Module], dict] | None = None,
                 kind: str | None = None) -> None:
        """``loss(net, batch)``: the loss terms of one (per-rank) batch through ``net``, the model or,
        under torchrun, its DistributedDataParallel wrapper; ``validate`` and ``final`` use the model."""
        self.name, self.epochs, self.eval_every, self.selection = cfg.task, cfg.optim.epochs, cfg.eval.every, selection
        self.key, self.kind, self.spec, self.device = key, kind or key, spec, ctx.device
        self.model = model.to(ctx.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.schedule = Schedule(cfg.schedule, lr=cfg.optim.lr, optimizers=[self.optimizer], mode=selection.mode)
        self.train_model = data_parallel(self.model, ctx.dist, sync_bn=cfg.ddp.sync_batchnorm)
        self._batches, self._loss, self._validate, self._final = batches, loss, validate, final

    def models(self) -> dict[str, StoredModel]:
        return {self.key: StoredModel(self.kind, self.spec, self.model)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {self.key: self.optimizer}

    def batches(self, epoch: int) -> Sized:
        self.model.train()
        return self._batches(epoch)

    def train_step(self, batch: dict, stepper: Stepper) -> dict[str, float]:
        return stepper.update(self._loss(self.train_model, _to(batch, self.device)), self.optimizer)

    def validate(self, epoch: int) -> dict[str, float]:
        return self._validate(epoch)

    def finish(self, selected: dict) -> dict:
        return {} if self._final is None else self._final(self.model)



def _augment(cfg: AnonymizationConfig):
    d = cfg.data
    return train_transform(cfg.clip.resolution, scale=d.train_crop_scale, jitter_p=d.color_jitter_p, erase_p=d.erase_p)


def _shard(keys: list[list], ctx: RunContext) -> list[list]:
    """This rank's part of each global batch of (item, sample seed) keys (all of them in one process)."""
    d = ctx.dist
    return keys if not d.distributed else [rank_rows(batch, d.rank, d.world_size) for batch in keys]


def _action_data(cfg: AnonymizationConfig, ctx: RunContext, *, test: bool = False):
    d = cfg.data
    splits = load_action_splits(cfg.paths.ucf101, fold=d.action_fold, val_fraction=d.action_validation_fraction,
                                val_seed=d.action_validation_seed, by=d.action_validation_by)
    started = time.perf_counter()
    train = VideoSource(splits.train, cache=d.cache_in_memory)
    val = VideoSource(splits.val, cache=d.cache_in_memory)
    test_source = VideoSource(splits.test, cache=d.cache_in_memory) if test else None
    _log(ctx, f"action set: {len(splits.classes)} classes, {len(train)} train / {len(val)} val"
              + (f" / {len(splits.test)} test" if test else "") + f" videos ({time.perf_counter() - started:.1f} s to index"
              + (" and decode" if d.cache_in_memory else "") + ")")
    return splits, train, val, test_source


def _eval_clip_loader(cfg: AnonymizationConfig, source: VideoSource) -> tuple[Any, int]:
    c = cfg.clip
    ds = EvalClips(source, eval_transform(c.resolution, scale=c.crop_scale), clip_len=c.clip_len, skip=c.skip,
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


def _eval_view_loader(cfg: AnonymizationConfig, images: ImageSource, *, labels: bool = False):
    ds = ImageViews(images, _augment(cfg), labels=labels)
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


def task_utility_pretrain(cfg: AnonymizationConfig, ctx: RunContext, precision: Precision) -> Task:
    d = cfg.data
    splits, train, val, test = _action_data(cfg, ctx, test=True)
    assert test is not None
    model, spec = fresh_utility(cfg, len(splits.classes))
    ds = ActionClips(train, _augment(cfg), clip_len=cfg.clip.clip_len, skip=cfg.clip.skip)
    steps = _steps(cfg, len(train), cfg.optim.batch_size)
    val_loader, n_val = _eval_clip_loader(cfg, val)
    test_loader, n_test = _eval_clip_loader(cfg, test)

    def batches(epoch: int):
        keys = epoch_batches(len(train), batch_size=cfg.optim.batch_size, num_batches=steps, seed=cfg.run.seed,
                             stream=STREAM_ACTION, epoch=epoch)
        return loader(ds, batches=_shard(keys, ctx), num_workers=cfg.run.num_workers)

    def loss(net: nn.Module, batch: dict) -> dict:
        with precision.autocast():
            logits, _ = net(batch["clip"])
        ce = nn.functional.cross_entropy(logits.float(), batch["label"])
        return {"loss": ce, "top1": (logits.argmax(1) == batch["label"]).float().mean().detach()}

    def validate(epoch: int) -> dict:
        return evaluate_action(None, model, val_loader, num_videos=n_val, device=ctx.device, precision=precision)

    def final(best: nn.Module) -> dict:
        test_metrics = evaluate_action(None, best, test_loader, num_videos=n_test, device=ctx.device, precision=precision)
        return {"test_top1": test_metrics["top1"], "test_split": f"testlist0{d.action_fold}",
                "note": "test_top1 is reported only; selection used val_top1 (carved from the train list)"}

    return SingleModelTask(cfg, ctx, key="utility", model=model, spec=spec, batches=batches, loss=loss, validate=validate,
                           final=final, selection=Selection("top1", "max", "max validation video top-1 (held-out train-list groups)"))


def task_identity(cfg: AnonymizationConfig, ctx: RunContext, precision: Precision) -> Task:
    d = cfg.data
    _, train, val, _ = _action_data(cfg, ctx)
    p_train, p_val = load_privacy_splits(cfg.paths.vispr, val_fraction=d.privacy_validation_fraction, val_seed=d.privacy_validation_seed)
    images_train, images_val = ImageSource(p_train, cache=d.cache_in_memory), ImageSource(p_val, cache=d.cache_in_memory)
    model, spec = fresh_anonymizer(cfg)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model.anonymizer = {cfg.model.anonymizer!r} has no parameters to train")
    ds = IdentityFrames(train, images_train, _augment(cfg), frames_per_video=d.frames_per_video)
    steps = _steps(cfg, len(ds), cfg.optim.batch_size)
    ev = eval_transform(cfg.clip.resolution, scale=cfg.clip.crop_scale)
    val_loader = loader(EvalFrames(val, images_val, ev), batch_size=cfg.optim.batch_size, num_workers=cfg.run.num_workers)
    grid = _grid_images(cfg, images_val)

    def batches(epoch: int):
        keys = epoch_batches(len(ds), batch_size=cfg.optim.batch_size, num_batches=steps, seed=cfg.run.seed,
                             stream=STREAM_FRAMES, epoch=epoch)
        return loader(ds, batches=_shard(keys, ctx), num_workers=cfg.run.num_workers)

    def loss(net: nn.Module, batch: dict) -> dict:
        x = batch["image"]
        with precision.autocast():
            y = net(x).float()
        return {"loss": (y - x).abs().mean()}

    def validate(epoch: int) -> dict:
        save_grid(model, grid, ctx, epoch, precision=precision)
        return {"l1": evaluate_l1(model, val_loader, device=ctx.device, precision=precision)}

    return SingleModelTask(cfg, ctx, key="anonymizer", model=model, spec=spec, batches=batches, loss=loss, validate=validate,
                           selection=Selection("l1", "min", "min validation L1 (action val frames + privacy val images)"))


def task_budget_ssl(cfg: AnonymizationConfig, ctx: RunContext, precision: Precision) -> Task:
    """fB's init on two views of the raw privacy-train images: NT-Xent (the paper's self-supervised
    budget) or, with budget.task = attributes, BCE of an attribute classifier of model.budget's
    target architecture (the supervised budget)."""
    d = cfg.data
    p_train, p_val = load_privacy_splits(cfg.paths.vispr, val_fraction=d.privacy_validation_fraction, val_seed=d.privacy_validation_seed)
    images_train, images_val = ImageSource(p_train, cache=d.cache_in_memory), ImageSource(p_val, cache=d.cache_in_memory)
    task = cfg.budget.task
    supervised = task == "attributes"
    if supervised:
        spec = attribute_budget_spec(cfg)
        model = build_target(**spec)
    else:
        model, spec = fresh_budget(cfg)
    ds = ImageViews(images_train, _augment(cfg), labels=supervised)
    steps = _steps(cfg, len(images_train), cfg.optim.image_batch_size)
    val_loader = _eval_view_loader(cfg, images_val, labels=supervised)

    def batches(epoch: int):
        keys = epoch_batches(len(images_train), batch_size=cfg.optim.image_batch_size, num_batches=steps,
                             seed=cfg.run.seed, stream=STREAM_PRIVACY, epoch=epoch)
        return loader(ds, batches=_shard(keys, ctx), num_workers=cfg.run.num_workers)

    def loss(net: nn.Module, batch: dict) -> dict:
        if supervised:
            result = attribute_terms(net, batch["view1"], batch["view2"], batch["labels"], precision=precision)
        else:
            result = budget_terms(net, batch["view1"], batch["view2"], temperature=cfg.loss.temperature, precision=precision,
                                  across_ranks=ctx.dist.distributed)
        return {"loss": result.loss, "acc": result.accuracy.detach()}

    def validate(epoch: int) -> dict:
        return evaluate_budget(None, model, val_loader, task=task, temperature=cfg.loss.temperature, device=ctx.device,
                               precision=precision)

    rule = "min validation attribute BCE (privacy val images)" if supervised else "min validation NT-Xent loss (privacy val images)"
    return SingleModelTask(cfg, ctx, key="budget", kind=budget_kind(cfg), model=model, spec=spec, batches=batches, loss=loss,
                           validate=validate, selection=Selection("loss", "min", rule))


def attribute_budget_spec(cfg: AnonymizationConfig) -> dict:
    return {"name": cfg.model.budget, "num_classes": len(VISPR_ATTRIBUTES)}


def _grid_images(cfg: AnonymizationConfig, images: ImageSource) -> torch.Tensor:
    """The first eval.grid_images validation images under the eval crop: (k, 3, size, size)."""
    k = min(cfg.eval.grid_images, len(images))
    if k == 0:
        return torch.zeros(0, 3, cfg.clip.resolution, cfg.clip.resolution)
    ds = EvalImages(images, eval_transform(cfg.clip.resolution, scale=cfg.clip.crop_scale))
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
        if cfg.model.anonymizer == "bq" and specs["anonymizer"].get("name") != "bq":
            # Otherwise the run would silently train the init's UNet under a bq run's name.
            raise CheckpointError(
                f"init.anonymizer {path} holds a {specs['anonymizer'].get('name')!r} anonymizer, not model.anonymizer = bq; "
                "bq starts near the identity by construction: set init.anonymizer = null")
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
    if cfg.budget.task == "attributes" and path is None:
        specs["budget"] = attribute_budget_spec(cfg)
        budget = seeded_budget(specs["budget"], budget_seed(cfg, 0, 0), kind="target")
    elif cfg.budget.task == "attributes":
        budget, specs["budget"] = load_stored_model(path, "budget", config_key="init.budget")
        if specs["budget"].get("num_classes") != len(VISPR_ATTRIBUTES):
            raise CheckpointError(
                f"init.budget {path} holds no attribute classifier (spec {specs['budget']}); budget.task = attributes "
                f"starts from a budget_ssl run with budget.task = attributes (configs/synthetic/anonymization/"
                f"budget_attributes.yaml) or from a seeded fresh one (init.budget = null)")
    elif path is None:
        budget, specs["budget"] = fresh_budget(cfg)
    else:
        budget, specs["budget"] = load_stored_model(path, "budget", config_key="init.budget")
    specs["embedding"] = embedding_spec(cfg, feature_dim_of(utility))
    embedding = build_embedding_head(**specs["embedding"])
    ensemble = []
    for k in range(1, cfg.budget.ensemble):
        specs[member_key(k)] = specs["budget"]
        ensemble.append(seeded_budget(specs["budget"], budget_seed(cfg, k, 0), kind=budget_kind(cfg)))
    return MinimaxModels(anonymizer, utility, embedding, budget, ensemble), specs


def budget_kind(cfg: AnonymizationConfig) -> str:
    """Stored-model kind of the budget members: NT-Xent embedders ('budget') or attribute classifiers ('target')."""
    return "target" if cfg.budget.task == "attributes" else "budget"


def budget_seed(cfg: AnonymizationConfig, member: int, start: int) -> int:
    """Seed of budget member ``member``'s ``start``-th random init (start 0: its first)."""
    return sample_seed(cfg.run.seed, STREAM_BUDGET_INIT, member, start)


def seeded_budget(spec: dict, seed: int, *, kind: str = "budget") -> nn.Module:
    """fB of ``spec``'s architecture (a 'budget' embedder or a 'target' attribute classifier) with random
    init drawn from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_target(**spec) if kind == "target" else build_budget(**spec)


def loss_weights(cfg: AnonymizationConfig) -> LossWeights:
    lo = cfg.loss
    return LossWeights(method=lo.method, omega=lo.omega, margin=lo.margin, invariance_temperature=lo.invariance_temperature,
                       temperature=lo.temperature, w_t=lo.w_t, w_b=lo.w_b, privacy=lo.privacy, budget_task=cfg.budget.task)


def selection_score(rule: str, metrics: dict[str, float], initial: dict[str, float], max_drop: float) -> float:
    """The minimax selection value of one validation (higher is better); see EvalSection.select.

    'attacker_tradeoff' reads only action top-1 and the fresh attacker's cMAP: an epoch whose
    budget model is fooled while a fresh attacker still reads the attributes scores as leaky."""
    top1 = metrics["action_top1"]
    if rule == "action_top1":
        return top1
    if rule == "budget_acc":
        return -metrics["budget_acc"]
    if rule not in ("tradeoff", "attacker_tradeoff"):
        raise ValueError(f"selection rule {rule!r} is not one of tradeoff, action_top1, budget_acc, attacker_tradeoff")
    leak = metrics["attacker_cmap"] if rule == "attacker_tradeoff" else metrics["budget_acc"]
    # Inside the margin the score is top1 - leak >= -1; outside it is -1 - leak <= -1, so any epoch
    # inside the margin outranks every epoch outside it, and outside ones still prefer less leakage.
    inside = top1 >= initial["action_top1"] - max_drop - 1e-9
    return top1 - leak if inside else -1.0 - leak


def selection_rule(cfg: AnonymizationConfig) -> str:
    """results.json's selection.rule: the rule of eval.select in words, with its numbers."""
    e, fa = cfg.eval, cfg.fresh_attacker
    margin = f"validation action top-1 >= epoch-0 top-1 - {e.max_action_drop}"
    rules = {
        "action_top1": "max validation action top-1 (held-out train-list groups)",
        "budget_acc": "min validation budget NT-Xent accuracy (privacy val images; the budget model fA trained against)",
        "tradeoff": f"max (action top-1 - budget NT-Xent accuracy) among epochs with {margin}; outside: -1 - budget accuracy",
        "attacker_tradeoff": (
            f"max (action top-1 - fresh-attacker cMAP) among epochs with {margin}; outside: -1 - cMAP. The cMAP: the worst "
            f"case (max) over {fa.attackers} fresh TinyAttacker(s) (width {fa.width}, own seeds) trained {fa.steps} Adam "
            f"steps each on fA's privacy-train images with their "
            f"attribute labels, cMAP on a held-out {fa.validation_fraction} of the privacy train list (seed "
            f"{fa.validation_seed}; the privacy test split is never used); the budget model's accuracy plays no part"
        ),
    }
    return f"eval.select = {e.select}: {rules[e.select]}"


def step_views(net: MinimaxModels, ctx: RunContext, *, sync_bn: bool) -> tuple[MinimaxModels, MinimaxModels]:
    """The models Step 1 and Step 2 call: ``net`` itself in one process; under torchrun, Step 1's
    view wraps fA alone in DistributedDataParallel and Step 2's wraps fT, the head and every
    budget member, the other models staying the plain (frozen) modules.

    A DDP wrapper expects a gradient for its parameters after every forward it runs in grad
    mode; calling a frozen model through one would leave its reducer waiting (the next step
    fails or hangs) and all-reduce gradients nobody steps. The wrappers share the modules'
    parameters, so the optimisers, checkpoints and validation keep using ``net``."""
    if not ctx.dist.distributed:
        return net, net
    wrap = lambda m: data_parallel(m, ctx.dist, sync_bn=sync_bn)  # noqa: E731
    step1 = MinimaxModels(wrap(net.anonymizer), net.utility, net.embedding, net.budget, list(net.ensemble))
    step2 = MinimaxModels(net.anonymizer, wrap(net.utility), wrap(net.embedding), wrap(net.budget),
                          [wrap(m) for m in net.ensemble])
    return step1, step2


def recompute_models(net: MinimaxModels, recompute: Sequence[str]) -> dict[str, int]:
    """optim.recompute: the blocks of fA ("anonymizer"), fT ("utility") and every budget member
    ("budget") recompute their activations in the backward pass (aux_code.memory.recompute_blocks,
    in place, before any DDP wrapper); returns the number of blocks per model."""
    models = {"anonymizer": [net.anonymizer], "utility": [net.utility], "budget": net.budgets}
    return {role: sum(recompute_blocks(m) for m in models[role]) for role in recompute}


class MinimaxTask(Task):
    """TeD-SPAD Algorithm 1 (or SPAct / the ablations): each train step is Step 1 (fA) then Step 2 (fT, fB),
    each on its own action and image batch; selection by ``eval.select`` against the epoch-0 validation.

    The remedies of issue 14 are options of the same task: budget members and restarts (``budget.*``)
    and the bounded privacy objective (``loss.privacy``) change the steps; the fresh-attacker probe
    (``fresh_attacker.*``) only adds validation metrics, drawn from its own RNG."""

    def __init__(self, cfg: AnonymizationConfig, ctx: RunContext, precision: Precision) -> None:
        d, o = cfg.data, cfg.optim
        self.cfg, self.ctx, self.precision, self.device = cfg, ctx, precision, ctx.device
        self.name, self.epochs, self.eval_every = cfg.task, o.epochs, cfg.eval.every
        self.selection = Selection("selection_score", "max", selection_rule(cfg))
        splits, self.train_videos, val, _ = _action_data(cfg, ctx)
        p_train, p_val = load_privacy_splits(cfg.paths.vispr, val_fraction=d.privacy_validation_fraction, val_seed=d.privacy_validation_seed)
        self.images_train, images_val = ImageSource(p_train, cache=d.cache_in_memory), ImageSource(p_val, cache=d.cache_in_memory)
        self.weights = dataclasses.replace(loss_weights(cfg), across_ranks=ctx.dist.distributed)
        self.action_ds = ActionClips(self.train_videos, _augment(cfg), clip_len=cfg.clip.clip_len, skip=cfg.clip.skip,
                                     triplet=self.weights.temporal, negative_distance=cfg.loss.negative_distance,
                                     negative_min_gap=cfg.loss.negative_min_gap)
        self.image_ds = ImageViews(self.images_train, _augment(cfg), labels=cfg.budget.task == "attributes")
        if len(self.images_train) < o.image_batch_size:
            raise StageDataError(f"{len(self.images_train)} privacy train image(s) cannot fill a batch of {o.image_batch_size}")
        self.steps = _steps(cfg, len(self.train_videos), o.batch_size, per_step=2)
        self.net, self.specs = load_init_models(cfg, len(splits.classes))
        for m in self.net.as_dict().values():
            m.to(ctx.device)
        self.opt = {
            "anonymizer": torch.optim.Adam(self.net.anonymizer.parameters(), lr=o.lr_anonymizer, weight_decay=o.weight_decay),
            "utility": torch.optim.Adam([*self.net.utility.parameters(), *self.net.embedding.parameters()], lr=o.lr_utility,
                                        weight_decay=o.weight_decay),
        }
        for k, member in enumerate(self.net.budgets):
            self.opt[member_key(k)] = torch.optim.Adam(member.parameters(), lr=o.lr_budget, weight_decay=o.weight_decay)
        self.recomputed = recompute_models(self.net, o.recompute)
        if self.recomputed:
            _log(ctx, "optim.recompute: blocks recomputed in the backward pass: "
                      + ", ".join(f"{role} {n}" for role, n in self.recomputed.items()))
        self.step1, self.step2 = step_views(self.net, ctx, sync_bn=cfg.ddp.sync_batchnorm)
        # Each member's start of the run, taken before any resume loads later weights into it.
        self._starts = [{key: v.detach().clone() for key, v in m.state_dict().items()} for m in self.net.budgets]
        self.restarts = BudgetRestarts(cfg.budget.restart_every, cfg.budget.restart_from, self._member_start)
        self.val_loader, self.n_val = _eval_clip_loader(cfg, val)
        self.view_loader = _eval_view_loader(cfg, images_val, labels=cfg.budget.task == "attributes")
        self.grid = _grid_images(cfg, images_val)
        self.probe = AttackerProbe(cfg, ctx, precision) if cfg.fresh_attacker.enabled else None
        self.initial: dict[str, float] = {}

    def _member_start(self, k: int, r: int) -> dict[str, torch.Tensor]:
        if r == 0:
            return self._starts[k]
        return seeded_budget(self.specs[member_key(k)], budget_seed(self.cfg, k, r), kind=budget_kind(self.cfg)).state_dict()

    def _budget_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt[member_key(k)] for k in range(len(self.net.budgets))]

    def models(self) -> dict[str, StoredModel]:
        # Every budget member is stored under its kind ('budget', 'budget_1', ... as budget or target records).
        kind = lambda key: budget_kind(self.cfg) if key.startswith("budget") else key  # noqa: E731
        return {k: StoredModel(kind(k), self.specs[k], m) for k, m in self.net.as_dict().items()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.opt

    def task_state(self) -> dict:
        return {"initial": self.initial}

    def load_task_state(self, state: dict) -> None:
        self.initial = dict(state["initial"])

    def start(self) -> None:
        self.initial = {**broadcast_metrics(self.validate(0)), "epoch": 0}
        self.ctx.logger.log(0, self.initial, phase="val")
        _log(self.ctx, "minimax epoch 0 (inits, before any step): " + ", ".join(f"{k}={v:.4g}" for k, v in self.initial.items()))

    def batches(self, epoch: int) -> range:
        o, seed, workers = self.cfg.optim, self.cfg.run.seed, self.cfg.run.num_workers
        action_keys = epoch_batches(len(self.train_videos), batch_size=o.batch_size, num_batches=2 * self.steps, seed=seed,
                                    stream=STREAM_ACTION, epoch=epoch)
        image_keys = epoch_batches(len(self.images_train), batch_size=o.image_batch_size, num_batches=2 * self.steps,
                                   seed=seed, stream=STREAM_PRIVACY, epoch=epoch)
        # Each half pulls its own batches as it runs (not all four up front): the data and the
        # steps then use the global RNG in the same order whatever the loader does.
        self._action = iter(loader(self.action_ds, batches=_shard(action_keys, self.ctx), num_workers=workers))
        self._images = iter(loader(self.image_ds, batches=_shard(image_keys, self.ctx), num_workers=workers))
        return range(self.steps)

    def train_step(self, batch: int, stepper: Stepper) -> dict[str, float]:
        pull = lambda it: _to(next(it), self.device)  # noqa: E731
        restarted = self.restarts.apply(stepper.step, self.net.budgets, self._budget_optimizers())
        m1 = anonymizer_step(self.step1, self.opt["anonymizer"], pull(self._action), pull(self._images),
                             weights=self.weights, stepper=stepper, micro_batch=self.cfg.optim.micro_batch)
        m2 = adversary_step(self.step2, self.opt["utility"], self.opt["budget"], pull(self._action), pull(self._images),
                            weights=self.weights, stepper=stepper, ensemble_optimizers=self._budget_optimizers()[1:],
                            micro_batch=self.cfg.optim.micro_batch)
        out = {**{f"step1_{k}": v for k, v in m1.items()}, **{f"step2_{k}": v for k, v in m2.items()}}
        if self.restarts.every is not None:
            out["budget_restarted"] = float(restarted)  # the epoch mean times steps = restarts in the epoch
        return out

    def validate(self, epoch: int) -> dict[str, float]:
        action = evaluate_action(self.net.anonymizer, self.net.utility, self.val_loader, num_videos=self.n_val,
                                 device=self.device, precision=self.precision)
        budgets = [evaluate_budget(self.net.anonymizer, m, self.view_loader, task=self.cfg.budget.task,
                                   temperature=self.cfg.loss.temperature, device=self.device, precision=self.precision)
                   for m in self.net.budgets]
        save_grid(self.net.anonymizer, self.grid, self.ctx, epoch, precision=self.precision)
        # Over an ensemble the strongest member speaks for privacy (one member: its own values).
        out = {"action_top1": action["top1"], "budget_loss": min(b["loss"] for b in budgets),
               "budget_acc": max(b["acc"] for b in budgets)}
        if len(budgets) > 1:
            out.update({f"budget_acc_{k}": b["acc"] for k, b in enumerate(budgets)})
        if self.probe is not None:
            out.update(self.probe(self.net.anonymizer))
        return out

    def score(self, metrics: dict[str, float]) -> float:
        return selection_score(self.cfg.eval.select, metrics, self.initial, self.cfg.eval.max_action_drop)

    def finish(self, selected: dict) -> dict:
        drop, b = self.cfg.eval.max_action_drop, self.cfg.budget
        out = {"method": self.cfg.loss.method, "initial": {k: v for k, v in self.initial.items() if k != "epoch"},
               "max_action_drop": drop,
               "within_margin": selected["val_action_top1"] >= self.initial["action_top1"] - drop - 1e-9,
               "privacy_objective": self.cfg.loss.privacy,
               "budget": {"task": b.task, "ensemble": b.ensemble, "restart_every": b.restart_every, "restart_from": b.restart_from,
                          "restarts": (self.epochs * self.steps - 1) // b.restart_every if b.restart_every else 0}}
        if self.probe is not None:
            out["fresh_attacker"] = self.probe.describe()
        return out


class AttackerProbe:
    """The fresh-attacker probe of the minimax's validation (anonymization_training.attacker) on
    two carves of the privacy *train* list (``fresh_attacker.validation_fraction``): called with
    fA, it returns {"attacker_cmap" (the max over fresh_attacker.attackers), "attacker_cmap_mean",
    "attacker_chance", "attacker_time_s", "output_ssim", "output_psnr"} (SSIM / PSNR of fA's 8-bit output to its input on the attacker-validation images;
    PSNR of their mean squared error, 100 dB when identical)."""

    def __init__(self, cfg: AnonymizationConfig, ctx: RunContext, precision: Precision) -> None:
        fa = cfg.fresh_attacker
        self.device, self.precision = ctx.device, precision
        carve = VISPR(cfg.paths.vispr, val_fraction=fa.validation_fraction, val_seed=fa.validation_seed)
        train, val = carve.items("train"), carve.items("val")
        for name, items in (("train", train), ("validation", val)):
            if len(items) < 2:
                raise StageDataError(f"the fresh attacker's {name} carve of {cfg.paths.vispr} has {len(items)} image(s) "
                                     f"(fresh_attacker.validation_fraction = {fa.validation_fraction}); it needs >= 2")
        ev = eval_transform(cfg.clip.resolution, scale=fa.crop_scale)

        def stack(items):
            ds = EvalImages(ImageSource(items, cache=False), ev)
            images = torch.stack([ds[i]["image"] for i in range(len(ds))])
            return images, torch.from_numpy(np.stack([item.labels for item in items]).astype(np.float32))

        self.train_images, self.train_labels = stack(train)
        self.val_images, self.val_labels = stack(val)
        self.reference = anonymize_images(None, self.val_images, device=self.device, precision=precision)
        self.settings = AttackerSettings(steps=fa.steps, batch_size=fa.batch_size, lr=fa.lr, width=fa.width,
                                         seed=sample_seed(cfg.run.seed, STREAM_ATTACKER))
        self.attackers = fa.attackers
        self.seconds: list[float] = []
        _log(ctx, f"fresh attacker: {len(train)} train / {len(val)} validation images of the privacy train list")

    def __call__(self, anonymizer: nn.Module) -> dict[str, float]:
        started = time.perf_counter()
        train = anonymize_images(anonymizer, self.train_images, device=self.device, precision=self.precision)
        val = anonymize_images(anonymizer, self.val_images, device=self.device, precision=self.precision)
        result = fresh_attacker_probe(train, self.train_labels, val, self.val_labels, self.settings, attackers=self.attackers)
        mse = float((val - self.reference).double().pow(2).mean())
        out = {
            "attacker_cmap": result["cmap"], "attacker_cmap_mean": result["cmap_mean"], "attacker_chance": result["chance"],
            "output_ssim": float(ssim(self.reference, val).mean()),
            "output_psnr": 10.0 * math.log10(1.0 / max(mse, 1e-10)),
        }
        self.seconds.append(time.perf_counter() - started)
        out["attacker_time_s"] = self.seconds[-1]
        return out

    def describe(self) -> dict:
        s = self.settings
        return {"train_images": int(self.train_images.shape[0]), "validation_images": int(self.val_images.shape[0]),
                "attackers": self.attackers, "steps": s.steps, "batch_size": s.batch_size, "lr": s.lr, "width": s.width,
                "seconds_per_probe": sum(self.seconds) / len(self.seconds) if self.seconds else None}


TASKS: dict[str, Callable[[AnonymizationConfig, RunContext, Precision], Task]] = {
    "utility_pretrain": task_utility_pretrain,
    "identity": task_identity,
    "budget_ssl": task_budget_ssl,
    "minimax": MinimaxTask,
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


def global_batches(cfg: AnonymizationConfig) -> list[tuple[str, int]]:
    """The (config key, global batch) pairs the task shards over ranks under torchrun."""
    o = cfg.optim
    uses = {"utility_pretrain": ["batch_size"], "identity": ["batch_size"], "budget_ssl": ["image_batch_size"],
            "minimax": ["batch_size", "image_batch_size"]}
    return [(f"optim.{k}", getattr(o, k)) for k in uses[cfg.task]]


def check_micro_batch(cfg: AnonymizationConfig, world_size: int) -> None:
    """optim.micro_batch must divide the batch each rank trains on (before any folder exists)."""
    o = cfg.optim
    if cfg.task != "minimax" or o.micro_batch is None:
        return
    per_rank = per_rank_batch(o.batch_size, world_size, key="optim.batch_size")
    if per_rank % o.micro_batch:
        raise ConfigError(f"optim.micro_batch = {o.micro_batch} must divide the {per_rank} clips each rank trains on "
                          f"per step (optim.batch_size = {o.batch_size} over {world_size} rank(s))")


_PRODUCER = {"anonymizer": "identity", "utility": "utility_pretrain", "budget": "budget_ssl"}


def run(cfg: AnonymizationConfig) -> dict:
    """The stage (task ``cfg.task``). Returns the results dict (also written to results.json)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_batches(world_size, global_batches(cfg))
    check_micro_batch(cfg, world_size)
    check_inits(cfg)
    ctx = start_run(cfg, stage=STAGE)
    try:
        precision = Precision(cfg.precision, ctx.device)
        return fit(TASKS[cfg.task](cfg, ctx, precision), ctx, cfg=cfg, stage=STAGE, precision=precision,
                   log_every=cfg.run.log_every)
    finally:
        ctx.finish()
