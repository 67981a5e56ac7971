"""Configuration of stage 2: privacy evaluation on VISPR (or its synthetic analogue).

Loaded by ``python -m privacy_training --config FILE key=value ...``; every key is listed
with its meaning by ``--help-config``. Paper settings live in configs/privacy/, the embedded
default (resnet_tiny at 64x64 on the synthetic world) in configs/synthetic/privacy/.

Two tasks share the data path (decode -> person boxes -> crop/resize -> frozen fA -> cache):

- ``target``: train a fresh target model fB' on anonymized images, select the epoch on a
  validation split carved from train, report test cMAP / per-attribute AP / macro F1, plus
  image-level leakage (SSIM, PSNR, MSE, Haar face counts). ``attackers.run`` adds attackers
  the anonymizer never saw (Wu et al.'s two-fold protocol; privacy_training.attackers): each is
  scored the same way, with a bootstrap interval, and the worst case over them is reported.
- ``probe``: feature-level leakage (paper Table 1): each image repeated T times as a clip,
  fT's pooled feature, a small MLP probe for the attributes, test cMAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from aux_code.anonymizers import AnonymizerSection
from aux_code.config import ConfigError, PathsConfig, TrainRunConfig, opt, resolve_under
from aux_code.models import available_models
from aux_code.stats import DEFAULT_RESAMPLES
from aux_code.runtime import DDPSection
from aux_code.schedule import ScheduleSection
from aux_code.sections import StillClipSection, UtilitySource, shared


@dataclass
class DataSection:
    """Which images and how the validation split is carved from the released train split."""

    validation_fraction: float = shared("validation_fraction", 0.1)
    validation_seed: int = shared("validation_seed", 0)
    on_label_error: Literal["raise", "skip"] = opt(
        "raise",
        "A label entry with the wrong attribute count or non-0/1 values: stop ('raise') or leave it out and list it "
        "in the summary ('skip').",
    )
    max_decode_failures: float = opt(
        0.05,
        "Images that fail to decode are reported and skipped; the run stops when more than this fraction of a "
        "split fails (a wrong root, not a few bad files).",
    )
    anonymize_batch: int = opt(64, "Images per fA forward pass while building the cache.")


@dataclass
class CacheSection:
    """The anonymized images, computed once and reused by every epoch and every rerun."""

    enabled: bool = opt(True, "Read/write the anonymized-image cache (false: anonymize in memory every run, never saved).")
    dir: str = opt(
        "privacy/cache",
        "Cache folder; relative paths resolve under paths.runs. One file per (anonymizer, resolution, split content).",
    )


@dataclass
class ModelSection:
    """The target model fB'."""

    name: Literal["resnet50", "resnet_tiny"] = opt("resnet50", "Target architecture (aux_code.models build_target).")
    weights: Optional[str] = opt(
        None,
        "Initialise from a local weights file (torchvision ImageNet, SimCLR, ...); relative paths resolve under "
        "paths.weights. null trains from scratch, as the public code does.",
    )
    weights_key: Optional[str] = opt(None, "Entry of a multi-model weights file to read (e.g. 'state_dict'); null detects it.")


# The attackers of attackers.run (privacy_training.attackers describes each).
AttackerName = Literal["scratch", "finetune_raw", "other_arch"]


@dataclass
class AttackersSection:
    """Attackers that train on the anonymized privacy-train images and are scored on the anonymized test images."""

    run: list[AttackerName] = opt(
        ["scratch"],
        "Which attackers run: scratch (the paper's target model, model.*, from model.weights; the headline test "
        "cMAP), finetune_raw (the same model first trained on raw privacy-train images, then fine-tuned on the "
        "anonymized ones), other_arch (attackers.other_model trained from scratch). Must include scratch.",
    )
    pretrain_dir: str = opt(
        "privacy/attacker_pretrain",
        "finetune_raw: where its raw-image pre-training runs live, one folder per hash of what decides them (model, "
        "raw images, optimiser, schedule, augmentation, seed), so every method reuses one; relative to paths.runs.",
    )
    other_model: str = opt(
        "mobilenet_tiny",
        "other_arch: the target architecture (aux_code.models target names; must differ from model.name), trained "
        "from scratch with the optim / schedule / augment settings of the target model.",
    )


@dataclass
class BootstrapSection:
    """The 95% intervals of the tables (aux_code.stats: percentile bootstrap over test items, then seeds)."""

    # Help texts as in scripts/reproduce.py's section: one meaning per key (tests/test_vocabulary.py).
    resamples: int = opt(DEFAULT_RESAMPLES, "Bootstrap resamples B of the test items (images for cMAP, whole videos for the frame metric).")
    level: float = opt(0.95, "Confidence level of the intervals, in (0, 1).")
    seed: int = opt(0, "Seed of the resampling generator (numpy default_rng): the same runs always give the same intervals.")


