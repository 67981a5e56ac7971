"""Stage 2: privacy evaluation. ``run(cfg)`` is the whole stage.

task ``target`` (the VISPR protocol of SPAct / TeD-SPAD):

1. build the frozen anonymizer and the anonymized train/val/test images (from the cache when
   its key matches: anonymizer description incl. checkpoint digest, resolution, split content);
2. train a fresh target model fB' (BCE-with-logits, Adam, warm-up, divide-by-5 on plateau),
   evaluating validation cMAP every ``eval.every`` epochs; best.pt keeps the best epoch
   (validation carved from train; the test split is never looked at while training);
3. load best.pt and score the test split once: cMAP, per-attribute AP, macro F1 on sigmoid
   probabilities, and the privacy reduction against the raw run (``eval.compare_to``); the
   test labels and logits go to test_predictions.npz (the reproduce script's intervals);
4. image-level leakage on the test split (SSIM / PSNR / MSE to the original, Haar faces
   before/after) and on scikit-image's astronaut photograph;
5. ``attackers.run`` beyond scratch: the other attackers (finetune_raw, other_arch; see
   privacy_training.attackers) on the same images, each with its test cMAP and bootstrap
   interval in ``attackers`` and the highest in ``worst_case``. Box methods report per split
   how many images got no box at all (``boxes``).

task ``probe`` (paper Table 1): the same cached images, each repeated T times as a clip
through fT, an MLP probe on the pooled features, selected on validation, test cMAP (and
test_predictions.npz, as for the target model).

Rerunning the same command resumes the target model from last.pt; a finished run only
re-evaluates. results.json is written last.

Both tasks (and every attacker) also run under ``torchrun --nproc_per_node N``
(docs/multi_gpu.md): ``optim.batch_size`` / ``probe.batch_size`` stay global batches sharded
over the ranks (privacy_training.target.TargetTask), the trained model is a
DistributedDataParallel wrapper, rank 0 builds the image cache and alone logs and writes files.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from einops import rearrange

from aux_code.anonymizers import AnonymizerSection, FrameAnonymizer, build_frame_anonymizer
from aux_code.fit import fit
from aux_code.datasets.vispr import VISPR
from aux_code.models.mgfn import count_parameters
from aux_code.precision import Precision
from aux_code.runtime import check_batches
from aux_code.training import RunContext, start_run
from aux_code.transforms import ClipEval, to_float_image
from privacy_training.attackers import build_paper_target, run_target_attackers
from privacy_training.config import PrivacyConfig
from privacy_training.data import PrivacyData, load_privacy_data, to_uint8
from privacy_training.leakage import count_faces, face_summary, similarity_summary
from privacy_training.probe import ProbeTask, extract_features
from privacy_training.report import PREDICTIONS, CompareError, anonymizer_label, privacy_reduction, read_reference_cmap

STAGE = "privacy"


def _log(msg: str) -> None:
    # Under torchrun every rank runs the same code; one copy of each line is enough.
    if int(os.environ.get("RANK", "0")) == 0:
        print(msg, flush=True)


def _dataset(cfg: PrivacyConfig) -> VISPR:
    return VISPR(cfg.paths.vispr, val_fraction=cfg.data.validation_fraction, val_seed=cfg.data.validation_seed, on_error=cfg.data.on_label_error)


def _load_data(cfg: PrivacyConfig, fa: FrameAnonymizer, device: torch.device) -> tuple[VISPR, PrivacyData]:
    """The anonymized splits. Under torchrun rank 0 builds (or reads) the cache first and the other
    ranks then read it: one rank runs fA over the images and one writes the file."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    first = not distributed or not cfg.cache.enabled or torch.distributed.get_rank() == 0
    if not first:
        torch.distributed.barrier()
    out = _load_data_here(cfg, fa, device)
    if distributed and cfg.cache.enabled and first:
        torch.distributed.barrier()
    return out


