"""Stage 4: train MGFN on a feature set, select on validation, evaluate the test set.

``run(cfg)`` is the whole stage:

1. load and check the feature set (every bad input stops the run here, before training);
2. train with Adam, a fresh shuffle and pairing of normal and abnormal videos every epoch
   (DistributedSampler shards under torchrun), rank 0 writing last.pt every epoch;
3. every ``eval.every`` epochs score the validation split (training videos held out,
   stratified by label) and keep best.pt on its metric; the test set is never looked at
   while training;
4. load the selected checkpoint and score the test set once: frame-level ROC AUC, AP and
   trapezoidal PR-AUC, SAS video-level F1, plus plots and per-video scores.

Rerunning the same command resumes from last.pt; a finished run only re-evaluates.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn
from tqdm import tqdm

from anomaly_detection.config import AnomalyConfig, headline_metric
from anomaly_detection.data import AnomalyData, AnomalyDataError, epoch_batches, load_anomaly_data
from anomaly_detection.evaluate import evaluate_test_set, mgfn_autocast, score_videos, selection_metric
from anomaly_detection.report import pick_plot_videos, plot_video_scores, save_test_scores, write_results
from aux_code.checkpoint import load_checkpoint, load_state_dict_strict
from aux_code.config import config_hash, to_dict
from aux_code.losses.mgfn import mgfn_loss
from aux_code.models.mgfn import MGFN, build_mgfn, count_parameters
from aux_code.runtime import DistInfo, all_reduce_mean
from aux_code.training import BEST, LAST, RunContext, check_finite, plain_config, start_run

STAGE = "anomaly"


def build_model(cfg: AnomalyConfig, feature_dim: int) -> MGFN:
    return build_mgfn(
        preset=cfg.model.preset,
        feature_dim=feature_dim,
        k=cfg.model.k,
        magnitude_dropout=cfg.model.magnitude_dropout,
        magnitude_ratio=cfg.model.magnitude_ratio,
        dropout=cfg.model.dropout,
    )


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Adam:
    """MGFN's Adam (L2 weight decay), as one fused kernel: the same update, and at paper size the
    per-parameter loop of the default implementation costs about 0.1 s per step on 2 CPU cores."""
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def loss_options(cfg: AnomalyConfig) -> dict:
    """The mgfn_loss keyword arguments of the loss section."""
    lc = cfg.loss
    return {
        "smoothness_weight": lc.smoothness_weight,
        "sparsity_weight": lc.sparsity_weight,
        "sparsity_target": lc.sparsity_target,
        "margin": lc.margin,
        "separation_weight": lc.separation_weight,
        "compact_weight": lc.compact_weight,
    }


def experiment_hash(cfg: AnomalyConfig) -> str:
    """Hash of what decides the numbers: every section but paths and the run plumbing."""
    d = to_dict(cfg)
    d.pop("paths")
    d["run"] = {"seed": cfg.run.seed, "deterministic": cfg.run.deterministic}
    return config_hash(d)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    normal: torch.Tensor,
    abnormal: torch.Tensor,
    *,
    step: int,
    loss_kwargs: Mapping,
    precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """One update on b normal and b abnormal videos, each (b, crops, T, D + 1).

    Both halves go through the network as one batch of 2b (normal first), as MGFN trains,
    so BatchNorm sees both classes. Returns the detached loss terms and their total.
    """
    b = normal.shape[0]
    x = torch.cat([normal, abnormal])
    labels = torch.cat([torch.zeros(b), torch.ones(abnormal.shape[0])]).to(x.device)
    with mgfn_autocast(precision, x.device):
        out = model(x)
    total, terms = mgfn_loss(
        scores=out.scores.float(), video_scores=out.video_scores.float(), labels=labels,
        topk_features=out.topk_features.float(), **loss_kwargs
    )
    check_finite(step, {**terms, "total": total})
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}}


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: AnomalyData,
    *,
    epoch: int,
    batch_per_class: int,
    seed: int,
    dist: DistInfo,
    loss_kwargs: Mapping,
    ctx: RunContext | None = None,
    log_every: int = 10,
    precision: str = "fp32",
) -> dict[str, float]:
    """One epoch; returns the loss terms averaged over steps and ranks, plus timing."""
    start = time.perf_counter()
    batches = epoch_batches(
        len(data.train.normal_names),
        len(data.train.abnormal_names),
        batch_per_class=batch_per_class,
        epoch=epoch,
        seed=seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    model.train()
    sums: dict[str, torch.Tensor] = {}
    for i, (ni, ai) in enumerate(batches):
        step = epoch * len(batches) + i + 1
        normal = data.train.normal[torch.from_numpy(ni)].to(dist.device, non_blocking=True)
        abnormal = data.train.abnormal[torch.from_numpy(ai)].to(dist.device, non_blocking=True)
        terms = train_step(model, optimizer, normal, abnormal, step=step, loss_kwargs=loss_kwargs, precision=precision)
        for k, v in terms.items():
            sums[k] = sums.get(k, torch.zeros((), device=v.device)) + v
        if ctx is not None and log_every > 0 and step % log_every == 0:
            ctx.logger.log(step, terms, phase="train")
    keys = sorted(sums)
    means = all_reduce_mean(torch.stack([sums[k] for k in keys]) / len(batches)).cpu()
    out = {k: float(v) for k, v in zip(keys, means)}
    out.update(steps=len(batches), epoch_time_s=time.perf_counter() - start)
    return out


def _sync_buffers(model: nn.Module, dist: DistInfo) -> None:
    """Give every rank rank 0's BatchNorm statistics before a sharded evaluation."""
    if dist.distributed:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


