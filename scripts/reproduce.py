"""Run the whole pipeline for every method; print the paper's tables; draw the trade-off plot.

    python -m scripts.reproduce                                   # the synthetic world
    python -m scripts.reproduce --config configs/reproduce/ucf_crime.yaml    # real data
    python -m scripts.reproduce sweeps=[omega,mu] key=value ...

For each method (raw, downsample 2x/4x, blur, blacken, SPAct, TeD-SPAD, and the ablation
variants a sweep adds) the script runs, in order: anonymizer training where the method has
one (stage 1), the privacy evaluation (stage 2), feature extraction (stage 3) and MGFN
(stage 4). Every step is a normal stage run, started through the stage's own CLI entry with
the stage config file named in this config plus a few overrides, so whatever it does can be
rerun by hand from the command printed before it.

Several GPUs: ``launcher=torchrun nproc_per_node=N`` runs the steps of the stages that scale
(stages 1-4) under torchrun, the others in this process; ``torchrun_args`` sets the rendezvous
flags (docs/multi_gpu.md). Batch sizes are global, so a step's fingerprint, and what
it means, do not depend on how many processes ran it.

Reuse: a step's *fingerprint* hashes its resolved config together with the fingerprints of
the steps it reads. A run directory whose ``reproduce.json`` holds the same fingerprint and
``done`` is reused; the same fingerprint without ``done`` (an interrupted run) resumes from
its last checkpoint; a different fingerprint (changed config or retrained input) moves the
old directory aside and runs afresh. A failed step is reported, the steps that need it are
skipped, the others still run, and the exit status is non-zero.

Outputs, in ``<paths.results>/reproduce/<run.name>/``: ``tables.md`` (the paper's Tables 1-5
layout, with "privacy reduction %" and "relative AUC change %" against raw; the AUC is the
mean over ``anomaly_seeds`` MGFN runs, with their range), ``tradeoff.png`` (Fig. 3: privacy
cMAP vs anomaly AUC, one point per method, raw marked) and ``summary.json``
(every figure, with the fingerprint and config hash that produced it, and step times).

Confidence intervals: every cMAP and AUC (AP on XD-Violence) is printed ``mean [low, high]``,
a percentile bootstrap (``bootstrap.*``; aux_code.stats states the method) over the test
items the run saved: the privacy test images of ``test_predictions.npz`` (labels, logits) for
cMAP, whole test videos of each MGFN run's ``test_scores.npz`` (clip scores, frame labels) for
the frame metric, combined over the ``anomaly_seeds`` runs (each replicate: the mean over
seeds drawn with replacement, all on one resample of the test videos). summary.json keeps
``cmap_ci`` / ``anomaly_ci`` (interval, per-seed values and intervals); a finished step whose
per-item file is missing is rerun (a finished stage only re-evaluates), so a real run always
has its intervals. The plot draws them as error bars on both axes.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from aux_code.checkpoint import atomic_write, atomic_write_json, atomic_write_text
from aux_code.anonymizers import AnonymizerSection
from aux_code.config import (ConfigError, PathsConfig, RunConfig, config_hash, flatten_mapping, load_config, opt, parse_cli,
                             resolve_under, to_dict)
from aux_code.datasets import DatasetError, dataset_digests
from aux_code.runtime import run_dir_for
from aux_code.stages import STAGES, environment_fault, schema_for_stage
from aux_code.stats import DEFAULT_RESAMPLES, BootstrapCI, BootstrapError, cmap_ci, frame_metric_ci

PROG = "python -m scripts.reproduce"
DEFAULT_CONFIG = "configs/synthetic/reproduce/default.yaml"
MARKER = "reproduce.json"

# Baselines apply a fixed transform; the learned methods train fA first (minimax overrides).
BASELINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "raw": ("Raw (no anonymization)", ("anonymizer.method=raw",)),
    "downsample2x": ("Downsample-2x", ("anonymizer.method=downsample", "anonymizer.factor=2")),
    "downsample4x": ("Downsample-4x", ("anonymizer.method=downsample", "anonymizer.factor=4")),
    "blur": ("Blurring (people)", ("anonymizer.method=blur",)),
    "blacken": ("Blackening (people)", ("anonymizer.method=blacken",)),
    "face_blur": ("Blurring (faces, Haar)", ("anonymizer.method=face_blur",)),
    "face_blacken": ("Blackening (faces, Haar)", ("anonymizer.method=face_blacken",)),
}
# The issue-14 remedies, as overrides of the minimax file (their stage-1 YAMLs say the same):
# selection by a fresh attacker; a worst-case budget ensemble of 3 restarted every 44 steps;
# the bounded similarity-entropy privacy term.
_SELECT = ("fresh_attacker.enabled=true", "eval.select=attacker_tradeoff")
_ENSEMBLE = ("budget.ensemble=3", "budget.restart_every=44", "budget.restart_from=init")
_ENTROPY = ("loss.privacy=entropy",)
# Wu et al.'s supervised budget: an attribute classifier (its own budget_ssl run with
# budget.task=attributes, StageFiles.budget_attributes) and fA minimising its bounded certainty.
ATTRIBUTE_BUDGET = "anonymization/budget_attributes/best.pt"
_ATTRIBUTES = ("budget.task=attributes", "loss.privacy=entropy", "loss.w_b=2.0", f"init.budget={ATTRIBUTE_BUDGET}")
# BDQ's blur + quantize fA (configs/synthetic/anonymization/tedspad_bq.yaml): built fresh, never
# from the identity run's UNet, with an lr for its 16 parameters.
_BQ = ("model.anonymizer=bq", "model.anonymizer_levels=16", "model.anonymizer_temperature=50.0",
       "model.anonymizer_sigma_max=2.0", "init.anonymizer=null", "optim.lr_anonymizer=1.0e-2")
LEARNED: dict[str, tuple[str, tuple[str, ...]]] = {
    "spact": ("SPAct (CE)", ("loss.method=spact",)),
    "tedspad": ("TeD-SPAD (CE + L_D)", ("loss.method=tedspad",)),
    "temporal_invariance": ("CE + L_I", ("loss.method=temporal_invariance",)),
    "tedspad_select": ("TeD-SPAD, fresh-attacker selection", ("loss.method=tedspad", *_SELECT)),
    "spact_select": ("SPAct, fresh-attacker selection", ("loss.method=spact", *_SELECT)),
    "tedspad_ens": ("TeD-SPAD + budget ensemble/restarts", ("loss.method=tedspad", *_SELECT, *_ENSEMBLE)),
    "spact_ens": ("SPAct + budget ensemble/restarts", ("loss.method=spact", *_SELECT, *_ENSEMBLE)),
    "tedspad_entropy": ("TeD-SPAD + entropy privacy term", ("loss.method=tedspad", *_SELECT, *_ENTROPY)),
    "spact_entropy": ("SPAct + entropy privacy term", ("loss.method=spact", *_SELECT, *_ENTROPY)),
    "tedspad_attributes": ("TeD-SPAD + supervised attribute budget", ("loss.method=tedspad", *_SELECT, *_ATTRIBUTES)),
    "spact_attributes": ("SPAct + supervised attribute budget", ("loss.method=spact", *_SELECT, *_ATTRIBUTES)),
    "tedspad_bq": ("TeD-SPAD, blur + quantize fA", ("loss.method=tedspad", *_SELECT, *_BQ)),
    "spact_bq": ("SPAct, blur + quantize fA", ("loss.method=spact", *_SELECT, *_BQ)),
}
# Giorgi et al.'s DP autoencoder (anonymization_training.dpae): one trade-off point per
# (optimizer, noise multiplier); the config file is under StageFiles.dpae_dir.
DPAE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dpae_no_dp": ("DP-AE, no DP (Adam)", "no_dp_adam.yaml", ()),
    "dpae_adam_nm0.5": ("DP-AE, DP-Adam, noise 0.5", "dp_adam.yaml", ("dp.noise_multiplier=0.5",)),
    "dpae_adam_nm1": ("DP-AE, DP-Adam, noise 1", "dp_adam.yaml", ("dp.noise_multiplier=1.0",)),
    "dpae_adagrad_nm0.5": ("DP-AE, DP-Adagrad, noise 0.5", "dp_adagrad.yaml", ("dp.noise_multiplier=0.5",)),
    "dpae_adagrad_nm1": ("DP-AE, DP-Adagrad, noise 1", "dp_adagrad.yaml", ("dp.noise_multiplier=1.0",)),
    "dpae_sgd_nm0.5": ("DP-AE, DP-SGD, noise 0.5", "dp_sgd.yaml", ("dp.noise_multiplier=0.5",)),
    "dpae_sgd_nm1": ("DP-AE, DP-SGD, noise 1", "dp_sgd.yaml", ("dp.noise_multiplier=1.0",)),
}
# Stage 2's attackers (privacy_training.attackers); scratch is the paper's protocol.
ATTACKERS = ("scratch", "finetune_raw", "other_arch")
SWEEPS = ("utility_loss", "omega", "mu", "negative_distance")
# The per-item test outputs the intervals are computed from, and an array each must hold.
PER_ITEM = {"privacy": ("test_predictions.npz", "logits"), "anomaly": ("test_scores.npz", "frame_labels")}


@dataclass
class StageFiles:
    """The stage config file each kind of step starts from (paths relative to the project root)."""

    utility: str = opt("configs/synthetic/anonymization/utility_pretrain.yaml", "Stage 1, task utility_pretrain: fT on the proxy action set.")
    identity: str = opt("configs/synthetic/anonymization/identity.yaml", "Stage 1, task identity: fA initialised as the identity.")
    budget: str = opt("configs/synthetic/anonymization/budget_ssl.yaml", "Stage 1, task budget_ssl: fB's self-supervised init.")
    budget_attributes: str = opt(
        "configs/synthetic/anonymization/budget_attributes.yaml",
        "Stage 1, task budget_ssl with budget.task=attributes: the supervised budget's init (the *_attributes methods).",
    )
    minimax: str = opt("configs/synthetic/anonymization/tedspad.yaml", "Stage 1, task minimax; the method and ablation values are overridden per method.")
    privacy: str = opt("configs/synthetic/privacy/default.yaml", "Stage 2: target model on anonymized privacy images; anonymizer overridden per method.")
    probe: str = opt("configs/synthetic/privacy/probe.yaml", "Stage 2, feature-level probe (Table 1).")
    extraction: str = opt("configs/synthetic/extraction/default.yaml", "Stage 3: features of the anomaly dataset; anonymizer and utility overridden per method.")
    anomaly: str = opt("configs/synthetic/anomaly/default.yaml", "Stage 4: MGFN on the features.")
    dpae_dir: str = opt("configs/synthetic/dpae", "Folder of the DP autoencoder's configs (no_dp_adam, dp_adam, dp_adagrad, dp_sgd .yaml).")


@dataclass
class StageOverrides:
    """Extra key=value overrides given to every run of a stage (e.g. fewer epochs for a smoke test)."""

    anonymization: list[str] = opt([], "Overrides for every stage-1 run.")
    privacy: list[str] = opt([], "Overrides for every stage-2 run (target model and probe).")
    extraction: list[str] = opt([], "Overrides for every stage-3 run.")
    anomaly: list[str] = opt([], "Overrides for every stage-4 run.")
    dpae: list[str] = opt([], "Overrides for every DP autoencoder training run.")


@dataclass
class SweepSection:
    """The paper's ablations (Tables 2-5); each multiplies the run time, so none runs by default."""

    run: list[str] = opt([], "Which sweeps to run: any of utility_loss (Table 2), omega (Table 3), mu (Table 4), negative_distance (Table 5).")
    omega: list[float] = opt([0.0, 0.01, 0.1, 1.0, 10.0], "Triplet weights of Table 3.")
    mu: list[float] = opt([0.5, 1.0, 2.0], "Triplet margins of Table 4.")
    negative_distance: list[str] = opt(["random", "8", "32"], "Negative-clip distances of Table 5: 'random' or a number of raw frames.")


