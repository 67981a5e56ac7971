"""Attackers the anonymizer never saw: Wu et al.'s two-fold evaluation (TPAMI 2020) in stage 2.

The paper's protocol trains one target model fB' from scratch on the anonymized privacy-train
images and reports its test cMAP. An anonymizer can lower that number without removing the
information (issue 14: a global tint fooled the one budget model it was trained against), so
stage 2 can also train attackers that are stronger or built differently, on the same cached
anonymized images, and report the worst case:

=============  ===========================================================================
attacker       what it is
=============  ===========================================================================
scratch        the paper's target model (``model.*``, from ``model.weights``: null is scratch);
               its test cMAP stays the run's headline ``test.cmap``
finetune_raw   the same architecture first trained on the *raw* privacy-train images (the
               attacker who owns un-anonymized data), then fine-tuned on the anonymized ones;
               the raw pre-training is a run of its own under ``attackers.pretrain_dir``, one
               folder per hash of what decides it, so every method of a config reuses it
other_arch     another architecture (``attackers.other_model``, e.g. the depthwise-separable
               ``mobilenet_tiny``) trained from scratch
=============  ===========================================================================

Every attacker is a :class:`privacy_training.target.TargetTask` on the one loop
(aux_code.fit): same optimiser, schedule, augmentation and epochs, the epoch selected on the
validation split carved from train (the test split is never looked at while training), its own
run folder ``<run>/attackers/<name>/`` (resumable like the run itself; scratch keeps the run's
own folder and files) and its own ``test_predictions.npz``. Each attacker draws its random
numbers from ``run.seed`` inside an isolated RNG, so adding attackers leaves the scratch
attacker's numbers bit-identical.

results.json gains ``attackers`` ({name: test cMAP, its bootstrap interval over test images
(``bootstrap.*``, aux_code.stats), per-attribute AP, macro F1, selected epoch, model, files})
and ``worst_case`` (the attacker with the highest test cMAP, with its interval).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from aux_code.anonymizers import AnonymizerSection
from aux_code.checkpoint import atomic_write_json, file_digest, load_checkpoint, load_state_dict_strict
from aux_code.config import config_hash, resolve_under, to_dict, write_run_config
from aux_code.fit import fit
from aux_code.models import build_target
from aux_code.models.mgfn import count_parameters
from aux_code.precision import Precision
from aux_code.runtime import DistInfo, MetricLogger
from aux_code.stats import cmap_ci
from aux_code.training import BEST, RunContext, check_resumable, rng_state, set_rng_state
from privacy_training.config import PrivacyConfig
from privacy_training.data import PrivacyData, PreparedSplit
from privacy_training.report import PREDICTIONS
from privacy_training.target import TargetTask

STAGE = "privacy"
ATTACKERS: dict[str, str] = {
    "scratch": "the paper's target model (model.*) trained on the anonymized privacy-train images",
    "finetune_raw": "the paper's target model trained on the raw privacy-train images, then fine-tuned on the anonymized ones",
    "other_arch": "another architecture (attackers.other_model) trained from scratch on the anonymized privacy-train images",
}
# Bump when what decides a raw pre-training changes in a way its key does not show.
PRETRAIN_VERSION = 1


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Python, numpy and torch (CPU, and the device's when CUDA) seeded with ``seed`` inside, all
    restored on exit: an attacker neither depends on nor moves the random stream of the next one."""
    saved = rng_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        set_rng_state(saved)


def sub_context(parent: RunContext, run_dir: Path, *, resume: bool) -> RunContext:
    """A run context for one attacker's fit in ``run_dir`` (own checkpoints, metrics and best tracker)."""
    if parent.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    logger = MetricLogger(run_dir, enabled=parent.dist.is_main, tensorboard=False)
    return RunContext(run_dir=run_dir, dist=parent.dist, logger=logger, resume=resume)


# --------------------------------------------------------------------------- the models


def build_paper_target(cfg: PrivacyConfig, num_classes: int) -> tuple[nn.Module, dict]:
    """The paper's target model fB' of ``model.*`` (a public init's head is started fresh) and its spec."""
    spec = {"name": cfg.model.name, "num_classes": num_classes}
    weights = None if cfg.model.weights is None else resolve_under(cfg.paths.weights, cfg.model.weights)
    # A public init (ImageNet: 1000 classes, SimCLR: none) never has the 7-way head: start it fresh.
    model = build_target(**spec, weights=weights, weights_key=cfg.model.weights_key, reset_head=weights is not None)
    return model, spec


def build_other_arch(cfg: PrivacyConfig, num_classes: int) -> tuple[nn.Module, dict]:
    """``attackers.other_model`` from scratch, and its spec."""
    spec = {"name": cfg.attackers.other_model, "num_classes": num_classes}
    return build_target(**spec), spec


