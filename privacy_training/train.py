"""Stage 2: privacy evaluation. ``run(cfg)`` is the whole stage.

task ``target`` (the VISPR protocol of SPAct / TeD-SPAD):

1. build the frozen anonymizer and the anonymized train/val/test images (from the cache when
   its key matches: anonymizer description incl. checkpoint digest, resolution, split content);
2. train a fresh target model fB' (BCE-with-logits, Adam, warm-up, divide-by-5 on plateau),
   evaluating validation cMAP every ``eval.every`` epochs; best.pt keeps the best epoch
   (validation carved from train; the test split is never looked at while training);
3. load best.pt and score the test split once: cMAP, per-attribute AP, macro F1 on sigmoid
   probabilities, and the privacy reduction against the raw run (``eval.compare_to``);
4. image-level leakage on the test split (SSIM / PSNR / MSE to the original, Haar faces
   before/after) and on scikit-image's astronaut photograph.

task ``probe`` (paper Table 1): the same cached images, each repeated T times as a clip
through fT, an MLP probe on the pooled features, selected on validation, test cMAP.

Rerunning the same command resumes the target model from last.pt; a finished run only
re-evaluates. results.json is written last.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from einops import rearrange

from aux_code.anonymizers import FrameAnonymizer, build_frame_anonymizer
from aux_code.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from aux_code.config import config_hash, resolve_under, to_dict
from aux_code.datasets.vispr import VISPR
from aux_code.models import build_target, build_utility
from aux_code.models.mgfn import count_parameters
from aux_code.models.stored import load_stored_model, pack_model
from aux_code.training import BEST, LAST, RunContext, plain_config, start_run
from aux_code.transforms import ClipEval, to_float_image
from privacy_training.config import PrivacyConfig
from privacy_training.data import PrivacyData, PrivacyDataError, load_privacy_data, to_uint8
from privacy_training.leakage import count_faces, face_summary, similarity_summary
from privacy_training.probe import extract_features, probe_logits, train_probe
from privacy_training.report import CompareError, anonymizer_label, privacy_reduction, read_reference_cmap, write_results
from privacy_training.target import PlateauSchedule, predict_logits, score_split, train_epoch

STAGE = "privacy"
PROBE_FILE = "probe.pt"


def experiment_hash(cfg: PrivacyConfig) -> str:
    """Hash of what decides the numbers: every section but paths and the run plumbing."""
    d = to_dict(cfg)
    d.pop("paths")
    d["run"] = {"seed": cfg.run.seed, "deterministic": cfg.run.deterministic}
    return config_hash(d)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _dataset(cfg: PrivacyConfig) -> VISPR:
    return VISPR(cfg.paths.vispr, val_fraction=cfg.data.val_fraction, val_seed=cfg.data.val_seed, on_error=cfg.data.on_label_error)


def _load_data(cfg: PrivacyConfig, fa: FrameAnonymizer, device: torch.device) -> tuple[VISPR, PrivacyData]:
    dataset = _dataset(cfg)
    data = load_privacy_data(
        dataset,
        fa,
        resolution=cfg.data.resolution,
        crop_scale=cfg.data.crop_scale,
        device=device,
        batch=cfg.data.anonymize_batch,
        cache_dir=cfg.cache_dir() if cfg.cache.enabled else None,
        max_failure_fraction=cfg.data.max_decode_failures,
        log=_log,
    )
    for name, failures in data.failures().items():
        for image_id, message in failures:
            _log(f"[privacy] skipped undecodable {name} image {image_id}: {message}")
    for message in data.label_problems:
        _log(f"[privacy] skipped label entry: {message}")
    return dataset, data


def _comparison(cfg: PrivacyConfig, test_cmap: float) -> tuple[float | None, dict | None]:
    """(privacy reduction %, what it was compared with) for eval.compare_to, or (None, None)."""
    path = cfg.compare_path()
    if path is None:
        return None, None
    try:
        raw = read_reference_cmap(path)
    except CompareError as e:
        # The headline cMAP stands on its own; only the derived reduction is missing.
        _log(f"[privacy] warning: {e}")
        return None, {"path": str(path), "error": str(e)}
    return privacy_reduction(raw, test_cmap), {"path": str(path), "raw_cmap": raw}


def _common_results(cfg: PrivacyConfig, ctx: RunContext, fa: FrameAnonymizer, data: PrivacyData) -> dict:
    return {
        "run": cfg.run.name,
        "run_dir": str(ctx.run_dir),
        "task": cfg.task,
        "dataset": "VISPR",
        "vispr_root": str(cfg.paths.vispr),
        "anonymizer": fa.describe(),
        "anonymizer_label": anonymizer_label(fa.describe()),
        "config_hash": experiment_hash(cfg),
        "resolution": cfg.data.resolution,
        "counts": data.counts(),
        "decode_failures": {name: [list(f) for f in fl] for name, fl in data.failures().items()},
        "label_problems": data.label_problems,
        "cache": {
            "key": data.key,
            "path": None if data.cache_path is None else str(data.cache_path),
            "hit": data.cache_hit,
            "prepare_time_s": round(data.prepare_time_s, 3),
        },
    }


def run(cfg: PrivacyConfig) -> dict:
    """The stage (see the module docstring). Returns the results dict (also in results.json)."""
    ctx = start_run(cfg, stage=STAGE, select="max")
    try:
        fa = build_frame_anonymizer(cfg.anonymizer, runs_root=cfg.paths.runs, device=ctx.device)
        if cfg.task == "probe":
            # Load fT before the (possibly long) data preparation: a wrong checkpoint fails at once.
            utility = _build_probe_utility(cfg).to(ctx.device)
            dataset, data = _load_data(cfg, fa, ctx.device)
            return _run_probe(cfg, ctx, fa, dataset, data, utility)
        dataset, data = _load_data(cfg, fa, ctx.device)
        return _run_target(cfg, ctx, fa, dataset, data)
    finally:
        ctx.finish()


# --------------------------------------------------------------------------- target task


def _build_target_model(cfg: PrivacyConfig, num_classes: int) -> tuple[torch.nn.Module, dict]:
    spec = {"name": cfg.model.name, "num_classes": num_classes}
    weights = None if cfg.model.weights is None else resolve_under(cfg.paths.weights, cfg.model.weights)
    # A public init (ImageNet: 1000 classes, SimCLR: none) never has the 7-way head: start it fresh.
    model = build_target(**spec, weights=weights, weights_key=cfg.model.weights_key, reset_head=weights is not None)
    return model, spec


def _run_target(cfg: PrivacyConfig, ctx: RunContext, fa: FrameAnonymizer, dataset: VISPR, data: PrivacyData) -> dict:
    device = ctx.device
    attributes = dataset.attributes
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    model, spec = _build_target_model(cfg, len(attributes))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    schedule = PlateauSchedule(
        optimizer, lr=cfg.optim.lr, warmup_epochs=cfg.optim.warmup_epochs, factor=cfg.optim.plateau_factor,
        patience=cfg.optim.plateau_patience, min_lr=cfg.optim.min_lr,
    )
    generator = torch.Generator().manual_seed(cfg.run.seed)
    start_epoch, epoch_times = 0, []
    state = ctx.resume_or(None)
    if state is not None:
        if state.get("cache_key") != data.key:
            raise PrivacyDataError(
                f"{ctx.run_dir / LAST} was trained on other images (cache key {state.get('cache_key')} vs {data.key}: "
                "anonymizer, resolution or dataset changed); use a new run.name or run.resume=false"
            )
        load_state_dict_strict(model, state["models"]["target"]["state_dict"], source=f"resume checkpoint {ctx.run_dir / LAST}")
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        start_epoch, epoch_times = int(state["epoch"]), list(state.get("epoch_times", []))
        _log(f"[privacy] resuming {ctx.run_dir} after epoch {start_epoch}/{cfg.optim.epochs}")

    # The cache is small (uint8): move it once so a step is a gather on the device.
    train_x, train_y = train.images.to(device), train.labels.to(device)
    val_y = val.labels.numpy()
    for epoch in range(start_epoch, cfg.optim.epochs):
        lr = schedule.start_epoch(epoch)
        stats = train_epoch(
            model, optimizer, train_x, train_y, batch_size=cfg.optim.batch_size, min_crop_scale=cfg.augment.min_crop_scale,
            flip=cfg.augment.flip, generator=generator, epoch=epoch,
        )
        epoch_times.append(stats["epoch_time_s"])
        done = epoch + 1
        metric = None
        if done % cfg.eval.every == 0 or done == cfg.optim.epochs:
            val_logits = predict_logits(model, val.images, batch_size=cfg.eval.batch_size, device=device)
            metric = score_split(val_logits, val_y, attributes=attributes, f1_threshold=cfg.eval.f1_threshold)["cmap"]
            schedule.observe(metric, epoch)
            ctx.logger.log(done, {"val_cmap": metric}, phase="val")
        ctx.logger.log(done, {**stats, "lr": lr}, phase="epoch")
        ctx.save(
            {
                "models": {"target": pack_model("target", spec, model)},
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": generator.get_state(),
                "cache_key": data.key,
                "epoch_times": epoch_times,
                "config": plain_config(cfg),
            },
            epoch=done,
            metric=metric,
        )
        _log(f"[privacy] epoch {done}/{cfg.optim.epochs} loss {stats['loss']:.4f} lr {lr:.2e} "
             f"({stats['epoch_time_s']:.2f} s)" + ("" if metric is None else f" val cMAP {100 * metric:.2f}"))

    best = load_checkpoint(ctx.run_dir / BEST, what="selected checkpoint")
    load_state_dict_strict(model, best["models"]["target"]["state_dict"], source=f"selected checkpoint {ctx.run_dir / BEST}")
    selected_epoch = int(best["epoch"])
    val_report = score_split(
        predict_logits(model, val.images, batch_size=cfg.eval.batch_size, device=device), val_y,
        attributes=attributes, f1_threshold=cfg.eval.f1_threshold,
    )
    test_report = score_split(
        predict_logits(model, test.images, batch_size=cfg.eval.batch_size, device=device), test.labels.numpy(),
        attributes=attributes, f1_threshold=cfg.eval.f1_threshold,
    )
    reduction, compared = _comparison(cfg, test_report["cmap"])
    results = _common_results(cfg, ctx, fa, data)
    results.update(
        selection={
            "metric": "val_cmap",
            "value": ctx.best.best,
            "epoch": selected_epoch,
            "checkpoint": BEST,
            "rule": "max validation cMAP over evaluated epochs (validation carved from train; test never used)",
        },
        validation=val_report,
        test=test_report,
        privacy_reduction_pct=reduction,
        compare_to=compared,
        epochs=cfg.optim.epochs,
        timing={
            "mean_epoch_s": float(np.mean(epoch_times)) if epoch_times else None,
            "train_time_s": float(np.sum(epoch_times)),
        },
        model={**spec, "parameters": count_parameters(model), "init": cfg.model.weights or "scratch"},
        leakage=_leakage(cfg, fa, test) if cfg.leakage.enabled else None,
    )
    if ctx.dist.is_main:
        write_results(ctx.run_dir, results)
        ctx.logger.log(selected_epoch, {"test_cmap": test_report["cmap"], "test_macro_f1": test_report["macro_f1"]}, phase="test")
    extra = "" if reduction is None else f", privacy reduction {reduction:.2f}% vs {compared['raw_cmap'] * 100:.2f}"
    _log(f"[privacy] test cMAP {100 * test_report['cmap']:.2f} (chance {100 * test_report['chance_cmap']:.2f}), "
         f"macro F1 {100 * test_report['macro_f1']:.2f}, epoch {selected_epoch} selected on val{extra}; "
         f"results in {ctx.run_dir / 'results.json'}")
    return results


def _anonymize_photo(cfg: PrivacyConfig, fa: FrameAnonymizer, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A photograph without ground truth through fA at leakage.astronaut_resolution.

    Returns (resized original, anonymized, person boxes used) as RGB uint8 (R, R, 3). Box
    methods use the HOG detector here whatever anonymizer.boxes says: a photograph has no
    ground-truth boxes.
    """
    res = cfg.leakage.astronaut_resolution
    frame = ClipEval(res, scale=1.0)(to_float_image(image))  # (C, R, R)
    resized = to_uint8(frame)
    n_boxes = 0
    work = frame[None]
    if fa.needs_boxes:
        boxes = fa.detect(rearrange(resized, "c h w -> h w c").numpy())
        n_boxes = len(boxes)
        work = fa.apply_boxes(work, [boxes])
    with torch.inference_mode():
        out = to_uint8(fa.model(work.to(_model_device(fa.model))).float()).cpu()
    as_hwc = lambda t: rearrange(t, "c h w -> h w c").numpy()  # noqa: E731
    return as_hwc(resized), as_hwc(out[0]), n_boxes


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _astronaut(cfg: PrivacyConfig, fa: FrameAnonymizer, detector: dict) -> dict:
    """Haar faces on scikit-image's astronaut photograph before and after fA."""
    try:
        from skimage import data as skdata
    except ImportError:
        # scikit-image is a dev extra; the test-split metrics do not need it.
        return {"image": "skimage.data.astronaut", "skipped": "scikit-image is not installed (pip install -e '.[dev]')"}
    original, anonymized, n_boxes = _anonymize_photo(cfg, fa, skdata.astronaut())
    return {
        "image": "skimage.data.astronaut",
        "resolution": cfg.leakage.astronaut_resolution,
        "faces_before": count_faces(original, **detector),
        "faces_after": count_faces(anonymized, **detector),
        "hog_person_boxes": n_boxes if fa.needs_boxes else None,
    }