@dataclass
class BootstrapSection:
    """The 95% intervals of the tables (aux_code.stats: percentile bootstrap over test items, then seeds)."""

    resamples: int = opt(DEFAULT_RESAMPLES, "Bootstrap resamples B of the test items (images for cMAP, whole videos for the frame metric).")
    level: float = opt(0.95, "Confidence level of the intervals, in (0, 1).")
    seed: int = opt(0, "Seed of the resampling generator (numpy default_rng): the same runs always give the same intervals.")


@dataclass
class ReproduceConfig:
    """The whole pipeline for every method, then the paper's tables and trade-off plot."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: RunConfig = opt(RunConfig(), "run.name names the results folder; run.device and run.seed are passed to every stage.")
    dataset: str = opt("ucf_crime", "Anomaly dataset the features are extracted from (its stage-3/4 configs must read it).")
    methods: list[str] = opt(
        ["raw", "downsample2x", "downsample4x", "blur", "blacken", "spact", "tedspad"],
        "Methods of the trade-off plot: raw, downsample2x, downsample4x, blur, blacken, face_blur, face_blacken, spact, "
        "tedspad, temporal_invariance, and the issue-14 remedies tedspad_select, spact_select, tedspad_ens, spact_ens, "
        "tedspad_entropy, spact_entropy, tedspad_attributes, spact_attributes, tedspad_bq, spact_bq; Giorgi et al.'s DP autoencoder dpae_no_dp, dpae_adam_nm0.5, dpae_adam_nm1, "
        "dpae_adagrad_nm0.5, dpae_adagrad_nm1, dpae_sgd_nm0.5, dpae_sgd_nm1.",
    )
    attackers: list[str] = opt(
        ["scratch"],
        "Stage 2's attackers for every method (passed as attackers.run): scratch (the paper's target model; the "
        "paper-protocol cMAP), finetune_raw (pre-trained on raw images, fine-tuned on the anonymized ones), "
        "other_arch (another architecture). With more than one, the tables add the worst case over them and the "
        "trade-off plot uses it.",
    )
    baseline_utility: Optional[str] = opt(
        "anonymization/utility/best.pt",
        "fT of the baselines (raw, downsample, blur, blacken) and of the raw probe: the stage-1 utility run "
        "(the synthetic world's stand-in for Kinetics weights). null: keep the utility model the stage-3 and "
        "probe configs name (on real data, the Kinetics-400 weights file), as the paper does.",
    )
    person_boxes: Literal["gt", "hog"] = opt(
        "gt", "Person boxes of the blur/blacken baselines: 'gt' (synthetic world) or 'hog' (OpenCV's detector, real data)."
    )
    anomaly_seeds: list[int] = opt(
        [0, 1, 2],
        "Stage 4 runs once per seed on each method's features (MGFN alone; the stages before it use run.seed). "
        "The tables give the mean and the range: on the small synthetic test set one MGFN run's AUC moves by "
        "several points from seed to seed.",
    )
    feature_probe: bool = opt(True, "Run the feature-level probe of Table 1 on the utility features of raw and of each learned method in `methods`.")
    sweeps: SweepSection = opt(SweepSection(), "Ablation sweeps.")
    bootstrap: BootstrapSection = opt(BootstrapSection(), "Confidence intervals of every cMAP and AUC in the tables, plot and summary.")
    stages: StageFiles = opt(StageFiles(), "Stage config files.")
    overrides: StageOverrides = opt(StageOverrides(), "Per-stage extra overrides.")
    launcher: Literal["process", "torchrun"] = opt(
        "process",
        "How a step runs: 'process' = through its stage's CLI entry inside this process; 'torchrun' = the steps of "
        "the stages that train or extract data-parallel (anonymization, privacy, extraction, anomaly) as "
        "`python -m torch.distributed.run <torchrun_args> --nproc_per_node N -m <stage> ...` child processes, the "
        "others (dpae, luss, two_stream) still in this process (docs/multi_gpu.md). Batch sizes are global, so the "
        "results mean the same either way.",
    )
    nproc_per_node: int = opt(1, "launcher = torchrun: processes per node (one per GPU).")
    torchrun_args: list[str] = opt(
        ["--standalone"],
        "launcher = torchrun: the rendezvous arguments before --nproc_per_node ('--standalone': one machine, a free "
        "port; e.g. ['--master_port=29600'] beside another job). The driver writes its own files, so it runs on one "
        "machine; docs/multi_gpu.md gives the stage commands for several.",
    )

    def required_paths(self) -> list[str]:
        return []  # each stage checks its own inputs when it loads its config

    def validate(self) -> None:
        known = set(BASELINES) | set(LEARNED) | set(DPAE)
        for m in self.methods:
            if m not in known:
                raise ConfigError(f"methods: unknown method {m!r}; known: {', '.join(sorted(known))}")
        for a in self.attackers:
            if a not in ATTACKERS:
                raise ConfigError(f"attackers: unknown attacker {a!r}; known: {', '.join(ATTACKERS)}")
        if "scratch" not in self.attackers or len(set(self.attackers)) != len(self.attackers):
            raise ConfigError(f"attackers = {self.attackers} must include 'scratch' (the paper's protocol) and name each attacker once")
        if not self.anomaly_seeds or len(set(self.anomaly_seeds)) != len(self.anomaly_seeds):
            raise ConfigError(f"anomaly_seeds = {self.anomaly_seeds} must name at least one seed, each once")
        if "raw" not in self.methods:
            raise ConfigError("methods must include 'raw': privacy reduction and AUC change are measured against it")
        for s in self.sweeps.run:
            if s not in SWEEPS:
                raise ConfigError(f"sweeps.run: unknown sweep {s!r}; known: {', '.join(SWEEPS)}")
        if self.nproc_per_node < 1:
            raise ConfigError(f"nproc_per_node = {self.nproc_per_node} must be >= 1")
        if self.bootstrap.resamples < 1 or not 0.0 < self.bootstrap.level < 1.0:
            raise ConfigError(f"bootstrap: resamples = {self.bootstrap.resamples} must be >= 1 and level = {self.bootstrap.level} in (0, 1)")
        for d in self.sweeps.negative_distance:
            if d != "random" and not str(d).isdigit():
                raise ConfigError(f"sweeps.negative_distance: {d!r} must be 'random' or a whole number of raw frames")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Step:
    """One stage run: ``python -m <stage package> --config <config> run.name=<name> <overrides>``."""

    stage: str
    config: str
    name: str
    overrides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.name}"

    def argv(self) -> list[str]:
        return ["--config", self.config, f"run.name={self.name}", *self.overrides]

    def command(self) -> str:
        return " ".join(["python -m", STAGES[self.stage][2], *self.argv()])


@dataclass(frozen=True)
class Point:
    """One row of a table: a method (or ablation variant) and the steps that give its numbers."""

    label: str
    privacy: str  # step keys
    anomaly: tuple[str, ...]  # one stage-4 run per seed
    dpae: str | None = None  # the DP autoencoder's training run, for its (epsilon, delta)


@dataclass
class Plan:
    steps: dict[str, Step] = field(default_factory=dict)
    points: dict[str, Point] = field(default_factory=dict)
    probes: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (step key, method)
    tables: dict[str, list[str]] = field(default_factory=dict)  # table id -> point names

    def add(self, step: Step) -> str:
        if step.key in self.steps and self.steps[step.key] != step:
            raise ValueError(f"two different steps want the run {step.key}")
        self.steps[step.key] = step
        return step.key


def _fmt(value: float) -> str:
    return f"{value:g}"


def build_plan(cfg: ReproduceConfig) -> Plan:
    """Every step and table row the config asks for, each step once, in a runnable order."""
    plan = Plan()
    files, extra = cfg.stages, cfg.overrides
    def run_args(seed: int) -> tuple[str, ...]:
        return (f"run.device={cfg.run.device}", f"run.seed={seed}")

    common = run_args(cfg.run.seed)
    anon = lambda *o: (*common, *extra.anonymization, *o)  # noqa: E731

    pretrained = "anonymization/utility/best.pt"

    def utility() -> str:
        return plan.add(Step("anonymization", files.utility, "utility", anon()))

    def utility_needs(ckpt: str | None) -> tuple[str, ...]:
        # Only the stage-1 utility run is made here; another fT (a weights file) needs no step.
        return (utility(),) if ckpt == pretrained else ()

    def trained_fa(ckpt: str) -> tuple[str, ...]:
        return ("anonymizer.method=unet", f"anonymizer.checkpoint={ckpt}")

    def learned_init(minimax: tuple[str, ...]) -> tuple[str, ...]:
        identity = plan.add(Step("anonymization", files.identity, "identity", anon()))
        if f"init.budget={ATTRIBUTE_BUDGET}" in minimax:
            budget = plan.add(Step("anonymization", files.budget_attributes, "budget_attributes", anon()))
        else:
            budget = plan.add(Step("anonymization", files.budget, "budget", anon()))
        return (utility(), identity, budget)

    def point(name: str, label: str, anonymizer: tuple[str, ...], minimax: tuple[str, ...] | None,
              dpae: tuple[str, tuple[str, ...]] | None = None) -> str:
        dpae_step = None
        if dpae is not None:
            # The camera's encoder and the server's decoder of one DP-AE run; fT as for the baselines.
            config, dp_overrides = dpae
            trained = dpae_step = plan.add(Step("dpae", f"{files.dpae_dir}/{config}", name, (*common, *extra.dpae, *dp_overrides)))
            anon_overrides = ("anonymizer.method=dpae", f"anonymizer.encoder=dpae/{name}/encoder.pt",
                              f"anonymizer.decoder=dpae/{name}/decoder.pt")
            utility_ckpt = cfg.baseline_utility
            needs = (*utility_needs(utility_ckpt), trained)
        elif minimax is None:
            anon_overrides, utility_ckpt = anonymizer, cfg.baseline_utility
            needs = utility_needs(utility_ckpt)
        else:
            trained = plan.add(Step("anonymization", files.minimax, name, anon(*minimax), learned_init(minimax)))
            ckpt = f"anonymization/{name}/best.pt"
            anon_overrides, utility_ckpt, needs = trained_fa(ckpt), ckpt, (trained,)
        attack = (f"attackers.run=[{','.join(cfg.attackers)}]",) if cfg.attackers != ["scratch"] else ()
        privacy = plan.add(Step("privacy", files.privacy, name, (*common, *extra.privacy, *attack, *anon_overrides), needs))
        run = f"{cfg.dataset}-{name}"
        features = plan.add(
            Step(
                "extraction", files.extraction, run,
                (*common, *extra.extraction, *anon_overrides, *([f"utility.checkpoint={utility_ckpt}"] if utility_ckpt else [])), needs,
            )
        )
        anomaly = tuple(
            plan.add(Step(
                "anomaly", files.anomaly, f"{run}-s{seed}",
                (*run_args(seed), *extra.anomaly, f"data.features=extraction/{run}"), (features,),
            ))
            for seed in cfg.anomaly_seeds
        )
        plan.points[name] = Point(label, privacy, anomaly, dpae_step)
        return name

    main = []
    for m in cfg.methods:
        if m in BASELINES:
            label, overrides = BASELINES[m]
            if m in ("blur", "blacken"):
                overrides = (*overrides, f"anonymizer.boxes={cfg.person_boxes}")
            main.append(point(m, label, overrides, None))
        elif m in DPAE:
            label, config, dp_overrides = DPAE[m]
            main.append(point(m, label, (), None, (config, dp_overrides)))
        else:
            main.append(point(m, LEARNED[m][0], (), LEARNED[m][1]))
    plan.tables["main"] = main

    if cfg.feature_probe:
        # Table 1: the raw utility model's features, then those of each learned method run here.
        raw_label = "Raw: Kinetics-400 I3D" if cfg.baseline_utility is None else "Raw: action-pretrained I3D (the Kinetics analogue)"
        rows = [("raw", raw_label, cfg.baseline_utility)]
        rows += [(m, LEARNED[m][0], f"anonymization/{m}/best.pt") for m in cfg.methods if m in LEARNED]
        for method, label, ckpt in rows:
            if method == "raw":
                anon_overrides, needs = ("anonymizer.method=raw",), utility_needs(ckpt)
            else:
                anon_overrides, needs = trained_fa(ckpt), (f"anonymization/{method}",)
            source = (f"utility.checkpoint={ckpt}", "utility.weights=null") if ckpt else ()
            key = plan.add(Step("privacy", files.probe, f"probe-{method}", (*common, *extra.privacy, *anon_overrides, *source), needs))
            plan.probes[label] = (key, method)

    plan.tables.update(_sweep_tables(cfg, point, plan))
    return plan


def _sweep_tables(cfg: ReproduceConfig, point: Callable[..., str], plan: Plan) -> dict[str, list[str]]:
    """The ablation tables (Tables 2-5) asked for in sweeps.run: point names, each added to the plan by ``point``."""
    tables: dict[str, list[str]] = {}
    sweeps = set(cfg.sweeps.run)
    if "utility_loss" in sweeps:
        tables["utility_loss"] = [
            point(m, LEARNED[m][0], (), LEARNED[m][1]) if m not in plan.points else m
            for m in ("spact", "tedspad", "temporal_invariance")
        ]
    if "omega" in sweeps:
        tables["omega"] = [
            point(f"tedspad-omega{_fmt(w)}", f"omega = {_fmt(w)}", (), ("loss.method=tedspad", f"loss.omega={w}"))
            for w in cfg.sweeps.omega
        ]
    if "mu" in sweeps:
        tables["mu"] = [
            point(f"tedspad-mu{_fmt(m)}", f"mu = {_fmt(m)}", (), ("loss.method=tedspad", f"loss.margin={m}"))
            for m in cfg.sweeps.mu
        ]
    if "negative_distance" in sweeps:
        tables["negative_distance"] = [
            point(
                f"tedspad-neg{d}", f"negative distance = {d}", (),
                ("loss.method=tedspad", f"loss.negative_distance={'null' if d == 'random' else d}"),
            )
            for d in cfg.sweeps.negative_distance
        ]
    return tables


# --------------------------------------------------------------------------- running


class StepFailed(RuntimeError):
    pass


def _load_step_config(step: Step) -> Any:
    return load_config(schema_for_stage(step.stage), step.config, list(step.argv()[2:]))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def launch(step: Step) -> int:
    """Run one step in this process through its stage's CLI entry; returns the exit status."""
    return importlib.import_module(f"{STAGES[step.stage][2]}.__main__").main(step.argv())


