"""Configuration of the LUSS-AE detector (``python -m anomaly_detection.luss``; ``--help-config`` lists every key).

Paper settings live in configs/luss/, the embedded defaults (tiny model, synthetic analogues) in
configs/synthetic/luss/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aux_code.anonymizers import AnonymizerSection
from aux_code.config import ConfigError, PathsConfig, TrainRunConfig, opt
from aux_code.luss_scoring import PAPER_ALPHAS
from aux_code.precision import PRECISION_HELP, PrecisionMode, validate_precision
from aux_code.schedule import ScheduleSection
from aux_code.sections import shared

DATASETS = ("ped2", "avenue", "shanghaitech_unsupervised")


@dataclass
class DataSection:
    """Which benchmark (Ped2, Avenue or the ShanghaiTech unsupervised split), the training windows and the
    held-out (normal) validation videos (at least one when validation_fraction > 0)."""

    dataset: Literal["ped2", "avenue", "shanghaitech_unsupervised"] = shared("data.dataset", "ped2")
    window_stride: int = opt(1, "Frames between the starts of consecutive training windows (1: every frame starts one).")
    validation_fraction: float = shared("validation_fraction", 0.1)


@dataclass
class ClipSection:
    """The autoencoder's input: T + 1 grey frames in [-1, 1] (T for VCR / PRP, the next one for FFP)."""

    clip_len: int = shared("clip_len", 16)  # a multiple of 8 (three stride-2 levels in time)
    frame_size: list[int] = opt([256, 256], "Frames are resized to [height, width] (multiples of 16).")


@dataclass
class ModelSection:
    preset: Literal["paper", "small", "tiny"] = shared("model.preset", "paper")  # paper: Gong et al.'s 3DCAE, 6.13 M parameters


@dataclass
class LossSection:
    """Eq. 7's weights (the paper's lambda 0.6 / 0.4 / 1); 0 switches a task off (the VCR-only baseline: ffp=0, prp=0)."""

    vcr: float = opt(0.6, "lambda_1: weight of the clip reconstruction MSE.")
    ffp: float = opt(0.4, "lambda_2: weight of the future-frame MSE.")
    prp: float = opt(1.0, "lambda_3: weight of the playback-rate cross-entropy.")


@dataclass
class OptimSection:
    lr: float = shared("optim.lr", 1e-4)
    batch_size: int = shared("optim.batch_size", 16)
    epochs: int = shared("optim.epochs", 60)
    steps_per_epoch: Optional[int] = shared("optim.steps_per_epoch", None)


@dataclass
class EvalSection:
    every: int = shared("eval.every", 1)
    measure: Literal["mse", "pse", "bpe"] = opt("bpe", "Error measure E of A_VCR and A_FFP (the paper's choice: BPE).")
    rescaling: Literal["robust", "minmax"] = opt("robust", "Per-video rescaling of each task score before the weighted sum.")
    alphas: Optional[list[float]] = opt(
        None, "[a_VCR, a_FFP, a_PRP] of Eq. 15; null takes the paper's values for data.dataset "
        "(Ped2 0.1/0.8/1, Avenue 0.1/1/0.1, ShanghaiTech 0.2/0.2/0.9).")
    batch_size: int = shared("eval.batch_size", 16)
    validation_windows: int = opt(256, "At most this many windows (evenly spaced) per validation pass.")
    plot_videos: Optional[int] = shared("eval.plot_videos", None)


@dataclass
class LussConfig:
    """LUSS-AE: train on normal videos with VCR + FFP + PRP, select on held-out normal videos, score the test set."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: TrainRunConfig = opt(TrainRunConfig(), "Run name, seed, device, resume, logging.")
    data: DataSection = opt(DataSection(), "Benchmark, training windows, validation videos.")
    clip: ClipSection = opt(ClipSection(), "Clip length and frame size.")
    model: ModelSection = opt(ModelSection(), "The autoencoder.")
    loss: LossSection = opt(LossSection(), "Training objective.")
    optim: OptimSection = opt(OptimSection(), "Optimiser and epochs.")
    schedule: ScheduleSection = opt(ScheduleSection(), "Learning-rate schedule.")
    eval: EvalSection = opt(EvalSection(), "Validation and test scoring.")
    anonymizer: AnonymizerSection = opt(
        AnonymizerSection(),
        "What every frame (training and test) goes through before the autoencoder sees it: the same object as stages 2 "
        "and 3 (raw: the grey release frames untouched). Other methods work on RGB: boxes at the original resolution, "
        "then resize to clip.frame_size, the model, then grey.",
    )
    precision: PrecisionMode = opt("auto", PRECISION_HELP)

    def required_paths(self) -> list[str]:
        return [self.data.dataset]

    def alphas(self) -> tuple[float, float, float]:
        return tuple(self.eval.alphas) if self.eval.alphas is not None else PAPER_ALPHAS[self.data.dataset]

    def validate(self) -> None:
        r = self.clip.frame_size
        checks = [
            (self.clip.clip_len >= 8 and self.clip.clip_len % 8 == 0, f"clip.clip_len = {self.clip.clip_len} must be a positive multiple of 8"),
            (len(r) == 2 and all(x >= 16 and x % 16 == 0 for x in r), f"clip.frame_size = {r} must be [height, width], multiples of 16"),
            (self.data.window_stride >= 1, f"data.window_stride = {self.data.window_stride} must be >= 1"),
            (0.0 <= self.data.validation_fraction < 1.0, f"data.validation_fraction = {self.data.validation_fraction} must be in [0, 1)"),
            (min(self.loss.vcr, self.loss.ffp, self.loss.prp) >= 0 and self.loss.vcr + self.loss.ffp + self.loss.prp > 0,
             "loss.vcr, loss.ffp, loss.prp must be >= 0 and not all 0"),
            (self.optim.lr > 0 and self.optim.batch_size >= 1 and self.optim.epochs >= 1 and (self.optim.steps_per_epoch is None or self.optim.steps_per_epoch >= 1),
             "optim.lr > 0, optim.batch_size >= 1, optim.epochs >= 1, optim.steps_per_epoch >= 1 or null"),
            (self.eval.every >= 1 and self.eval.batch_size >= 1 and self.eval.validation_windows >= 1,
             "eval.every, eval.batch_size and eval.validation_windows must be >= 1"),
            (self.eval.alphas is None or (len(self.eval.alphas) == 3 and all(a >= 0 for a in self.eval.alphas)),
             f"eval.alphas = {self.eval.alphas} must be null or three weights >= 0"),
            (self.eval.plot_videos is None or self.eval.plot_videos >= 0, "eval.plot_videos must be null or >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.schedule.validate()
        self.anonymizer.validate()
        validate_precision(self.precision, self.run.device)
