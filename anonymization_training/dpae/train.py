"""``run(cfg)`` of the DP autoencoder training: pick videos, check the DP budget, cut frames, fit, export the halves.

Order (every check that needs no decoding comes first):

1. the anomaly dataset's training videos, ``data.videos_per_class`` per class of ``data.classes``;
2. frame counts from the containers, the split sizes, and from them the sampling rate and
   steps: the DP settings (noise multiplier, a target epsilon the accountant cannot reach)
   are refused here, before any frame is decoded;
3. the frames, cut to ``data.frame_size`` as the camera cuts them;
4. :class:`~anonymization_training.dpae.task.DPAETask` on the one training loop (resumable,
   early stopping, selection on validation MSE), test metrics of the selected epoch, and the
   camera's ``encoder.pt`` / the server's ``decoder.pt`` written into the run directory.
"""

from __future__ import annotations

import os

from anonymization_training.dpae.config import DPAEStageConfig
from anonymization_training.dpae.task import (
    DPAEConfig,
    DPAETask,
    frame_counts,
    load_frames,
    pick_videos,
    split_sizes,
)
from aux_code.config import ConfigError
from aux_code.datasets.registry import get_anomaly_dataset
from aux_code.dp import DPError, sampling_schedule, validate_settings
from aux_code.fit import fit
from aux_code.precision import Precision
from aux_code.training import start_run

STAGE = "dpae"


def task_config(cfg: DPAEStageConfig) -> DPAEConfig:
    """The task's explicit arguments from the stage config."""
    d, p, o, e = cfg.data, cfg.dp, cfg.optim, cfg.eval
    return DPAEConfig(model=cfg.registry_name, optimizer=o.optimizer, private=p.private, lr=o.lr,
                      noise_multiplier=p.noise_multiplier, max_grad_norm=p.max_grad_norm, target_epsilon=p.target_epsilon,
                      delta=p.delta, accountant=p.accountant, batch_size=o.batch_size, epochs=o.epochs,
                      patience=e.patience, quality_patience=e.quality_patience, split=tuple(d.split_fractions),
                      eval_batch_size=e.batch_size, seed=cfg.run.seed, split_seed=d.validation_seed)


def training_videos(cfg: DPAEStageConfig) -> list:
    """The chosen training videos (AnomalyVideo items), ``videos_per_class`` of each wanted class."""
    adapter = get_anomaly_dataset(cfg.data.dataset, getattr(cfg.paths, cfg.data.dataset))
    items = adapter.items("train")
    present = sorted({v.class_name for v in items})
    wanted = cfg.data.classes
    if wanted is not None:
        missing = [c for c in wanted if c not in present]
        if missing:
            raise ConfigError(f"data.classes names {missing}, which the {cfg.data.dataset} training split does not have; "
                              f"it has: {', '.join(present)}")
        items = [v for v in items if v.class_name in set(wanted)]
    return pick_videos(items, per_class=cfg.data.videos_per_class, seed=cfg.data.validation_seed)


def check_budget(cfg: DPAEStageConfig, n_frames: int) -> float | None:
    """The noise multiplier the training will use (None without DP); DPError (as a ConfigError naming the
    keys) for settings the accountant refuses, from the frame count alone."""
    tcfg = task_config(cfg)
    try:
        n_train = split_sizes(n_frames, tcfg.split)[0]
        sample_rate, steps = sampling_schedule(n_train, batch_size=min(tcfg.batch_size, n_train), epochs=tcfg.epochs)
        return validate_settings(tcfg.settings(), sample_rate=sample_rate, steps=steps)
    except (DPError, ValueError) as e:
        raise ConfigError(f"dp / optim settings on {n_frames} frames: {e}") from None


def run(cfg: DPAEStageConfig) -> dict:
    """The stage; returns results.json's dict."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("anonymization_training.dpae runs as a single process (Opacus's accountant is per process); "
                          "launch it without torchrun")
    videos = training_videos(cfg)
    counts = frame_counts([v.path for v in videos], stride=cfg.data.frame_stride,
                          max_per_video=cfg.data.max_frames_per_video)
    sigma = check_budget(cfg, sum(counts))
    ctx = start_run(cfg, stage=STAGE)
    try:
        size = (cfg.data.frame_size[0], cfg.data.frame_size[1])
        frames = load_frames([v.path for v in videos], size=size, crop_scale=cfg.data.crop_scale,
                             stride=cfg.data.frame_stride, max_per_video=cfg.data.max_frames_per_video)
        if ctx.dist.is_main:
            how = "no DP" if sigma is None else f"noise multiplier {sigma:.4g}, clip {cfg.dp.max_grad_norm}"
            print(f"[{STAGE}] {len(frames)} frames of {len(videos)} videos at {size[0]}x{size[1]}; "
                  f"{'dp-' if sigma is not None else ''}{cfg.optim.optimizer} ({how})", flush=True)
        task = DPAETask(task_config(cfg), frames, device=ctx.device, export_dir=ctx.run_dir,
                        data_info={"frame_size": list(size), "crop_scale": cfg.data.crop_scale,
                                   "videos": [str(v.path) for v in videos], "frames_per_video": counts})
        results = fit(task, ctx, cfg=cfg, stage=STAGE, precision=Precision("fp32", ctx.device),
                      log_every=cfg.run.log_every)
        if ctx.dist.is_main:
            t, p = results["test"], results["privacy"]
            eps = "inf (no DP)" if p["epsilon"] is None else f"{p['epsilon']:.4g} at delta {p['delta']:g}"
            print(f"[{STAGE}] test SSIM {t['ssim']:.4f}, PSNR {t['psnr']:.2f} dB, MSE {t['mse']:.5f}; epsilon {eps}; "
                  f"camera file {results['files']['encoder']}, server file {results['files']['decoder']}", flush=True)
        return results
    finally:
        ctx.finish()