# The stages whose runs shard over torchrun ranks; the others refuse a WORLD_SIZE above 1.
TORCHRUN_STAGES = ("anonymization", "privacy", "extraction", "anomaly")


def torchrun_command(step: Step, *, nproc_per_node: int, torchrun_args: Sequence[str]) -> list[str]:
    """The torchrun command line of one step (the stage's CLI with the step's arguments)."""
    return [sys.executable, "-m", "torch.distributed.run", *torchrun_args, f"--nproc_per_node={nproc_per_node}",
            "-m", STAGES[step.stage][2], *step.argv()]


def launcher_for(cfg: ReproduceConfig) -> Callable[[Step], int]:
    """``launch`` for launcher = process; for torchrun, a launcher that starts the steps of
    TORCHRUN_STAGES under torchrun (waiting for it; its exit status is the step's) and the
    others in this process."""
    if cfg.launcher == "process":
        return launch

    def torchrun_launch(step: Step) -> int:
        if step.stage not in TORCHRUN_STAGES:
            return launch(step)
        command = torchrun_command(step, nproc_per_node=cfg.nproc_per_node, torchrun_args=cfg.torchrun_args)
        print("  " + " ".join(command), flush=True)
        return subprocess.run(command).returncode

    return torchrun_launch


def _move_aside(run_dir: Path, tag: str, why: str) -> None:
    stale = run_dir.with_name(f"{run_dir.name}.stale-{tag}")
    shutil.rmtree(stale, ignore_errors=True)
    run_dir.rename(stale)
    print(f"  ({why}: previous run moved to {stale})", flush=True)