def _leakage(cfg: PrivacyConfig, fa: FrameAnonymizer, test) -> dict:
    """SSIM / PSNR / MSE and Haar faces on the test split, plus the astronaut photograph."""
    t0 = time.perf_counter()
    lk = cfg.leakage
    detector = {"scale_factor": lk.scale_factor, "min_neighbors": lk.min_neighbors, "min_size": lk.min_face}
    out: dict = {"similarity": similarity_summary(test.originals, test.images), "resolution": cfg.data.resolution}
    if lk.face_detector:
        out["faces"] = {
            "detector": "OpenCV Haar haarcascade_frontalface_default",
            "params": detector,
            "before": face_summary(test.originals, **detector),
            "after": face_summary(test.images, **detector),
        }
        if lk.astronaut:
            out["astronaut"] = _astronaut(cfg, fa, detector)
    out["time_s"] = round(time.perf_counter() - t0, 3)
    return out


# --------------------------------------------------------------------------- probe task


def _build_probe_utility(cfg: PrivacyConfig) -> torch.nn.Module:
    p = cfg.probe
    if p.checkpoint is not None:
        path = resolve_under(cfg.paths.runs, p.checkpoint)
        model, _ = load_stored_model(path, p.model_key, config_key="probe.checkpoint")
    else:
        path = resolve_under(cfg.paths.weights, p.weights)
        model = build_utility(name=p.utility_name, weights=path)
    need = getattr(model, "min_frames", 1)
    if p.clip_length < need:
        raise ValueError(f"probe.clip_length = {p.clip_length} is below the {need} frames the utility model from {path} needs")
    return model.eval()