def finetune_start(cfg: PrivacyConfig, num_classes: int, checkpoint: Path) -> tuple[nn.Module, dict, dict]:
    """The paper's target model with the raw pre-training's selected weights loaded strictly:
    (model, spec, where its weights came from)."""
    model, spec = build_paper_target(cfg, num_classes)
    state = load_checkpoint(checkpoint, what="finetune_raw pre-training checkpoint")
    load_state_dict_strict(model, state["models"]["target"]["state_dict"], source=f"{checkpoint} [models][target]")
    init = {"from": "raw pre-training (attackers.pretrain_dir)", "checkpoint": str(checkpoint),
            "digest": file_digest(checkpoint), "epoch": int(state["epoch"])}
    return model, spec, init


# --------------------------------------------------------------------------- scoring


def predictions_ci(path: Path, test_cmap: float, cfg: PrivacyConfig) -> dict:
    """The bootstrap interval (over test images) of the cMAP in one attacker's test_predictions.npz."""
    with np.load(path, allow_pickle=False) as z:
        labels, logits = z["labels"], z["logits"]
    b = cfg.bootstrap
    ci = cmap_ci(labels, [logits], resamples=b.resamples, seed=b.seed, level=b.level)
    if abs(ci.estimate - test_cmap) > 1e-9:
        raise RuntimeError(f"{path}: its logits give cMAP {ci.estimate:.6f}, the attacker reported {test_cmap:.6f}")
    return dataclasses.asdict(ci)


def attacker_entry(name: str, test: Mapping, *, selected_epoch: int, model: Mapping, run_dir: Path, predictions: Path,
                   cfg: PrivacyConfig, seconds: float | None = None) -> dict:
    """One attacker's part of results.json: its test scores, interval, selected epoch and files."""
    return {
        "description": ATTACKERS[name],
        "cmap": test["cmap"],
        "cmap_ci": predictions_ci(predictions, test["cmap"], cfg),
        "chance_cmap": test["chance_cmap"],
        "macro_f1": test["macro_f1"],
        "per_attribute_ap": dict(test["per_attribute_ap"]),
        "excluded_attributes": list(test["excluded_attributes"]),
        "selected_epoch": selected_epoch,
        "model": dict(model),
        "run_dir": str(run_dir),
        "predictions": str(predictions),
        "time_s": None if seconds is None else round(seconds, 3),
    }


def worst_case(entries: Mapping[str, Mapping]) -> dict:
    """The attacker with the highest test cMAP (the first of the list on a tie), with its interval."""
    if not entries:
        raise ValueError("worst_case: no attacker ran")
    name = max(entries, key=lambda n: entries[n]["cmap"])
    return {"attacker": name, "cmap": entries[name]["cmap"], "cmap_ci": entries[name]["cmap_ci"]}


# --------------------------------------------------------------------------- the trainings


def _task(cfg: PrivacyConfig, model: nn.Module, spec: dict, splits: Mapping[str, PreparedSplit], *,
          attributes: tuple[str, ...], cache_key: str, dist: DistInfo, extra, predictions: Path | None,
          name: str, init=None) -> TargetTask:
    train, val, test = splits["train"], splits["val"], splits["test"]
    device = dist.device
    # The cache is small (uint8): move it once so a step is a gather on the device.
    return TargetTask(model.to(device), spec, images=train.images.to(device), labels=train.labels.to(device),
                      val=(val.images, val.labels.numpy()), test=(test.images, test.labels.numpy()),
                      attributes=attributes, cache_key=cache_key, cfg=cfg, device=device, extra=extra,
                      predictions=predictions, name=name, init=init, dist=dist)


def pretrain_key(cfg: PrivacyConfig, raw_key: str) -> dict:
    """What decides the raw pre-training of finetune_raw (its folder is the hash of this)."""
    return {
        "version": PRETRAIN_VERSION,
        "raw_images": raw_key,  # the raw cache key: dataset splits' content, resolution, crop
        "model": to_dict(cfg.model),
        "optim": to_dict(cfg.optim),
        "schedule": to_dict(cfg.schedule),
        "augment": to_dict(cfg.augment),
        "eval_every": cfg.eval.every,
        "seed": cfg.run.seed,
        "deterministic": cfg.run.deterministic,
    }


def pretrain_on_raw(cfg: PrivacyConfig, parent: RunContext, raw: PrivacyData, attributes: tuple[str, ...],
                    log: Callable[[str], None]) -> tuple[Path, dict]:
    """The paper's target model trained on the raw images, once per pretrain_key; returns (best.pt, results).

    A finished pre-training only re-evaluates; its folder always resumes (its name is the hash of
    its settings, so what it holds was made with these)."""
    key = pretrain_key(cfg, raw.key)
    run_dir = cfg.pretrain_root() / config_hash(key, 16)
    # What ran there is the raw method's scratch attacker under this config: record it as such.
    pre_cfg = dataclasses.replace(
        cfg, anonymizer=AnonymizerSection(method="raw"),
        run=dataclasses.replace(cfg.run, name=str(Path(cfg.attackers.pretrain_dir) / run_dir.name)),
        attackers=dataclasses.replace(cfg.attackers, run=["scratch"]),
        eval=dataclasses.replace(cfg.eval, compare_to=None), leakage=dataclasses.replace(cfg.leakage, enabled=False),
    )
    ctx = sub_context(parent, run_dir, resume=True)
    if parent.dist.is_main:
        write_run_config(pre_cfg, run_dir)
        atomic_write_json(run_dir / "pretrain_key.json", key)
    started = time.perf_counter()
    try:
        with isolated_rng(cfg.run.seed, parent.device):
            model, spec = build_paper_target(cfg, len(attributes))
            task = _task(pre_cfg, model, spec, raw.splits, attributes=attributes, cache_key=raw.key, dist=parent.dist,
                         extra=lambda test, selected: {"pretrain_key": key}, predictions=None, name="raw_pretrain")
            results = fit(task, ctx, cfg=pre_cfg, stage=STAGE, precision=Precision("fp32", parent.device),
                          log_every=cfg.run.log_every)
    finally:
        ctx.finish()
    log(f"[privacy] finetune_raw: raw pre-training {run_dir} (val cMAP {100 * results['selection']['value']:.2f} at epoch "
        f"{results['selection']['epoch']}, raw test cMAP {100 * results['test']['cmap']:.2f}; {time.perf_counter() - started:.1f} s)")
    return run_dir / BEST, results