def has_per_item(stage: str, run_dir: Path) -> bool:
    """Whether a stage-2/4 run holds the per-item test file the intervals need (other stages: always)."""
    if stage not in PER_ITEM:
        return True
    name, key = PER_ITEM[stage]
    try:
        with np.load(run_dir / name, allow_pickle=False) as z:
            return key in z.files
    except (OSError, ValueError):
        return False


def run_step(step: Step, fingerprint: str, run_dir: Path, *, launcher=launch) -> tuple[str, float]:
    """Run (or reuse) one step; returns ('reused' | 'ran', seconds). Raises StepFailed.

    A finished run without its per-item test file (made before the file existed) is run again:
    the stage resumes after its last epoch and only re-evaluates, writing the file."""
    marker = _read_json(run_dir / MARKER)
    if (marker and marker.get("fingerprint") == fingerprint and marker.get("done") and (run_dir / "results.json").is_file()
            and has_per_item(step.stage, run_dir)):
        return "reused", 0.0
    # A run of other inputs, or one made by hand (no marker): keep it aside, never resume it.
    if marker and marker.get("fingerprint") != fingerprint and run_dir.exists():
        _move_aside(run_dir, marker.get("fingerprint", "unknown"), "inputs or config changed")
    elif not marker and run_dir.exists() and any(run_dir.iterdir()):
        _move_aside(run_dir, "manual", "run directory was not made by this script")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / MARKER, {"fingerprint": fingerprint, "done": False, "command": step.command()})
    start = time.perf_counter()
    rc = launcher(step)
    seconds = time.perf_counter() - start
    if rc != 0:
        raise StepFailed(f"{step.key} exited with status {rc}")
    if not (run_dir / "results.json").is_file():
        raise StepFailed(f"{step.key} finished without writing {run_dir / 'results.json'}")
    if not has_per_item(step.stage, run_dir):
        raise StepFailed(f"{step.key} finished without writing its per-item test file {run_dir / PER_ITEM[step.stage][0]}")
    atomic_write_json(run_dir / MARKER, {"fingerprint": fingerprint, "done": True, "command": step.command(), "seconds": round(seconds, 2)})
    return "ran", seconds


class PreflightError(ConfigError):
    """What the plan needs and does not have, all of it, found before the first step runs."""


@dataclass
class StepInput:
    """A step's config as it will run, and what it is checked and fingerprinted by."""

    config: Any
    dataset_files: dict[str, dict[str, str]]  # paths key -> {relative file: digest} (aux_code.datasets.dataset_digests)
    shortened: list[dict]  # training lengths the per-stage overrides shortened: {"key", "config", "run"}