def _run_probe(
    cfg: PrivacyConfig, ctx: RunContext, fa: FrameAnonymizer, dataset: VISPR, data: PrivacyData, utility: torch.nn.Module
) -> dict:
    device, p = ctx.device, cfg.probe
    attributes = dataset.attributes
    t0 = time.perf_counter()
    feats = {
        name: extract_features(utility, split.images, clip_length=p.clip_length, batch_size=p.feature_batch, device=device).to(device)
        for name, split in data.splits.items()
    }
    feature_time = time.perf_counter() - t0
    labels = {name: split.labels.to(device) for name, split in data.splits.items()}
    t1 = time.perf_counter()
    probe, selection = train_probe(
        feats["train"], labels["train"], feats["val"], labels["val"], attributes=attributes, hidden=p.hidden,
        dropout=p.dropout, lr=p.lr, weight_decay=p.weight_decay, epochs=p.epochs, batch_size=p.batch_size,
        generator=torch.Generator().manual_seed(cfg.run.seed),
    )
    probe_time = time.perf_counter() - t1
    test_report = score_split(probe_logits(probe, feats["test"]), data.splits["test"].labels.numpy(), attributes=attributes, f1_threshold=cfg.eval.f1_threshold)
    val_report = score_split(probe_logits(probe, feats["val"]), data.splits["val"].labels.numpy(), attributes=attributes, f1_threshold=cfg.eval.f1_threshold)
    reduction, compared = _comparison(cfg, test_report["cmap"])
    if ctx.dist.is_main:
        save_checkpoint({"probe": probe.state_dict(), "selection": selection, "config": plain_config(cfg)}, ctx.run_dir / PROBE_FILE)
        for i, value in enumerate(selection["history"]):
            ctx.logger.log(i + 1, {"val_cmap": value}, phase="probe_val")
    results = _common_results(cfg, ctx, fa, data)
    results.update(
        selection={
            "metric": "val_cmap",
            "value": selection["val_cmap"],
            "epoch": selection["epoch"],
            "checkpoint": PROBE_FILE,
            "rule": "max validation cMAP over probe epochs (validation carved from train; test never used)",
        },
        validation=val_report,
        test=test_report,
        privacy_reduction_pct=reduction,
        compare_to=compared,
        utility={
            "source": p.checkpoint or p.weights,
            "model_key": p.model_key if p.checkpoint else None,
            "feature_dim": int(feats["train"].shape[1]),
            "clip_length": p.clip_length,
            "parameters": count_parameters(utility),
        },
        probe={"hidden": p.hidden, "epochs": p.epochs, "parameters": count_parameters(probe)},
        timing={"feature_time_s": round(feature_time, 3), "probe_time_s": round(probe_time, 3)},
        leakage=None,
    )
    if ctx.dist.is_main:
        write_results(ctx.run_dir, results)
    _log(f"[privacy] probe test cMAP {100 * test_report['cmap']:.2f} (chance {100 * test_report['chance_cmap']:.2f}) on "
         f"{results['utility']['feature_dim']}-d features of {p.checkpoint or p.weights}; results in {ctx.run_dir / 'results.json'}")
    return results