@dataclass
class AugmentSection:
    """Light training augmentation, applied batch-wise to the cached tensors."""

    min_crop_scale: float = opt(0.8, "Random square crop of this fraction of the side or more, resized back (1.0: no crop).")
    flip: bool = opt(True, "Random horizontal flip.")


@dataclass
class OptimSection:
    """Adam of the target model (the schedule section sets its lr: warm-up, then divide-by-5 on a plateau)."""

    lr: float = shared("optim.lr", 1e-3)
    weight_decay: float = shared("optim.weight_decay", 0.0)
    batch_size: int = shared("optim.batch_size", 32)
    epochs: int = shared("optim.epochs", 50)


@dataclass
class EvalSection:
    """Validation, test metrics and the comparison with the raw run."""

    every: int = shared("eval.every", 1)
    batch_size: int = shared("eval.batch_size", 128)
    f1_threshold: float = opt(0.5, "Threshold on sigmoid probabilities for macro F1.")
    compare_to: Optional[str] = opt(
        None,
        "Run directory (relative to paths.runs, e.g. 'privacy/raw') whose results.json gives the raw cMAP for "
        "'privacy reduction %'. null: no comparison.",
    )


@dataclass
class LeakageSection:
    """Image-level leakage (DP-autoencoder paper): similarity to the original and faces still found."""

    enabled: bool = opt(True, "Compute SSIM / PSNR / MSE and face counts on the test split (target task only).")
    face_detector: bool = opt(True, "Count faces with OpenCV's Haar cascade (frontal face) before and after anonymization.")
    scale_factor: float = opt(1.1, "Haar detectMultiScale scaleFactor.")
    min_neighbors: int = opt(5, "Haar detectMultiScale minNeighbors.")
    min_face: int = opt(16, "Smallest face side in pixels the cascade looks for.")
    astronaut: bool = opt(True, "Also count faces on scikit-image's astronaut photograph, before and after fA.")
    astronaut_resolution: int = opt(
        224,
        "Side the astronaut photograph (512x512) is resized to before fA, i.e. the resolution the anonymizer works at "
        "in the paper; independent of clip.resolution so a small synthetic setting still tests a real photograph.",
    )


@dataclass
class ProbeSection:
    """Feature-level probe (paper Table 1): fT features (the utility section) of images repeated clip.clip_len times."""

    feature_batch: int = opt(32, "Clips per fT forward pass during feature extraction.")
    hidden: int = opt(256, "Hidden width of the MLP probe (0: a linear probe).")
    dropout: float = opt(0.2, "Dropout before the probe's output layer.")
    lr: float = opt(1e-3, "Adam learning rate of the probe.")
    weight_decay: float = opt(1e-4, "Adam weight decay of the probe.")
    epochs: int = opt(100, "Probe training epochs (full-batch features: cheap).")
    batch_size: int = opt(128, "Probe training batch size.")


