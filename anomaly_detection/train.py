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

from collections.abc import Mapping

import torch
from torch import nn

from anomaly_detection.config import AnomalyConfig, headline_metric
from anomaly_detection.data import AnomalyData, AnomalyDataError, epoch_batches, load_anomaly_data
from anomaly_detection.evaluate import evaluate_test_set, score_videos, selection_metric
from anomaly_detection.report import pick_plot_videos, plot_video_scores, save_test_scores
from aux_code.config import config_hash
from aux_code.fit import Selection, Stepper, StoredModel, Task, fit
from aux_code.losses.mgfn import mgfn_loss
from aux_code.models.mgfn import build_mgfn, count_parameters
from aux_code.precision import Precision
from aux_code.runtime import DistInfo, data_parallel
from aux_code.schedule import Schedule
from aux_code.training import RunContext, start_run

STAGE = "anomaly"


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
        "margin": lc.contrastive_margin,
        "separation_weight": lc.separation_weight,
        "compact_weight": lc.compact_weight,
    }


class MGFNTask(Task):
    """MGFN on a feature set: each step b normal and b abnormal videos, (b, crops, T, D + 1) each, go through
    the network as one batch of 2b (normal first, as MGFN trains, so BatchNorm sees both classes); a fresh
    shuffle and pairing every epoch, sharded over ranks under torchrun. Selected on the validation split
    (training videos held out); without one, the last epoch is reported."""

    name = "mgfn"

    def __init__(self, cfg: AnomalyConfig, data: AnomalyData, headline: str, ctx: RunContext, precision: Precision) -> None:
        self.cfg, self.data, self.headline, self.ctx, self.precision = cfg, data, headline, ctx, precision
        self.dist = dist = ctx.dist
        self.epochs, self.eval_every = cfg.optim.epochs, cfg.eval.every
        if data.validation:
            self.selection = Selection(cfg.eval.validation_metric, "max", "max of the validation metric over evaluated epochs")
        self.spec = {"preset": cfg.model.preset, "feature_dim": data.feature_dim, "k": cfg.model.k,
                     "magnitude_dropout": cfg.model.magnitude_dropout, "magnitude_ratio": cfg.model.magnitude_ratio,
                     "dropout": cfg.model.dropout}
        self.model = build_mgfn(**self.spec).to(dist.device)
        self.optimizer = build_optimizer(self.model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.schedule = Schedule(cfg.schedule, lr=cfg.optim.lr, optimizers=[self.optimizer], mode="max")
        self.val_names = [v.name for v in data.validation]
        # Moving the (small, pre-resampled) training tensors once saves a host copy per step on GPU.
        data.train.normal = data.train.normal.to(dist.device)
        data.train.abnormal = data.train.abnormal.to(dist.device)
        self.train_model = data_parallel(self.model, dist, sync_bn=False)
        self.loss_kwargs = loss_options(cfg)

    def models(self) -> dict[str, StoredModel]:
        return {"mgfn": StoredModel("mgfn", self.spec, self.model)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"mgfn": self.optimizer}

    def task_state(self) -> dict:
        return {"validation_videos": self.val_names}

    def load_task_state(self, state: dict) -> None:
        if state.get("validation_videos") != self.val_names:
            raise AnomalyDataError(
                f"{self.ctx.run_dir} was trained with another validation split (data.validation_fraction, "
                "run.seed or the feature set changed); use a new run.name or run.resume=false"
            )

    def batches(self, epoch: int) -> list:
        self.train_model.train()
        return epoch_batches(len(self.data.train.normal_names), len(self.data.train.abnormal_names),
                             batch_per_class=self.cfg.optim.batch_per_class, epoch=epoch, seed=self.cfg.run.seed,
                             rank=self.dist.rank, world_size=self.dist.world_size)

    def train_step(self, batch, stepper: Stepper) -> dict[str, float]:
        ni, ai = batch
        normal = self.data.train.normal[torch.from_numpy(ni)].to(self.dist.device, non_blocking=True)
        abnormal = self.data.train.abnormal[torch.from_numpy(ai)].to(self.dist.device, non_blocking=True)
        return mgfn_step(self.train_model, self.optimizer, normal, abnormal, stepper=stepper, loss_kwargs=self.loss_kwargs)

    def _scores(self, videos):
        return score_videos(self.model, self.data, videos, device=self.dist.device, rank=self.dist.rank,
                            world_size=self.dist.world_size, precision=self.precision)

    def validate(self, epoch: int) -> dict[str, float]:
        _sync_buffers(self.model, self.dist)
        scores = self._scores(self.data.validation)
        e = self.cfg.eval
        return {e.validation_metric: selection_metric(e.validation_metric, self.data.validation, scores, self.data.clip_span,
                                                      rescale=e.robust_rescale)}

    def finish(self, selected: dict) -> dict:
        cfg, data, dist = self.cfg, self.data, self.dist
        scores = self._scores(data.test)
        sas_params = {k: getattr(cfg.eval.sas, k) for k in ("tau", "v", "upper", "lower", "threshold")}
        report, streams = evaluate_test_set(data.test, scores, data.clip_span, rescale=cfg.eval.robust_rescale, sas=sas_params,
                                            headline=self.headline)
        results = {
            "dataset": data.info.dataset,
            "anonymizer": str(data.info.anonymizer.get("method", "unknown")),
            "feature_dir": str(data.feature_dir),
            "feature_set_hash": config_hash(data.info.producer_key()),
            "test": report,
            "counts": data.counts(),
            "clip_span": data.clip_span,
            "crops": data.crops,
            "model": {**self.spec, "parameters": count_parameters(self.model)},
            "world_size": dist.world_size,
            # Which videos the figures leave out and why; partial: some were accepted only by data.allow_partial.
            "partial": data.partial,
            "videos_left_out": data.left_out,
            "dataset_files": {"digests": data.info.dataset_files, "checked_against": data.dataset_files_checked},
        }
        if dist.is_main:
            run_dir = self.ctx.run_dir
            save_test_scores(run_dir / "test_scores.npz", data.test, scores.clip, scores.video, streams, data.clip_span,
                             robust_rescale=cfg.eval.robust_rescale)
            plot_video_scores(run_dir / "plots", pick_plot_videos(data.test, cfg.eval.plot_videos), scores.clip, streams,
                              data.clip_span, rescale=cfg.eval.robust_rescale)
            self.ctx.logger.log(selected["epoch"], {f"test_{k}": v for k, v in report["frame"].items()}, phase="test")
        return results


def mgfn_step(model: nn.Module, optimizer: torch.optim.Optimizer, normal: torch.Tensor, abnormal: torch.Tensor, *,
              stepper: Stepper, loss_kwargs: Mapping) -> dict[str, float]:
    """One update on b normal and b abnormal videos, each (b, crops, T, D + 1); returns the loss terms and their total."""
    b = normal.shape[0]
    x = torch.cat([normal, abnormal])
    labels = torch.cat([torch.zeros(b), torch.ones(abnormal.shape[0])]).to(x.device)
    with stepper.autocast():
        out = model(x)
    # BCE cannot take a NaN score (it raises an out-of-range error instead of naming the step): check first.
    stepper.check({"segment_scores": out.scores.float().sum(), "topk_features": out.topk_features.float().sum()},
                  half="MGFN forward")
    total, terms = mgfn_loss(scores=out.scores.float(), video_scores=out.video_scores.float(), labels=labels,
                             topk_features=out.topk_features.float(), **loss_kwargs)
    return stepper.update({"loss": total, **terms}, optimizer)


def _sync_buffers(model: nn.Module, dist: DistInfo) -> None:
    """Give every rank rank 0's BatchNorm statistics before a sharded evaluation."""
    if dist.distributed:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


def run(cfg: AnomalyConfig) -> dict:
    """The stage. Returns the results dict (also written to results.json by rank 0)."""
    data = load_anomaly_data(
        cfg.feature_dir(),
        feature_dim=cfg.model.feature_dim,
        dataset=cfg.data.expected_dataset,
        num_segments=cfg.data.num_segments,
        validation_fraction=cfg.data.validation_fraction,
        seed=cfg.run.seed,
        cache_eval=cfg.data.cache_eval,
        validation_needs_intervals=cfg.eval.validation_metric == "frame_auc",
        exclude=cfg.data.exclude,
        exclude_failed=cfg.data.exclude_failed,
        allow_partial=cfg.data.allow_partial,
        dataset_roots=vars(cfg.paths),
    )
    headline = headline_metric(cfg.eval.metric, data.info.dataset)
    ctx = start_run(cfg, stage=STAGE)
    try:
        precision = Precision(cfg.precision, ctx.device)
        results = fit(MGFNTask(cfg, data, headline, ctx, precision), ctx, cfg=cfg, stage=STAGE, precision=precision,
                      log_every=cfg.run.log_every)
    finally:
        ctx.finish()
    if ctx.dist.is_main:
        left = results["videos_left_out"]
        note = ((" PARTIAL result:" if results["partial"] else "") + f" {len(left)} video(s) left out "
                f"({', '.join(r['name'] for r in left[:5])}{', ...' if len(left) > 5 else ''});") if left else ""
        print(f"[anomaly] {results['test']['headline']['metric']} = {100 * results['test']['headline']['value']:.2f} "
              f"(epoch {results['selection']['epoch']}, selected on {results['selection']['metric'] or 'last epoch'});{note} "
              f"results in {ctx.run_dir / 'results.json'}", flush=True)
    return results