def _load_data_here(cfg: PrivacyConfig, fa: FrameAnonymizer, device: torch.device) -> tuple[VISPR, PrivacyData]:
    dataset = _dataset(cfg)
    data = load_privacy_data(
        dataset,
        fa,
        resolution=cfg.clip.resolution,
        crop_scale=cfg.clip.crop_scale,
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


def _common_results(cfg: PrivacyConfig, fa: FrameAnonymizer, data: PrivacyData) -> dict:
    """Stage 2's part of results.json beside fit's run, run_dir, task, selection and config_hash."""
    return {
        "dataset": "VISPR",
        "vispr_root": str(cfg.paths.vispr),
        "anonymizer": fa.describe(),
        "anonymizer_label": anonymizer_label(fa.describe()),
        "resolution": cfg.clip.resolution,
        "counts": data.counts(),
        "boxes": None if not fa.needs_boxes else {"kind": fa.box_kind, "source": fa.box_source, **data.box_counts()},
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
    # Before the run folder and the image cache: a global batch the ranks cannot share is a config error.
    batch = ("probe.batch_size", cfg.probe.batch_size) if cfg.task == "probe" else ("optim.batch_size", cfg.optim.batch_size)
    check_batches(int(os.environ.get("WORLD_SIZE", "1")), [batch])
    ctx = start_run(cfg, stage=STAGE)
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


def _raw_images(cfg: PrivacyConfig, fa: FrameAnonymizer, data: PrivacyData, device: torch.device) -> PrivacyData:
    """The raw privacy images (finetune_raw's pre-training): this run's own when it is the raw method."""
    if fa.describe() == {"method": "raw"}:
        return data
    raw = build_frame_anonymizer(AnonymizerSection(method="raw"), runs_root=cfg.paths.runs, device=device)
    return _load_data(cfg, raw, device)[1]


def _run_target(cfg: PrivacyConfig, ctx: RunContext, fa: FrameAnonymizer, dataset: VISPR, data: PrivacyData) -> dict:
    device = ctx.device
    test = data.splits["test"]
    # Built first, as before there were other attackers: the scratch model's init draws the same numbers.
    model, spec = build_paper_target(cfg, len(dataset.attributes))

    def extra(test_report: dict) -> dict:
        reduction, compared = _comparison(cfg, test_report["cmap"])
        ctx.logger.log(0, {"test_cmap": test_report["cmap"], "test_macro_f1": test_report["macro_f1"]}, phase="test")
        return {**_common_results(cfg, fa, data), "privacy_reduction_pct": reduction, "compare_to": compared,
                "leakage": _leakage(cfg, fa, test) if cfg.leakage.enabled else None}

    results = run_target_attackers(cfg, ctx, model=model, spec=spec, data=data, attributes=dataset.attributes,
                                   raw_data=lambda: _raw_images(cfg, fa, data, device), scratch_extra=extra, log=_log)
    reduction = results["privacy_reduction_pct"]
    shown = "" if reduction is None else f", privacy reduction {reduction:.2f}% vs {results['compare_to']['raw_cmap'] * 100:.2f}"
    test_report = results["test"]
    _log(f"[privacy] test cMAP {100 * test_report['cmap']:.2f} (chance {100 * test_report['chance_cmap']:.2f}), "
         f"macro F1 {100 * test_report['macro_f1']:.2f}, epoch {results['selection']['epoch']} selected on val{shown}; "
         f"results in {ctx.run_dir / 'results.json'}")
    if len(results["attackers"]) > 1:
        worst = results["worst_case"]
        ci = worst["cmap_ci"]
        _log(f"[privacy] worst case over attackers ({', '.join(results['attackers'])}): {worst['attacker']}, test cMAP "
             f"{100 * worst['cmap']:.2f} [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}]")
    return results


def _anonymize_photo(cfg: PrivacyConfig, fa: FrameAnonymizer, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A photograph without ground truth through fA at leakage.astronaut_resolution.

    Returns (resized original, anonymized, boxes used) as RGB uint8 (R, R, 3). Person-box
    methods use the HOG detector here whatever anonymizer.boxes says (a photograph has no
    ground-truth boxes); face methods the Haar cascade, as everywhere.
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
        "hog_person_boxes": n_boxes if fa.box_kind == "person" else None,
        "haar_face_boxes": n_boxes if fa.box_kind == "face" else None,
    }


def _leakage(cfg: PrivacyConfig, fa: FrameAnonymizer, test) -> dict:
    """SSIM / PSNR / MSE and Haar faces on the test split, plus the astronaut photograph."""
    t0 = time.perf_counter()
    lk = cfg.leakage
    detector = {"scale_factor": lk.scale_factor, "min_neighbors": lk.min_neighbors, "min_size": lk.min_face}
    out: dict = {"similarity": similarity_summary(test.originals, test.images), "resolution": cfg.clip.resolution}
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
    model, _ = cfg.utility.load(cfg.paths)
    need = getattr(model, "min_frames", 1)
    if cfg.clip.clip_len < need:
        raise ValueError(f"clip.clip_len = {cfg.clip.clip_len} is below the {need} frames the utility model "
                         f"({cfg.utility.checkpoint or cfg.utility.weights}) needs")
    return model


def _run_probe(
    cfg: PrivacyConfig, ctx: RunContext, fa: FrameAnonymizer, dataset: VISPR, data: PrivacyData, utility: torch.nn.Module
) -> dict:
    device, p = ctx.device, cfg.probe
    t0 = time.perf_counter()
    feats = {
        name: extract_features(utility, split.images, clip_length=cfg.clip.clip_len, batch_size=p.feature_batch, device=device).to(device)
        for name, split in data.splits.items()
    }
    feature_time = time.perf_counter() - t0

    def extra(test_report: dict) -> dict:
        reduction, compared = _comparison(cfg, test_report["cmap"])
        u = cfg.utility
        utility_info = {"source": u.checkpoint or u.weights, "model_key": u.model_key if u.checkpoint else None,
                        "feature_dim": int(feats["train"].shape[1]), "clip_len": cfg.clip.clip_len,
                        "parameters": count_parameters(utility), "feature_time_s": round(feature_time, 3)}
        return {**_common_results(cfg, fa, data), "privacy_reduction_pct": reduction, "compare_to": compared,
                "utility": utility_info, "leakage": None}

    task = ProbeTask(features=feats, labels={name: split.labels.to(device) for name, split in data.splits.items()},
                     attributes=dataset.attributes, hidden=p.hidden, dropout=p.dropout, lr=p.lr, weight_decay=p.weight_decay,
                     epochs=p.epochs, batch_size=p.batch_size, seed=cfg.run.seed, f1_threshold=cfg.eval.f1_threshold, extra=extra,
                     predictions=ctx.run_dir / PREDICTIONS, dist=ctx.dist, sync_bn=cfg.ddp.sync_batchnorm)
    results = fit(task, ctx, cfg=cfg, stage=STAGE, precision=Precision("fp32", device))
    _log(f"[privacy] probe test cMAP {100 * results['test']['cmap']:.2f} (chance {100 * results['test']['chance_cmap']:.2f}) on "
         f"{results['utility']['feature_dim']}-d features of {cfg.utility.checkpoint or cfg.utility.weights}; results in {ctx.run_dir / 'results.json'}")
    return results