@dataclass
class PrivacyConfig:
    """Stage 2: privacy leakage of an anonymizer on VISPR (target model, feature probe, image metrics)."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: TrainRunConfig = opt(TrainRunConfig(), "Run name, seed, device, resume, logging.")
    task: Literal["target", "probe"] = shared("task", "target")
    anonymizer: AnonymizerSection = opt(AnonymizerSection(), "The frozen anonymizer fA (or baseline) applied to every image.")
    data: DataSection = opt(DataSection(), "Images and the validation split.")
    clip: StillClipSection = opt(StillClipSection(crop_scale=1.0), "Image size and crop; clip_len: the probe's still clips.")
    utility: UtilitySource = opt(UtilitySource(), "task probe: the utility model fT whose features are probed.")
    cache: CacheSection = opt(CacheSection(), "Anonymized-image cache.")
    model: ModelSection = opt(ModelSection(), "Target model fB'.")
    augment: AugmentSection = opt(AugmentSection(), "Training augmentation of the target model.")
    optim: OptimSection = opt(OptimSection(), "Target-model optimiser and epochs.")
    schedule: ScheduleSection = opt(
        ScheduleSection(warmup_epochs=2, warmup_start=0.1, plateau_patience=4, plateau_factor=0.2, min_lr=1e-6),
        "Learning-rate schedule of the target model.",
    )
    eval: EvalSection = opt(EvalSection(), "Validation, test metrics, comparison with raw.")
    leakage: LeakageSection = opt(LeakageSection(), "Image-level leakage metrics.")
    probe: ProbeSection = opt(ProbeSection(), "Feature-level probe (task: probe).")
    attackers: AttackersSection = opt(AttackersSection(), "task target: the attackers trained and scored (worst case reported).")
    bootstrap: BootstrapSection = opt(BootstrapSection(), "Confidence intervals of every attacker's test cMAP (over test images).")
    ddp: DDPSection = opt(DDPSection(), "Data-parallel training under torchrun (global batches, BatchNorm over ranks).")

    def required_paths(self) -> list[str]:
        return ["vispr"]

    def cache_dir(self) -> Path:
        return resolve_under(self.paths.runs, self.cache.dir)

    def pretrain_root(self) -> Path:
        return resolve_under(self.paths.runs, self.attackers.pretrain_dir)

    def compare_path(self) -> Path | None:
        if self.eval.compare_to is None:
            return None
        return resolve_under(self.paths.runs, self.eval.compare_to) / "results.json"

    def validate(self) -> None:
        d, o, p = self.data, self.optim, self.probe
        checks = [
            (self.clip.resolution >= 16, f"clip.resolution = {self.clip.resolution} must be >= 16"),
            (0.0 < d.validation_fraction < 1.0,
             f"data.validation_fraction = {d.validation_fraction} must be in (0, 1): epoch selection needs a validation split"),
            (0.0 <= d.max_decode_failures < 1.0, f"data.max_decode_failures = {d.max_decode_failures} must be in [0, 1)"),
            (d.anonymize_batch >= 1, f"data.anonymize_batch = {d.anonymize_batch} must be >= 1"),
            (0.0 < self.augment.min_crop_scale <= 1.0, f"augment.min_crop_scale = {self.augment.min_crop_scale} must be in (0, 1]"),
            (o.lr > 0, f"optim.lr = {o.lr} must be > 0"),
            (o.batch_size >= 2, f"optim.batch_size = {o.batch_size} must be >= 2 (BatchNorm)"),
            (o.epochs >= 1, f"optim.epochs = {o.epochs} must be >= 1"),
            (self.eval.every >= 1, f"eval.every = {self.eval.every} must be >= 1"),
            (self.eval.batch_size >= 1, f"eval.batch_size = {self.eval.batch_size} must be >= 1"),
            (0.0 < self.eval.f1_threshold < 1.0, f"eval.f1_threshold = {self.eval.f1_threshold} must be in (0, 1)"),
            (self.leakage.scale_factor > 1.0, f"leakage.scale_factor = {self.leakage.scale_factor} must be > 1"),
            (self.leakage.astronaut_resolution >= 32, f"leakage.astronaut_resolution = {self.leakage.astronaut_resolution} must be >= 32"),
            (self.leakage.min_face >= 1, f"leakage.min_face = {self.leakage.min_face} must be >= 1"),
            (p.hidden >= 0, f"probe.hidden = {p.hidden} must be >= 0"),
            (0.0 <= p.dropout < 1.0, f"probe.dropout = {p.dropout} must be in [0, 1)"),
            (p.epochs >= 1 and p.batch_size >= 2 and p.lr > 0, "probe.epochs >= 1, probe.batch_size >= 2 and probe.lr > 0 are required"),
            (self.bootstrap.resamples >= 1 and 0.0 < self.bootstrap.level < 1.0,
             f"bootstrap: resamples = {self.bootstrap.resamples} must be >= 1 and level = {self.bootstrap.level} in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.schedule.validate()
        self.clip.validate()
        self._validate_attackers()
        u = self.utility
        if self.task == "probe" and (u.checkpoint is None) == (u.weights is None):
            raise ConfigError(
                "task: probe needs exactly one source of the utility model: utility.checkpoint (a stage-1 checkpoint "
                "under paths.runs) or utility.weights (a public I3D weights file under paths.weights)"
            )

    def _validate_attackers(self) -> None:
        a = self.attackers
        if "scratch" not in a.run:
            raise ConfigError(f"attackers.run = {a.run} must include 'scratch': the paper protocol's target model gives the "
                              "headline test cMAP the others are compared with")
        repeated = sorted({name for name in a.run if a.run.count(name) > 1})
        if repeated:
            raise ConfigError(f"attackers.run = {a.run} names {', '.join(repeated)} more than once")
        if "other_arch" in a.run:
            targets = available_models("target")
            if a.other_model not in targets:
                raise ConfigError(f"attackers.other_model = {a.other_model!r} is not a target architecture; choose from "
                                  f"{', '.join(targets)}")
            if a.other_model == self.model.name:
                raise ConfigError(f"attackers.other_model = {a.other_model!r} is model.name: other_arch needs a different "
                                  "architecture than the paper's target model")