def run_attacker(name: str, cfg: PrivacyConfig, parent: RunContext, *, splits: Mapping[str, PreparedSplit],
                 attributes: tuple[str, ...], cache_key: str, raw_data: Callable[[], PrivacyData],
                 log: Callable[[str], None]) -> dict:
    """One attacker other than scratch, trained and scored in ``<run>/attackers/<name>/``; its results entry."""
    if name not in ATTACKERS or name == "scratch":
        raise ValueError(f"run_attacker: {name!r} is not one of {', '.join(a for a in ATTACKERS if a != 'scratch')}")
    run_dir = parent.run_dir / "attackers" / name
    if cfg.run.resume:
        check_resumable(run_dir, cfg)
    if parent.dist.is_main:
        write_run_config(cfg, run_dir)
    device, started = parent.device, time.perf_counter()
    init = None
    if name == "finetune_raw":
        best, _ = pretrain_on_raw(cfg, parent, raw_data(), attributes, log)
    ctx = sub_context(parent, run_dir, resume=cfg.run.resume)
    try:
        with isolated_rng(cfg.run.seed, device):
            if name == "finetune_raw":
                model, spec, init = finetune_start(cfg, len(attributes), best)
            else:
                model, spec = build_other_arch(cfg, len(attributes))
            task = _task(cfg, model, spec, splits, attributes=attributes, cache_key=cache_key, dist=parent.dist,
                         extra=lambda test, selected: {"attacker": name, "description": ATTACKERS[name]},
                         predictions=run_dir / PREDICTIONS, name=name, init=init)
            results = fit(task, ctx, cfg=cfg, stage=STAGE, precision=Precision("fp32", device), log_every=cfg.run.log_every)
    finally:
        ctx.finish()
    entry = attacker_entry(name, results["test"], selected_epoch=results["selection"]["epoch"], model=results["model"],
                           run_dir=run_dir, predictions=run_dir / PREDICTIONS, cfg=cfg, seconds=time.perf_counter() - started)
    log(f"[privacy] attacker {name}: test cMAP {100 * entry['cmap']:.2f} [{100 * entry['cmap_ci']['low']:.2f}, "
        f"{100 * entry['cmap_ci']['high']:.2f}] (epoch {entry['selected_epoch']} selected on val; {entry['time_s']:.1f} s)")
    return entry


def run_target_attackers(cfg: PrivacyConfig, ctx: RunContext, *, model: nn.Module, spec: dict, data: PrivacyData,
                         attributes: tuple[str, ...], raw_data: Callable[[], PrivacyData],
                         scratch_extra: Callable[[dict], dict], log: Callable[[str], None] = print) -> dict:
    """Every attacker of ``attackers.run`` on ``data``; scratch last, in the run's own folder, so that
    results.json (written by its fit) holds everything. ``model`` / ``spec``: the scratch attacker,
    built by the caller before anything else draws random numbers. ``raw_data()``: the raw images
    (called only for finetune_raw). Returns results.json's dict."""
    others = {name: run_attacker(name, cfg, ctx, splits=data.splits, attributes=attributes, cache_key=data.key,
                                 raw_data=raw_data, log=log)
              for name in cfg.attackers.run if name != "scratch"}
    predictions = ctx.run_dir / PREDICTIONS

    def extra(test: dict, selected: dict) -> dict:
        scratch = attacker_entry("scratch", test, selected_epoch=int(selected["epoch"]),
                                 model={**spec, "parameters": count_parameters(model), "init": cfg.model.weights or "scratch"},
                                 run_dir=ctx.run_dir,
                                 predictions=predictions, cfg=cfg)
        entries = {name: scratch if name == "scratch" else others[name] for name in cfg.attackers.run}
        return {**scratch_extra(test), "attackers": entries, "worst_case": worst_case(entries)}

    task = _task(cfg, model, spec, data.splits, attributes=attributes, cache_key=data.key, dist=ctx.dist,
                 extra=extra, predictions=predictions, name="target")
    return fit(task, ctx, cfg=cfg, stage=STAGE, precision=Precision("fp32", ctx.device), log_every=cfg.run.log_every)