def _load_weights(model: nn.Module, path, what: str) -> int:
    state = load_checkpoint(path, what=what)
    load_state_dict_strict(model, state["model"], source=f"{what} {path}")
    return int(state["epoch"])


def run(cfg: AnomalyConfig) -> dict:
    """The stage. Returns the results dict (also written to results.json by rank 0)."""
    data = load_anomaly_data(
        cfg.feature_dir(),
        feature_dim=cfg.model.feature_dim,
        dataset=cfg.data.dataset,
        num_segments=cfg.data.num_segments,
        validation_fraction=cfg.data.validation_fraction,
        seed=cfg.run.seed,
        cache_eval=cfg.data.cache_eval,
        validation_needs_intervals=cfg.eval.validation_metric == "frame_auc",
    )
    headline = headline_metric(cfg.eval.metric, data.info.dataset)
    ctx = start_run(cfg, stage=STAGE, select="max")
    try:
        return _run(cfg, data, headline, ctx)
    finally:
        ctx.finish()


def _run(cfg: AnomalyConfig, data: AnomalyData, headline: str, ctx: RunContext) -> dict:
    dist = ctx.dist
    model = build_model(cfg, data.feature_dim).to(dist.device)
    optimizer = build_optimizer(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    val_names = [v.name for v in data.validation]
    start_epoch = 0
    state = ctx.resume_or(None)
    if state is not None:
        if state.get("validation_videos") != val_names:
            raise AnomalyDataError(
                f"{ctx.run_dir / LAST} was trained with another validation split (data.validation_fraction, "
                "run.seed or the feature set changed); use a new run.name or run.resume=false"
            )
        load_state_dict_strict(model, state["model"], source=f"resume checkpoint {ctx.run_dir / LAST}")
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        if dist.is_main:
            print(f"[anomaly] resuming {ctx.run_dir} after epoch {start_epoch}/{cfg.optim.epochs}", flush=True)
    # Moving the (small, pre-resampled) training tensors once saves a host copy per step on GPU.
    data.train.normal = data.train.normal.to(dist.device)
    data.train.abnormal = data.train.abnormal.to(dist.device)
    train_model: nn.Module = model
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)

    loss_kwargs = loss_options(cfg)
    progress = tqdm(range(start_epoch, cfg.optim.epochs), initial=start_epoch, total=cfg.optim.epochs, desc="anomaly", disable=not dist.is_main)
    for epoch in progress:
        stats = train_epoch(
            train_model, optimizer, data, epoch=epoch, batch_per_class=cfg.optim.batch_per_class, seed=cfg.run.seed,
            dist=dist, loss_kwargs=loss_kwargs, ctx=ctx, log_every=cfg.run.log_every, precision=cfg.optim.precision,
        )
        ctx.logger.log(epoch + 1, stats, phase="epoch")
        metric = None
        done = epoch + 1
        if data.validation and (done % cfg.eval.every == 0 or done == cfg.optim.epochs):
            t0 = time.perf_counter()
            _sync_buffers(model, dist)
            scores = score_videos(model, data, data.validation, device=dist.device, rank=dist.rank, world_size=dist.world_size,
                                  precision=cfg.optim.precision)
            metric = selection_metric(cfg.eval.validation_metric, data.validation, scores, data.clip_span, rescale=cfg.eval.robust_rescale)
            ctx.logger.log(done, {cfg.eval.validation_metric: metric, "eval_time_s": time.perf_counter() - t0}, phase="val")
            progress.set_postfix({cfg.eval.validation_metric: f"{metric:.4f}", "loss": f"{stats['loss']:.4f}"})
        ctx.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": plain_config(cfg), "validation_videos": val_names},
            epoch=done,
            metric=metric,
        )
    progress.close()
    if dist.distributed:
        torch.distributed.barrier()  # rank 0 has written best.pt/last.pt before anyone reads them

    # Selection: best validation epoch, or the last epoch when there is no validation split.
    selected = ctx.run_dir / (BEST if data.validation else LAST)
    selected_epoch = _load_weights(model, selected, "selected checkpoint")
    scores = score_videos(model, data, data.test, device=dist.device, rank=dist.rank, world_size=dist.world_size,
                          precision=cfg.optim.precision)
    sas_params = {k: getattr(cfg.eval.sas, k) for k in ("tau", "v", "upper", "lower", "threshold")}
    report, streams = evaluate_test_set(data.test, scores, data.clip_span, rescale=cfg.eval.robust_rescale, sas=sas_params, headline=headline)
    results = {
        "run": cfg.run.name,
        "run_dir": str(ctx.run_dir),
        "dataset": data.info.dataset,
        "anonymizer": str(data.info.anonymizer.get("kind", "unknown")),
        "feature_dir": str(data.feature_dir),
        "feature_set_hash": config_hash(data.info.producer_key()),
        "config_hash": experiment_hash(cfg),
        "selection": {
            "metric": cfg.eval.validation_metric if data.validation else None,
            "value": ctx.best.best if data.validation else None,
            "epoch": selected_epoch,
            "checkpoint": selected.name,
            "rule": "max of the validation metric over evaluated epochs" if data.validation else "last epoch (no validation split)",
        },
        "epochs": cfg.optim.epochs,
        "test": report,
        "counts": data.counts(),
        "clip_span": data.clip_span,
        "crops": data.crops,
        "model": {"preset": cfg.model.preset, "feature_dim": data.feature_dim, "parameters": count_parameters(model)},
        "world_size": dist.world_size,
    }
    if dist.is_main:
        write_results(ctx.run_dir, results)
        save_test_scores(ctx.run_dir / "test_scores.npz", data.test, scores.clip, scores.video, streams, data.clip_span)
        plot_video_scores(
            ctx.run_dir / "plots", pick_plot_videos(data.test, cfg.eval.plot_videos), scores.clip, streams, data.clip_span,
            rescale=cfg.eval.robust_rescale,
        )
        ctx.logger.log(selected_epoch, {f"test_{k}": v for k, v in report["frame"].items()}, phase="test")
        print(f"[anomaly] {report['headline']['metric']} = {100 * report['headline']['value']:.2f} "
              f"(epoch {selected_epoch}, selected on {results['selection']['metric'] or 'last epoch'}); "
              f"results in {ctx.run_dir / 'results.json'}", flush=True)
    return results
