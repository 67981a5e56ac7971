"""``run(cfg)`` of the two-stream detector: videos, annotations, anonymizer, cached frames, fit, test.

Order (every check that needs no decoding comes first):

1. UCF-Crime's training and test videos; a validation set carved per video label from the
   training videos (aux_code.datasets.carve_validation, ``data.validation_seed``);
2. the UCFCrime2Local-style hard / soft annotation of every abnormal training video (a missing
   or malformed file stops the run naming it), the test videos' frame labels;
3. the anonymizer (a dpae pair must have been trained at ``data.input_size``) and the ImageNet
   file when one is named;
4. per video, the sampled frames, flow images and bags (two_stream_detection.data; cached);
5. :class:`~two_stream_detection.task.TwoStreamTask` on the one training loop (resumable,
   early stopping, selection on validation FL-AUC), then the test metrics and test_scores.npz.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from aux_code.checkpoint import file_digest
from aux_code.config import ConfigError, resolve_under
from aux_code.datasets import carve_validation
from aux_code.datasets.ucf_crime2local import HARD, UCFCrime2Local
from aux_code.datasets.ucf_crime import UCFCrime
from aux_code.fit import fit
from aux_code.precision import Precision
from aux_code.training import start_run
from two_stream_detection.config import TwoStreamConfig
from two_stream_detection.data import FrameSpec, concat, eval_kinds, sample_indices, video_frames
from two_stream_detection.task import TwoStreamTask, TwoStreamTaskConfig

STAGE = "two_stream"


def task_config(cfg: TwoStreamConfig) -> TwoStreamTaskConfig:
    lab, o, e = cfg.labels, cfg.optim, cfg.eval
    return TwoStreamTaskConfig(epochs=o.epochs, lr=o.lr, weight_decay=o.weight_decay, batch_size=o.batch_size,
                               mining=cfg.mining.enabled, alpha=cfg.mining.alpha, soft_frames=lab.soft_frames,
                               soft_target=lab.soft_target, normal_weight=lab.normal_weight,
                               anomaly_weight=lab.anomaly_weight, eval_batch_size=e.batch_size, patience=e.stop_patience,
                               tau=e.tau, reactivity=e.reactivity, upper=e.upper, lower=e.lower, threshold=e.threshold,
                               resamples=e.resamples, seed=cfg.run.seed)


def model_spec(cfg: TwoStreamConfig) -> dict:
    m = cfg.model
    return {"backbone": m.backbone, "streams": m.streams, "bag_dim": cfg.bag.num_classes if cfg.bag.enabled else 0,
            "hidden": m.hidden, "dropout": m.head_dropout}


def _limited(items: list, limit: int | None) -> list:
    if limit is None:
        return items
    out = []
    for label in (1, 0):
        out += sorted((v for v in items if v.label == label), key=lambda v: v.name)[:limit]
    return sorted(out, key=lambda v: v.name)


def split_videos(cfg: TwoStreamConfig) -> tuple[UCFCrime, list, list, list]:
    """(adapter, train, validation, test) AnomalyVideo lists; validation is carved from training."""
    adapter = UCFCrime(cfg.paths.ucf_crime)
    train_all = _limited(adapter.items("train"), cfg.data.videos_per_label)
    test = _limited(adapter.items("test"), cfg.data.videos_per_label)
    train, val = carve_validation(train_all, fraction=cfg.data.validation_fraction, seed=cfg.data.validation_seed,
                                  key=lambda v: v.name, stratify=lambda v: v.label)
    for what, part in (("training", train), ("validation", val)):
        if {v.label for v in part} != {0, 1}:
            raise ConfigError(f"data.validation_fraction = {cfg.data.validation_fraction} leaves the {what} videos "
                              f"without {'abnormal' if all(v.label == 0 for v in part) else 'normal'} ones "
                              f"({len(train_all)} training videos)")
    return adapter, train, val, test


def _anonymizer(cfg: TwoStreamConfig, device):
    if cfg.anonymizer.method == "raw":
        return None
    from aux_code.anonymizers import build_frame_anonymizer

    anonymizer = build_frame_anonymizer(cfg.anonymizer, runs_root=cfg.paths.runs, device=device)
    d = anonymizer.describe()
    if cfg.anonymizer.method == "dpae":
        # The pair reconstructs well only frames cut as its training frames were.
        trained, crop = d.get("frame_size"), d.get("crop_scale")
        if trained is not None and list(trained) != list(cfg.data.input_size):
            raise ConfigError(f"anonymizer: the DP-AE pair {cfg.anonymizer.encoder} was trained at {list(trained)} frames, "
                              f"but data.input_size = {cfg.data.input_size}: set data.input_size={list(trained)}")
        if crop is not None and abs(float(crop) - cfg.data.center_crop) > 1e-9:
            raise ConfigError(f"anonymizer: the DP-AE pair {cfg.anonymizer.encoder} was trained on crop_scale {crop} frames, "
                              f"but data.center_crop = {cfg.data.center_crop}: set data.center_crop={crop}")
    return anonymizer


def run(cfg: TwoStreamConfig) -> dict:
    """The stage; returns results.json's dict."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("two_stream_detection runs as a single process (its candidate batches are not sharded); "
                          "launch it without torchrun")
    adapter, train, val, test = split_videos(cfg)
    annotations = UCFCrime2Local(cfg.paths.ucf_crime, folder=cfg.data.annotations)
    from aux_code.video import probe

    info = {v.name: probe(v.path) for v in train + val + test}
    kinds = {v.name: (annotations.kinds(v.name, info[v.name].num_frames) if v.label
                      else np.zeros(info[v.name].num_frames, np.int8)) for v in train + val}
    test_labels = {v.name: adapter.frame_labels(v, info[v.name].num_frames) for v in test}
    weights = None
    if cfg.model.imagenet_weights is not None:
        weights = resolve_under(cfg.paths.weights, cfg.model.imagenet_weights)
        if not weights.is_file():
            raise ConfigError(f"model.imagenet_weights = {cfg.model.imagenet_weights}: {weights} does not exist (a local ImageNet ResNet file)")
    ctx = start_run(cfg, stage=STAGE)
    try:
        anonymizer = _anonymizer(cfg, ctx.device)
        size = (cfg.data.input_size[0], cfg.data.input_size[1])
        spec = FrameSpec(frame_size=size, crop_scale=cfg.data.center_crop, flow_bound=cfg.flow.bound,
                         flow_params={"winsize": cfg.flow.winsize, "levels": cfg.flow.levels},
                         bag=cfg.bag.source if cfg.bag.enabled else None, bag_classes=cfg.bag.num_classes,
                         anonymizer=anonymizer.describe() if anonymizer is not None else {"method": "raw"},
                         batch=cfg.eval.batch_size)
        cache_dir = ctx.run_dir / "cache" if cfg.data.cache_dir is None else resolve_under(cfg.paths.runs, cfg.data.cache_dir)
        detector = None
        if cfg.bag.enabled and cfg.bag.source == "hog":
            from aux_code.anonymizers import HOGPersonDetector

            detector = HOGPersonDetector()
        needs_boxes = (cfg.bag.enabled and cfg.bag.source == "gt") or (
            anonymizer is not None and anonymizer.needs_boxes and anonymizer.box_source == "gt")
        bag_dim = cfg.bag.num_classes if cfg.bag.enabled else 0
        started = time.perf_counter()

        def frames_of(videos: list, *, training: bool):
            parts, ks, fr, labels = [], [], [], []
            for v in videos:
                n = info[v.name].num_frames
                if training:
                    k = kinds[v.name]
                    idx = sample_indices(k, fps=info[v.name].fps, normal_fps=cfg.data.normal_fps,
                                         abnormal_fps=cfg.data.abnormal_fps)
                    y = (k == HARD).astype(np.int8)
                else:
                    y = (kinds[v.name] == HARD).astype(np.int8) if v.name in kinds else test_labels[v.name].astype(np.int8)
                    k = kinds[v.name] if v.name in kinds else eval_kinds(y)
                    idx = np.arange(0, n, cfg.data.eval_stride, dtype=np.int64)
                boxes = adapter.person_boxes(v, n) if needs_boxes else None
                parts.append(video_frames(v.path, idx, spec, anonymizer=anonymizer, boxes=boxes, detector=detector,
                                          cache_dir=cache_dir, device=ctx.device))
                ks.append(k[idx])
                fr.append(idx)
                labels.append(y)
            return concat(parts, ks, fr, names=[v.name for v in videos], labels=[v.label for v in videos],
                          num_frames=[info[v.name].num_frames for v in videos], frame_labels=labels,
                          stride=1 if training else cfg.data.eval_stride, size=size, bag_dim=bag_dim)

        train_set = frames_of(train, training=True)
        val_set = frames_of(val, training=False)
        test_set = frames_of(test, training=False)
        prep_s = time.perf_counter() - started
        n_soft = int((train_set.kind == 1).sum())
        n_hard = int((train_set.kind == HARD).sum())
        if ctx.dist.is_main:
            print(f"[{STAGE}] {len(train)} / {len(val)} / {len(test)} train / val / test videos; {len(train_set)} training "
                  f"frames ({n_hard} hard, {n_soft} soft anomalies), {len(val_set)} / {len(test_set)} scored val / test "
                  f"frames at {size[0]}x{size[1]}; frames and flow ready in {prep_s:.1f} s ({cache_dir})", flush=True)
        digests = {p.name: file_digest(p) for p in (annotations.path(v.name) for v in train + val if v.label)}
        data_info = {"frame_size": list(size), "anonymizer": spec.anonymizer, "train_videos": [v.name for v in train],
                     "val_videos": [v.name for v in val], "annotation_digests": digests,
                     "train_frames": {"hard": n_hard, "soft": n_soft, "normal": len(train_set) - n_hard - n_soft}}
        task = TwoStreamTask(task_config(cfg), model_spec(cfg), train_set, val_set, test_set, device=ctx.device,
                             export_dir=ctx.run_dir, data_info=data_info, weights=weights,
                             freeze_backbones=cfg.model.freeze_backbones)
        results = fit(task, ctx, cfg=cfg, stage=STAGE, precision=Precision(cfg.precision, ctx.device),
                      log_every=cfg.run.log_every)
        if ctx.dist.is_main:
            t = results["test"]
            ci = t.get("fl_auc_ci", {})
            shown = f" [{ci['low']:.4f}, {ci['high']:.4f}]" if "low" in ci else ""
            print(f"[{STAGE}] test FL-AUC {t['fl_auc']:.4f}{shown}, VL-F1 {t['vl_f1']:.4f} "
                  f"({t['videos']} videos); {Path(results['test_scores'])}", flush=True)
        return results
    finally:
        ctx.finish()