def step_inputs(stage: str, cfg: Any) -> list[tuple[str, Path]]:
    """(config key, path) of every file a step of ``stage`` will read besides its dataset: weight
    files, stage-1 init checkpoints, the trained anonymizer, the feature set."""
    out: list[tuple[str, Path]] = []

    def add(key: str, value: str | None, root: str) -> None:
        if value:
            out.append((key, resolve_under(root, value)))

    anonymizer = getattr(cfg, "anonymizer", None)
    if isinstance(anonymizer, AnonymizerSection) and anonymizer.method == "unet":
        add("anonymizer.checkpoint", anonymizer.checkpoint, cfg.paths.runs)
    if isinstance(anonymizer, AnonymizerSection) and anonymizer.method == "dpae":
        add("anonymizer.encoder", anonymizer.encoder, cfg.paths.runs)
        add("anonymizer.decoder", anonymizer.decoder, cfg.paths.runs)
    if stage == "extraction" or (stage == "privacy" and cfg.task == "probe"):
        out += cfg.utility.files(cfg.paths)
    if stage == "privacy":
        add("model.weights", cfg.model.weights, cfg.paths.weights)
    if stage == "anonymization":
        inits = {k: getattr(cfg.init, k) for k in ("anonymizer", "utility", "budget")} if cfg.task == "minimax" else {}
        for key, value in inits.items():
            add(f"init.{key}", value, cfg.paths.runs)
        # A fresh model reads its weights file; an init checkpoint replaces it.
        if cfg.task == "utility_pretrain" or (cfg.task == "minimax" and inits["utility"] is None):
            add("model.utility_weights", cfg.model.utility_weights, cfg.paths.weights)
        if cfg.task == "budget_ssl" or (cfg.task == "minimax" and inits["budget"] is None):
            add("model.budget_weights", cfg.model.budget_weights, cfg.paths.weights)
    if stage == "anomaly":
        out.append(("data.features", cfg.feature_dir() / "manifest.json"))
    return out


