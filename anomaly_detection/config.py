"""Configuration of stage 4: MGFN training and frame-level evaluation on a feature set.

Loaded by ``python -m anomaly_detection --config FILE key=value ...``; every key is
listed with its meaning by ``--help-config``. Paper settings live in configs/anomaly/,
the embedded default (tiny MGFN on the synthetic world) in configs/synthetic/anomaly/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from aux_code.config import ConfigError, PathsConfig, TrainRunConfig, opt, resolve_under
from aux_code.precision import PRECISION_HELP, PrecisionMode, validate_precision
from aux_code.schedule import ScheduleSection
from aux_code.sections import shared

# The headline frame-level metric each benchmark reports (REFERENCE.md section 1, step 5).
DATASET_METRIC: dict[str, str] = {"ucf_crime": "auc", "shanghaitech": "auc", "xd_violence": "ap"}


@dataclass
class DataSection:
    """Which feature set to train and test on, and how the training videos are split."""

    features: str = opt(
        "extraction/default",
        "Feature directory written by feature extraction (manifest.json + one .npy per video); "
        "a relative path resolves under paths.runs.",
    )
    expected_dataset: Optional[str] = opt(
        None,
        "Expected dataset of the feature set (ucf_crime, xd_violence, shanghaitech, ...); when set, a "
        "manifest of another dataset is an error. null accepts whatever the manifest says.",
    )
    num_segments: int = opt(32, "Segments each training video is resampled to (MGFN/RTFM process_feat).")
    validation_fraction: float = shared("validation_fraction", 0.1)  # stratified by label
    cache_eval: bool = opt(
        True,
        "Keep validation and test features in memory between evaluations (else re-read them from disk "
        "at each evaluation; use false for 10-crop features of large test sets).",
    )
    exclude: list[str] = shared("data.exclude", [])  # results.json lists them under videos_left_out
    exclude_failed: bool = opt(
        False,
        "Leave out every video the feature extraction lists as failed (failures.json / the manifest), instead of "
        "refusing the set; results.json lists them under videos_left_out.",
    )
    allow_partial: bool = opt(
        False,
        "Accept a feature set that lacks videos nothing above accounts for (a failed extraction, data.limit): the "
        "run reports partial = true and the missing videos in every output. false: such a set is an error.",
    )


@dataclass
class ModelSection:
    """MGFN size and its top-k selection (REFERENCE.md section 2)."""

    preset: Literal["paper", "tiny"] = shared("model.preset", "paper")  # paper: 28.65 M parameters at 2048-d
    feature_dim: Optional[int] = opt(
        2048,
        "Feature dimension D the model expects (without the magnitude channel); must equal the manifest's "
        "feature_dim. null takes it from the manifest.",
    )
    k: int = opt(3, "Top-k segments (by feature magnitude) whose mean score is the video score.")
    magnitude_dropout: float = opt(0.7, "Dropout rate of the mask on segment magnitudes during top-k selection in training.")
    magnitude_ratio: float = opt(0.1, "Weight of the magnitude branch in the feature amplification (0.1 in MGFN).")
    dropout: float = opt(0.0, "Dropout inside the feed-forward blocks.")


@dataclass
class LossSection:
    """MGFN loss weights (REFERENCE.md section 3; defaults are MGFN's code)."""

    smoothness_weight: float = opt(8e-4, "lambda_1: weight of sum (s[t+1] - s[t])^2 over segment scores.")
    sparsity_weight: float = opt(8e-3, "lambda_2: weight of the L2 norm of the segment scores of sparsity_target videos.")
    sparsity_target: Literal["abnormal", "normal"] = opt(
        "abnormal",
        "Which half the sparsity term acts on: 'abnormal' (the author's version, RTFM lineage) or 'normal' "
        "(a later change of the public code).",
    )
    contrastive_margin: float = opt(200.0, "Margin of the magnitude-contrastive separation between abnormal and normal top-k L1 magnitudes.")
    separation_weight: float = opt(1e-6, "Weight of the separation term (MGFN: 1e-3 * 1e-3).")
    compact_weight: float = opt(1e-3, "Weight of each same-class compactness term.")


@dataclass
class OptimSection:
    """Adam and the epoch loop."""

    lr: float = shared("optim.lr", 1e-3)
    weight_decay: float = shared("optim.weight_decay", 5e-4)
    epochs: int = shared("optim.epochs", 100)  # an epoch covers every training video of the larger class once
    batch_per_class: int = opt(
        16,
        "Normal and abnormal videos per step and per process (16 + 16 in MGFN); capped at the smaller "
        "class size of this process's shard.",
    )


@dataclass
class SasSection:
    """Sigmoidal anomaly score (Giorgi et al., REFERENCE.md section 6) over a test video's clip scores."""

    tau: float = opt(0.5, "Score threshold: clip scores above it push the accumulator up.")
    v: float = opt(2.0, "Step size of the accumulator.")
    upper: float = opt(7.0, "Upper bound UB of the accumulator.")
    lower: float = opt(-7.0, "Lower bound LB of the accumulator (and its start value).")
    threshold: float = opt(0.5, "A video is predicted anomalous when its SAS exceeds this anywhere (video-level F1).")


@dataclass
class EvalSection:
    """Validation, test metrics, online scoring and what is written for inspection."""

    every: int = shared("eval.every", 1)
    metric: Optional[Literal["auc", "ap"]] = opt(
        None,
        "Headline test metric: 'auc' (frame ROC AUC: UCF-Crime, ShanghaiTech) or 'ap' (frame average "
        "precision: XD-Violence). null derives it from the manifest's dataset (auc when unknown).",
    )
    validation_metric: Literal["video_auc", "frame_auc"] = opt(
        "video_auc",
        "Selection metric on the validation split: 'video_auc' (ROC AUC of the top-k video scores against "
        "the video labels; needs only the weak labels) or 'frame_auc' (needs frame intervals for every "
        "anomalous validation video).",
    )
    robust_rescale: bool = opt(
        False,
        "Rescale each video's clip scores by (x - median) / (p99 - p1) (LUSS-AE) before the frame metrics.",
    )
    sas: SasSection = opt(SasSection(), "Online scoring of the test videos (SAS and video-level F1).")
    plot_videos: Optional[int] = shared("eval.plot_videos", 4)


@dataclass
class AnomalyConfig:
    """Stage 4: train MGFN on extracted clip features, select on validation, report test metrics."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: TrainRunConfig = opt(TrainRunConfig(), "Run name, seed, device, resume, logging.")
    data: DataSection = opt(DataSection(), "Feature set and the validation split.")
    model: ModelSection = opt(ModelSection(), "MGFN.")
    loss: LossSection = opt(LossSection(), "MGFN loss.")
    optim: OptimSection = opt(OptimSection(), "Optimiser and epochs.")
    schedule: ScheduleSection = opt(ScheduleSection(), "Learning-rate schedule of MGFN (the paper's: none, the default).")
    precision: PrecisionMode = opt("fp32", PRECISION_HELP)  # bf16: about 1.5x per paper-size epoch with AVX512-BF16 (docs/benchmarks.md)
    eval: EvalSection = opt(EvalSection(), "Evaluation and outputs.")

    def required_paths(self) -> list[str]:
        # Only the feature directory is read, and it lives under paths.runs (checked when loaded,
        # with a message that says to run feature extraction first).
        return []

    def feature_dir(self) -> Path:
        return resolve_under(self.paths.runs, self.data.features)

    def validate(self) -> None:
        checks = [
            (0.0 <= self.data.validation_fraction < 1.0, f"data.validation_fraction = {self.data.validation_fraction} must be in [0, 1)"),
            (self.data.num_segments >= 1, f"data.num_segments = {self.data.num_segments} must be >= 1"),
            (self.model.feature_dim is None or self.model.feature_dim >= 1, f"model.feature_dim = {self.model.feature_dim} must be >= 1 or null"),
            (self.model.k >= 1, f"model.k = {self.model.k} must be >= 1"),
            (0.0 <= self.model.magnitude_dropout < 1.0, f"model.magnitude_dropout = {self.model.magnitude_dropout} must be in [0, 1)"),
            (self.optim.epochs >= 1, f"optim.epochs = {self.optim.epochs} must be >= 1"),
            (self.optim.batch_per_class >= 1, f"optim.batch_per_class = {self.optim.batch_per_class} must be >= 1"),
            (self.optim.lr > 0, f"optim.lr = {self.optim.lr} must be > 0"),
            (self.eval.every >= 1, f"eval.every = {self.eval.every} must be >= 1"),
            (self.eval.plot_videos is None or self.eval.plot_videos >= 0, f"eval.plot_videos = {self.eval.plot_videos} must be >= 0 or null"),
            (0.0 <= self.eval.sas.tau < 1.0, f"eval.sas.tau = {self.eval.sas.tau} must be in [0, 1)"),
            (self.eval.sas.lower <= self.eval.sas.upper, f"eval.sas.lower = {self.eval.sas.lower} must be <= eval.sas.upper = {self.eval.sas.upper}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.schedule.validate()
        validate_precision(self.precision, self.run.device)


def headline_metric(configured: str | None, dataset: str) -> str:
    """'auc' or 'ap': the configured choice, else the dataset's convention (auc when unknown)."""
    return configured if configured is not None else DATASET_METRIC.get(dataset, "auc")