def _training_length(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf in ("epochs", "steps_per_epoch") or key == "data.limit"


def _shorter(run: Any, config: Any) -> bool:
    if config is None:  # null = the whole split / one full pass: any number shortens it
        return run is not None
    return isinstance(run, (int, float)) and isinstance(config, (int, float)) and run < config


def shortened_training(step: Step, extras: Sequence[str]) -> list[dict]:
    """The training lengths (epochs, steps per epoch, data.limit) that the reproduce config's per-stage
    ``extras`` overrides make shorter than the step's stage file says: a smoke run, not a result."""
    if not extras:
        return []
    schema = schema_for_stage(step.stage)
    argv = list(step.argv()[2:])
    run = flatten_mapping(to_dict(load_config(schema, step.config, argv, check_paths=False)))
    configured = flatten_mapping(to_dict(load_config(schema, step.config, [o for o in argv if o not in set(extras)],
                                                     check_paths=False)))
    return [{"key": k, "config": configured.get(k), "run": v} for k, v in sorted(run.items())
            if _training_length(k) and _shorter(v, configured.get(k))]


def preflight(plan: Plan, cfg: ReproduceConfig) -> dict[str, StepInput]:
    """Before any step runs: every step's config parses (every per-stage override is checked, dataset
    roots exist), every dataset file is readable, and every file a step reads exists or is made by an
    earlier step of the plan. Raises PreflightError listing every problem at once."""
    problems: dict[str, list[str]] = {}  # message -> steps
    inputs: dict[str, StepInput] = {}
    digests: dict[tuple[str, str], dict[str, str]] = {}
    loaded = {}
    for step in plan.steps.values():
        try:
            loaded[step.key] = _load_step_config(step)
        except ConfigError as e:
            problems.setdefault(f"config: {e}", []).append(step.key)
    made = [run_dir_for(c.paths.runs, plan.steps[k].stage, plan.steps[k].name).resolve() for k, c in loaded.items()]
    for key, step_cfg in loaded.items():
        step = plan.steps[key]
        files: dict[str, dict[str, str]] = {}
        for root_key in step_cfg.required_paths():
            root = str(getattr(step_cfg.paths, root_key))
            try:
                if (root_key, root) not in digests:
                    digests[(root_key, root)] = dataset_digests(root_key, root)
                files[root_key] = digests[(root_key, root)]
            except (DatasetError, OSError) as e:
                problems.setdefault(f"dataset paths.{root_key}: {e}", []).append(key)
        for config_key, path in step_inputs(step.stage, step_cfg):
            resolved = path.resolve()
            if not path.exists() and not any(resolved.is_relative_to(d) for d in made):
                problems.setdefault(f"{config_key} = {path} does not exist and no step of the plan makes it", []).append(key)
        inputs[key] = StepInput(step_cfg, files, shortened_training(step, getattr(cfg.overrides, step.stage, [])))
    if problems:
        lines = [f"{m} (step{'s' if len(ks) > 1 else ''} {', '.join(ks[:4])}{', ...' if len(ks) > 4 else ''})"
                 for m, ks in problems.items()]
        raise PreflightError(f"{len(lines)} problem(s) found before the first step; nothing was run:\n  " + "\n  ".join(lines))
    return inputs


def execute(plan: Plan, inputs: dict[str, StepInput], *, launcher=launch) -> dict[str, dict]:
    """Run every step in order; returns per step: status, fingerprint, config hash, results.

    A step's fingerprint hashes its resolved config, the digests of the dataset files it reads
    (lists, annotations, labels) and the fingerprints of the steps it reads, so a changed
    annotation file reruns exactly the steps that read it and those downstream."""
    done: dict[str, dict] = {}
    for i, step in enumerate(plan.steps.values(), 1):
        blocked = [n for n in step.needs if done.get(n, {}).get("status") not in ("ran", "reused")]
        if blocked:
            done[step.key] = {"status": "skipped", "reason": f"needs {', '.join(blocked)}"}
            print(f"[{i}/{len(plan.steps)}] {step.key}: skipped (needs {', '.join(blocked)})", flush=True)
            continue
        step_cfg = inputs[step.key].config
        chash = config_hash(step_cfg)
        fingerprint = config_hash({"config": to_dict(step_cfg), "inputs": [done[n]["fingerprint"] for n in step.needs],
                                   "dataset_files": inputs[step.key].dataset_files})
        run_dir = run_dir_for(step_cfg.paths.runs, step.stage, step.name)
        print(f"[{i}/{len(plan.steps)}] {step.key}: {step.command()}", flush=True)
        try:
            status, seconds = run_step(step, fingerprint, run_dir, launcher=launcher)
        except StepFailed as e:
            done[step.key] = {"status": "failed", "reason": str(e), "fingerprint": fingerprint}
            print(f"  FAILED: {e}", flush=True)
            continue
        except Exception as e:  # a crash inside a stage: report it, run the independent rest
            done[step.key] = {"status": "failed", "reason": f"{type(e).__name__}: {e}", "fingerprint": fingerprint}
            print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        if status == "reused":
            print("  reused (same fingerprint, finished)", flush=True)
        else:
            print(f"  done in {seconds:.1f} s", flush=True)
        done[step.key] = {
            "status": status, "seconds": round(seconds, 2), "fingerprint": fingerprint, "config_hash": chash,
            "run_dir": str(run_dir), "command": step.command(),
            "results": _read_json(run_dir / "results.json"),
        }
        if inputs[step.key].shortened:
            done[step.key]["shortened"] = inputs[step.key].shortened
    return done


# --------------------------------------------------------------------------- tables


def privacy_cmap(results: dict) -> float:
    """Test cMAP (fraction) of a stage-2 run's results.json."""
    return float(results["test"]["cmap"])


def anomaly_value(results: dict) -> tuple[str, float]:
    """(metric name, fraction) of a stage-4 run's headline test metric."""
    head = results["test"]["headline"]
    return str(head["metric"]), float(head["value"])


def privacy_ci(run_dir: Path, cmap: float, boot: BootstrapSection) -> BootstrapCI:
    """The cMAP interval of one stage-2 run from its test_predictions.npz (resampling test images)."""
    with np.load(Path(run_dir) / PER_ITEM["privacy"][0], allow_pickle=False) as z:
        labels, logits = z["labels"], z["logits"]
    ci = cmap_ci(labels, [logits], resamples=boot.resamples, seed=boot.seed, level=boot.level)
    if abs(ci.per_seed[0] - cmap) > 1e-9:
        raise BootstrapError(f"{run_dir}: test_predictions.npz gives cMAP {ci.per_seed[0]:.6f}, results.json {cmap:.6f}")
    return ci


def anomaly_test_items(run_dir: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(video names, frame labels, frame scores) per test video of a stage-4 run's test_scores.npz,
    built as stage 4's evaluation builds them (anomaly_detection.evaluate.frame_arrays): clip scores,
    robustly rescaled per video when the run did, repeated over each clip's clip_span frames."""
    from aux_code.metrics import robust_rescale
    from aux_code.segments import check_equal_length, expand_clip_scores

    with np.load(Path(run_dir) / PER_ITEM["anomaly"][0], allow_pickle=False) as z:
        names, off, foff = [str(n) for n in z["names"]], z["offsets"], z["frame_offsets"]
        clips, frame_labels, span, rescale = z["clip_scores"], z["frame_labels"], int(z["clip_span"]), bool(z["robust_rescale"])
    labels, scores = [], []
    for i, name in enumerate(names):
        s = clips[off[i] : off[i + 1]]
        frames = expand_clip_scores(robust_rescale(s) if rescale else s, clip_span=span)
        y = frame_labels[foff[i] : foff[i + 1]]
        check_equal_length(name, frames.size, y.size)
        labels.append(y)
        scores.append(frames)
    return names, labels, scores


def anomaly_ci(run_dirs: Sequence[Path], metric: str, values: Sequence[float], boot: BootstrapSection) -> BootstrapCI:
    """The interval of the mean frame metric ('auc' or 'ap') over one method's MGFN runs (one per seed),
    resampling whole test videos, the same resample for every seed."""
    items = [anomaly_test_items(d) for d in run_dirs]
    names, labels, _ = items[0]
    for d, (n, y, _) in zip(run_dirs, items):
        if n != names or any(not np.array_equal(a, b) for a, b in zip(y, labels)):
            raise BootstrapError(f"{d}: its test videos or frame labels differ from {run_dirs[0]}'s; the seeds must share one test set")
    ci = frame_metric_ci(labels, [s for _, _, s in items], metric="ap" if metric == "ap" else "auc",
                         resamples=boot.resamples, seed=boot.seed, level=boot.level)
    for d, a, b in zip(run_dirs, ci.per_seed, values):
        if abs(a - b) > 1e-9:
            raise BootstrapError(f"{d}: test_scores.npz gives {metric} {a:.6f}, results.json {b:.6f}")
    return ci


def attacker_figures(results: dict, run_dir: Path, boot: BootstrapSection) -> dict[str, dict]:
    """{attacker: {cmap, cmap_ci}} of a stage-2 run that trained several attackers (results.json
    ``attackers``), each interval recomputed from that attacker's test_predictions.npz with this
    driver's bootstrap settings; {} when the run trained only the paper's target model."""
    entries = results.get("attackers") or {}
    if len(entries) < 2:
        return {}
    out = {}
    for name, entry in entries.items():
        where = Path(run_dir) if name == "scratch" else Path(run_dir) / "attackers" / name
        ci, note = _interval(privacy_ci, where, float(entry["cmap"]), boot)
        out[name] = {"cmap": float(entry["cmap"]), "cmap_ci": ci, **({"ci_missing": note} if note else {})}
    return out


def image_quality(results: dict) -> dict | None:
    """SSIM / PSNR / MSE of the anonymized privacy-test images against the originals and the faces
    the detector finds before and after (stage 2's leakage report); None when the run made none."""
    leak = results.get("leakage")
    if not leak or "similarity" not in leak:
        return None
    sim, faces, astro = leak["similarity"], leak.get("faces") or {}, leak.get("astronaut") or {}
    return {
        "ssim": sim["ssim"], "psnr_db": sim["psnr_db"], "mse": sim["mse"], "images": sim["images"],
        "images_with_face": {k: faces[k]["images_with_face"] for k in ("before", "after") if k in faces},
        "astronaut_faces": {k: astro[f"faces_{k}"] for k in ("before", "after") if f"faces_{k}" in astro},
    }


def dp_guarantee(results: dict | None) -> dict | None:
    """(epsilon, delta) and how they were spent, and the reconstruction of the autoencoder's own
    held-out test frames (SSIM / PSNR / MSE, Giorgi et al.'s figures), from its results.json."""
    if results is None:
        return None
    priv = results["privacy"]
    out = {k: priv.get(k) for k in ("private", "optimizer", "noise_multiplier", "max_grad_norm", "epsilon", "delta",
                                    "steps", "sample_rate", "accountant")}
    return {**out, "frames": results.get("test"), "selected_epoch": (results.get("selection") or {}).get("epoch")}


def _interval(compute, *args) -> tuple[dict | None, str | None]:
    """(compute(*args).as_dict(), None), or (None, why) when the run's per-item file is missing or unusable."""
    try:
        return compute(*args).as_dict(), None
    except (OSError, KeyError, ValueError) as e:  # BootstrapError and LengthMismatchError are ValueErrors
        return None, f"{type(e).__name__}: {e}"


def collect(plan: Plan, done: dict[str, dict], boot: BootstrapSection | None = None) -> dict:
    """Every figure of every point and probe, with its interval; None where a step did not finish."""
    boot = boot or BootstrapSection()

    def res(key: str) -> dict | None:
        d = done.get(key, {})
        return d.get("results") if d.get("status") in ("ran", "reused") else None

    def run_dir(key: str) -> Path:
        return Path(done[key]["run_dir"])

    points = {}
    for name, p in plan.points.items():
        pr = res(p.privacy)
        runs = [res(key) for key in p.anomaly]
        # A mean over some of the seeds would not be the figure the table claims: all or nothing.
        finished = all(r is not None for r in runs)
        values = [anomaly_value(r)[1] for r in runs] if finished else []
        metric = anomaly_value(runs[0])[0] if finished else None
        c_ci, c_note = _interval(privacy_ci, run_dir(p.privacy), privacy_cmap(pr), boot) if pr else (None, "no finished run")
        a_ci, a_note = (_interval(anomaly_ci, [run_dir(k) for k in p.anomaly], metric, values, boot) if finished
                        else (None, "not every seed's run finished"))
        attackers = attacker_figures(pr, run_dir(p.privacy), boot) if pr else {}
        worst = max(attackers, key=lambda a: attackers[a]["cmap"]) if attackers else None
        points[name] = {
            "label": p.label,
            "attackers": attackers,
            "worst_case": {"attacker": worst, **attackers[worst]} if worst else None,
            "cmap": privacy_cmap(pr) if pr else None,
            "cmap_runs": [privacy_cmap(pr)] if pr else [],
            "cmap_ci": c_ci,
            "anomaly_metric": metric,
            "anomaly": sum(values) / len(values) if finished else None,
            "anomaly_runs": values,
            "anomaly_ci": a_ci,
            "privacy_step": p.privacy,
            "anomaly_steps": list(p.anomaly),
            # From the MGFN runs' results.json: the videos their feature set left out, and whether any of
            # them was accepted only as a partial result (data.allow_partial).
            "videos_left_out": sorted({v["name"] for r in runs if r for v in r.get("videos_left_out", [])}),
            "partial": any(bool(r.get("partial")) for r in runs if r),
            "image_quality": image_quality(pr) if pr else None,
            "dp": dp_guarantee(res(p.dpae)) if p.dpae else None,
        }
        notes = {k: v for k, v in (("cmap_ci", c_note), ("anomaly_ci", a_note)) if v}
        if notes:
            points[name]["ci_missing"] = notes
    raw = points.get("raw", {})
    for pt in points.values():
        pt["privacy_reduction_pct"] = _relative(pt["cmap"], raw.get("cmap"), reduction=True)
        worst, raw_worst = pt["worst_case"], raw.get("worst_case")
        pt["worst_case_reduction_pct"] = _relative(worst and worst["cmap"], raw_worst and raw_worst["cmap"], reduction=True)
        pt["anomaly_change_pct"] = _relative(pt["anomaly"], raw.get("anomaly"), reduction=False)
    probes = {}
    for label, (key, method) in plan.probes.items():
        pr = res(key)
        c_ci, c_note = _interval(privacy_ci, run_dir(key), privacy_cmap(pr), boot) if pr else (None, "no finished run")
        probes[label] = {"method": method, "cmap": privacy_cmap(pr) if pr else None, "cmap_ci": c_ci, "step": key}
        if c_note:
            probes[label]["ci_missing"] = {"cmap_ci": c_note}
    return {"points": points, "probes": probes, "tables": plan.tables,
            "bootstrap": {"resamples": boot.resamples, "level": boot.level, "seed": boot.seed}}


def _relative(value: float | None, ref: float | None, *, reduction: bool) -> float | None:
    if value is None or ref is None or ref == 0:
        return None
    change = 100.0 * (value - ref) / ref
    return (-change if reduction else change) + 0.0  # + 0.0: no "-0.00" for the reference itself


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.2f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _with_ci(x: float | None, ci: dict | None) -> str:
    """``mean [low, high]`` in %; ``mean [n/a]`` when the run left no per-item file."""
    if x is None:
        return "n/a"
    return f"{_pct(x)} [{_pct(ci['low'])}, {_pct(ci['high'])}]" if ci else f"{_pct(x)} [n/a]"


def _level(summary: dict) -> str:
    return f"{100 * summary.get('bootstrap', {}).get('level', 0.95):g}% CI"


TABLE_TITLES = {
    "main": "Privacy-utility trade-off (Fig. 3; baselines of Tables 2-5)",
    "utility_loss": "Table 2: utility loss (CE = SPAct, CE + L_D = TeD-SPAD, CE + L_I = temporal invariance)",
    "omega": "Table 3: weight omega of the temporal-distinctive triplet loss",
    "mu": "Table 4: triplet margin mu",
    "negative_distance": "Table 5: distance of the negative clip",
}


def _row_label(p: dict) -> str:
    return p["label"] + (" (partial)" if p.get("partial") else " *" if p.get("videos_left_out") else "")


def render_tables(summary: dict) -> str:
    points = summary["points"]
    metric = next((p["anomaly_metric"] for p in points.values() if p["anomaly_metric"]), "auc").upper()
    out = []
    smoke = summary.get("smoke_run")
    if smoke:
        shown = "; ".join(smoke["changes"][:6]) + ("; ..." if len(smoke["changes"]) > 6 else "")
        out += [f"> **Smoke run: these figures are not results.** The per-stage overrides shorten training in "
                f"{len(smoke['steps'])} stage run(s) ({shown}).", ""]
    if summary["probes"]:
        out += [
            "### Table 1: feature-level privacy leakage (MLP probe on fT features of privacy images repeated into static clips)",
            "",
            f"| features | probe cMAP (%) [{_level(summary)}] |",
            "|---|---|",
        ]
        out += [f"| {label} | {_with_ci(p['cmap'], p.get('cmap_ci'))} |" for label, p in summary["probes"].items()]
        out.append("")
    for table, names in summary["tables"].items():
        # With several stage-2 attackers the worst case over them is the privacy figure that counts.
        worst = any(points[n].get("worst_case") for n in names)
        out += [
            f"### {TABLE_TITLES[table]}",
            "",
            f"| method | privacy cMAP (%) [{_level(summary)}] | privacy reduction % "
            + (f"| worst-case attacker cMAP (%) [{_level(summary)}] | worst-case reduction % " if worst else "")
            + f"| anomaly {metric} (%), mean [{_level(summary)}] | {metric} range over seeds (%) | relative {metric} change % |",
            "|---|---|---|" + ("---|---|" if worst else "") + "---|---|---|",
        ]
        for name in names:
            p = points[name]
            spread = f"{_pct(min(p['anomaly_runs']))}-{_pct(max(p['anomaly_runs']))}" if p["anomaly_runs"] else "n/a"
            w = p.get("worst_case")
            worst_cells = (f"{_with_ci(w['cmap'], w.get('cmap_ci'))} ({w['attacker']}) | {_signed(p.get('worst_case_reduction_pct'))} | "
                           if w else "n/a | n/a | ") if worst else ""
            out.append(
                f"| {_row_label(p)} | {_with_ci(p['cmap'], p.get('cmap_ci'))} | {_signed(p['privacy_reduction_pct'])} | "
                f"{worst_cells}{_with_ci(p['anomaly'], p.get('anomaly_ci'))} | {spread} | {_signed(p['anomaly_change_pct'])} |"
            )
        out.append("")
        if worst:
            out.append("Paper protocol: the target model trained from scratch on the anonymized images. Worst case: the "
                       "highest cMAP over the attackers " + ", ".join(sorted({a for n in names for a in points[n].get("attackers", {})}))
                       + " (privacy_training.attackers); the attacker is named in brackets.")
            out.append("")
        for name in names:
            p = points[name]
            if p.get("videos_left_out"):
                left = p["videos_left_out"]
                kind = "partial: videos missing from its feature set" if p.get("partial") else "* videos left out by name"
                out.append(f"{p['label']} ({kind}): {len(left)} video(s): {', '.join(left[:10])}{', ...' if len(left) > 10 else ''}")
        if any(points[n].get("videos_left_out") for n in names):
            out.append("")
        if table == "main" and any(points[n].get("dp") for n in names):
            out += image_quality_table(summary, names, metric)
    return "\n".join(out)


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def image_quality_table(summary: dict, names: Sequence[str], metric: str) -> list[str]:
    """Giorgi et al.'s privacy table (their s.4.2) for every method of the main table: the DP
    guarantee where there is one, the anonymized privacy-test images against the originals, the
    faces the detector still finds, beside cMAP and the anomaly metric."""
    points = summary["points"]
    out = [
        "### The DP autoencoder's privacy table (Giorgi et al. s.4.2): anonymized privacy-test images against the originals",
        "",
        f"| method | epsilon (delta) | held-out video frames: SSIM / PSNR (dB) | SSIM | PSNR (dB) | MSE | images with a face, "
        f"before -> after | faces in the astronaut photo, before -> after | privacy cMAP (%) [{_level(summary)}] | "
        f"anomaly {metric} (%) [{_level(summary)}] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        p, q = points[name], points[name].get("image_quality")
        dp = p.get("dp")
        if dp is None:
            eps = "-"
        elif not dp["private"]:
            eps = "none (not private)"
        else:
            eps = f"{dp['epsilon']:.1f} ({dp['delta']:g}; {dp['optimizer']}, noise {dp['noise_multiplier']:g})"
        frames = (dp or {}).get("frames")
        eps += f" | {frames['ssim']:.3f} / {frames['psnr']:.2f}" if frames else " | -"
        if q is None:
            quality = "n/a | n/a | n/a | n/a | n/a"
        else:
            faces = " -> ".join(str(q["images_with_face"].get(k, "?")) for k in ("before", "after")) + f" of {q['images']}"
            astro = " -> ".join(str(q["astronaut_faces"].get(k, "?")) for k in ("before", "after")) if q["astronaut_faces"] else "n/a"
            quality = f"{_num(q['ssim'], 3)} | {_num(q['psnr_db'], 2)} | {_num(q['mse'], 4)} | {faces} | {astro}"
        out.append(f"| {_row_label(p)} | {eps} | {quality} | {_with_ci(p['cmap'], p.get('cmap_ci'))} | "
                   f"{_with_ci(p['anomaly'], p.get('anomaly_ci'))} |")
    out += ["", "Epsilon: Opacus's accountant over the steps taken, at the delta given (the unit is one training frame); "
            "it bounds what the autoencoder memorises of its training frames, not what a transmitted frame reveals. "
            "Held-out video frames: the autoencoder's own test split of the anomaly videos' frames. SSIM, PSNR, MSE and "
            "faces: the anonymized privacy-test images against the originals (stage 2's leakage report, at its resolution).", ""]
    return out


def draw_tradeoff(summary: dict, path: Path) -> None:
    """Fig. 3: privacy cMAP (x, lower is more private) vs anomaly metric (y), raw marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary["tables"]["main"] if summary["points"][n]["cmap"] is not None and summary["points"][n]["anomaly"] is not None]
    # Points are numbered and named in a legend beside the axes: with a dozen methods in one corner of the
    # plane, names written at the markers cover each other; tab20 keeps up to 20 colours apart.
    fig, ax = plt.subplots(figsize=(9.6, 5.4))
    colours = plt.get_cmap("tab20").colors
    # With several attackers the x axis is the worst case over them (issue 14: judged by attackers the
    # anonymizer never saw), for every point alike.
    worst = all(summary["points"][n].get("worst_case") for n in names) and bool(names)
    for number, n in enumerate(names, start=1):
        p = summary["points"][n]
        privacy = p["worst_case"] if worst else p
        x, y = 100 * privacy["cmap"], 100 * p["anomaly"]
        raw = n == "raw"
        colour = "black" if raw else colours[(number - 1) % len(colours)]
        # Error bars: the bootstrap intervals (cMAP on x, the frame metric on y); none where a run has no per-item file.
        bars = {}
        for axis, ci, centre in (("xerr", privacy.get("cmap_ci"), x), ("yerr", p.get("anomaly_ci"), y)):
            if ci:
                bars[axis] = [[max(centre - 100 * ci["low"], 0.0)], [max(100 * ci["high"] - centre, 0.0)]]
        if bars:
            ax.errorbar([x], [y], **bars, fmt="none", ecolor=colour, alpha=0.5, elinewidth=1, capsize=3, zorder=2)
        ax.scatter([x], [y], marker="*" if raw else "o", s=160 if raw else 50, color=colour, zorder=3,
                   label=f"{number}. {p['label']}")
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8, zorder=4)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, borderaxespad=0.0)
    metric = next((summary["points"][n]["anomaly_metric"] for n in names), "auc") or "auc"
    ax.set_xlabel(("privacy leakage: worst-case attacker cMAP (%)" if worst else "privacy leakage: cMAP of the target model (%)")
                  + "  (lower = more private)")
    ax.set_ylabel(f"anomaly detection: frame {metric.upper()} (%)")
    level = _level(summary)
    ax.set_title(f"Privacy-utility trade-off (raw = black star)\nbars: {level}, bootstrap over test items and MGFN seeds", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


# --------------------------------------------------------------------------- entry


def smoke_note(inputs: dict[str, StepInput]) -> dict | None:
    """What makes this a smoke run (per-stage overrides that shorten training), or None."""
    cut = {k: i.shortened for k, i in inputs.items() if i.shortened}
    if not cut:
        return None
    changes = sorted({f"{key.split('/')[0]} {c['key']} {c['config']} -> {c['run']}" for key, items in cut.items() for c in items})
    return {"steps": sorted(cut), "changes": changes}


def lost_figures(old: dict, new: dict) -> list[str]:
    """The figures (cMAP, AUC of a table row or probe) that ``old`` summary has and ``new`` does not."""
    lost = []
    for group, keys in (("points", ("cmap", "anomaly")), ("probes", ("cmap",))):
        for name, before in (old.get(group) or {}).items():
            after = (new.get(group) or {}).get(name) or {}
            lost += [f"{before.get('label', name)}: {k}" for k in keys if before.get(k) is not None and after.get(k) is None]
    return lost


def write_outputs(out_dir: Path, summary: dict, tables: str) -> Path:
    """tables.md, tradeoff.png and summary.json; returns where the tables went.

    A run that has fewer figures than the summary already there (a failed step's row is n/a where
    the earlier run had a number) never replaces it: its outputs go to ``*.incomplete.*`` beside."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = _read_json(out_dir / "summary.json") or {}
    lost = lost_figures(old, summary)
    suffix = ".incomplete" if lost else ""
    if lost:
        shown = ", ".join(lost[:6]) + (f" and {len(lost) - 6} more" if len(lost) > 6 else "")
        print(f"kept {out_dir / 'tables.md'} and summary.json of an earlier run: this run lacks {shown}; its outputs are "
              f"the *{suffix}.* files beside them", file=sys.stderr, flush=True)
        summary = {**summary, "kept_earlier_outputs": {"lacks": lost}}
    atomic_write_text(out_dir / f"tables{suffix}.md", tables + "\n")
    draw_tradeoff(summary, out_dir / f"tradeoff{suffix}.png")
    atomic_write_json(out_dir / f"summary{suffix}.json", summary, default=str)
    return out_dir / f"tables{suffix}.md"


def run(cfg: ReproduceConfig, *, launcher: Callable[[Step], int] | None = None) -> int:
    """Runs the plan and writes the outputs; returns the number of failed or skipped steps.

    ``launcher`` None: the config's (launcher_for). Raises PreflightError (nothing run) when a
    step's config or a file the plan reads is wrong."""
    launcher = launcher or launcher_for(cfg)
    plan = build_plan(cfg)
    out_dir = resolve_under(cfg.paths.results, Path("reproduce") / cfg.run.name)
    inputs = preflight(plan, cfg)
    print(f"{len(plan.steps)} stage runs for {len(plan.points)} methods; results in {out_dir}", flush=True)
    start = time.perf_counter()
    done = execute(plan, inputs, launcher=launcher)
    summary = collect(plan, done, cfg.bootstrap)
    summary.update(
        config_hash=config_hash(cfg),
        dataset=cfg.dataset,
        wall_seconds=round(time.perf_counter() - start, 1),
        smoke_run=smoke_note(inputs),
        steps=done,
    )
    tables = render_tables(summary)
    written = write_outputs(out_dir, summary, tables)
    print("\n" + tables)
    bad = {k: d for k, d in done.items() if d["status"] in ("failed", "skipped")}
    for k, d in bad.items():
        print(f"{k}: {d['status']}: {d['reason']}", file=sys.stderr)
    print(f"wrote {written}, {written.with_name(written.name.replace('tables', 'tradeoff').replace('.md', '.png'))}, "
          f"{written.with_name(written.name.replace('tables', 'summary').replace('.md', '.json'))} "
          f"({summary['wall_seconds']:.0f} s)", flush=True)
    return len(bad)


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = parse_cli(ReproduceConfig, argv, default_config=DEFAULT_CONFIG, prog=PROG)
    try:
        return 1 if run(cfg) else 0
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the driver's own writes (markers, tables, summary): one line, never a traceback
        print(f"{PROG}: error: {environment_fault(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
