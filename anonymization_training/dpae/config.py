"""Configuration of the DP autoencoder training (``python -m anonymization_training.dpae``).

Giorgi, Abbasi and Saracino (JoWUA 2022): an autoencoder whose encoder runs on the camera
and whose decoder runs on the server, trained on frames of the anomaly dataset's training
videos with Adam (no DP) or DP-SGD / DP-Adam / DP-Adagrad (Opacus). ``--help-config`` lists
every key. Paper settings live in configs/dpae/, the embedded default (tiny model, 32x32
frames cut as stage 3 cuts them) in configs/synthetic/dpae/. The run directory
``<paths.runs>/dpae/<run.name>/`` gets ``best.pt`` / ``last.pt`` (both halves, for resuming),
``encoder.pt`` (the camera's file: the encoder alone) and ``decoder.pt`` (the server's) and
``results.json`` with the privacy spent as (epsilon, delta) and test SSIM / PSNR / MSE.

DP training always runs in fp32 (no ``precision`` key): Opacus clips per-example gradients,
which fp16 loss scaling would distort and bf16 has not been checked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aux_code.config import ConfigError, PathsConfig, TrainRunConfig, opt
from aux_code.sections import shared

PRESETS = {"paper": "dpae", "tiny": "dpae_tiny"}  # model.preset -> registry name of both halves


@dataclass
class DataSection:
    """Which frames train the autoencoder: training videos of an anomaly dataset, cut like the camera cuts them."""

    dataset: Literal["ucf_crime", "xd_violence", "shanghaitech"] = shared("data.dataset", "ucf_crime")
    classes: Optional[list[str]] = opt(
        None,
        "Classes whose training videos give frames (the paper: Arrest, Assault, Burglary, Robbery, Stealing, "
        "Vandalism, Normal); null: every class of the training split. A name the split does not have is an error.",
    )
    videos_per_class: int = opt(1, "Training videos drawn at random (data.validation_seed) per class (paper: 1).")
    frame_stride: int = opt(1, "Use every N-th frame of a chosen video.")
    max_frames_per_video: Optional[int] = opt(None, "At most this many frames per video (after the stride); null: all.")
    frame_size: list[int] = opt(
        [240, 320],
        "[height, width] of the frames the autoencoder sees and the camera encodes, multiples of 8 (paper: "
        "[240, 320] -> a 30x40x16 code). Stages 2 and 3 run the trained pair at their clip.resolution: train at it.",
    )
    crop_scale: float = opt(
        1.0,
        "Centred crop of the largest box with frame_size's aspect ratio, as a fraction of it, before the resize "
        "(the stages' clip.crop_scale geometry); 1.0 with a frame_size of the video's aspect: the whole frame.",
    )
    split_fractions: list[float] = opt([0.7, 0.15, 0.15], "Train / validation / test fractions of the frames, drawn at random (paper: 70/15/15).")
    validation_seed: int = shared("validation_seed", 0)


@dataclass
class ModelSection:
    preset: Literal["paper", "tiny"] = shared("model.preset", "paper")  # tiny: hidden widths / 8, the same 16-channel code


@dataclass
class DPSection:
    """Differential privacy (Opacus): per-example clipping, Gaussian noise, Poisson sampling, the accountant."""

    private: bool = opt(True, "false: the paper's No-DP baseline (the plain optimizer; no clipping, no noise, no epsilon).")
    noise_multiplier: float = opt(
        1.0, "Noise standard deviation over the clipping norm (paper: 0.1 to 1.0); must be > 0. Ignored when dp.target_epsilon is set."
    )
    max_grad_norm: float = opt(1.0, "Per-example gradient clipping norm C (L2 over all parameters).")
    target_epsilon: Optional[float] = opt(
        None, "Solve the noise multiplier for this epsilon at dp.delta over the whole training (null: use dp.noise_multiplier)."
    )
    delta: float = opt(1e-5, "delta of the (epsilon, delta) guarantee; keep it below 1 / (training frames).")
    accountant: Literal["rdp", "prv", "gdp"] = opt(
        "rdp", "Opacus accountant for epsilon: 'rdp' (Renyi DP, as TensorFlow Privacy in the paper), 'prv' (tighter), 'gdp'."
    )


@dataclass
class OptimSection:
    optimizer: Literal["sgd", "adam", "adagrad"] = opt(
        "adam", "torch optimizer Opacus wraps: sgd / adam / adagrad (DP-SGD / DP-Adam / DP-Adagrad when dp.private)."
    )
    lr: float = shared("optim.lr", 1e-5)  # paper: 1e-5
    batch_size: int = shared("optim.batch_size", 50)  # frames; with DP the expected size of a Poisson batch (paper: blocks of 50)
    epochs: int = shared("optim.epochs", 50)


@dataclass
class EvalSection:
    batch_size: int = shared("eval.batch_size", 64)
    patience: int = opt(5, "Early stopping: stop after this many validations without a lower validation MSE (paper: 5).")
    quality_patience: Optional[int] = opt(
        None,
        "Early stopping, the paper's second rule: stop after this many validations in which neither validation SSIM "
        "nor PSNR rose above its best (paper: 6, counted in blocks of 50 frames); null: off.",
    )


@dataclass
class DPAEStageConfig:
    """The DP autoencoder of Giorgi et al.: train the camera encoder and server decoder, with or without DP."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: TrainRunConfig = opt(TrainRunConfig(), "Run name, seed, device, resume, logging.")
    data: DataSection = opt(DataSection(), "Training frames and their train / validation / test split.")
    model: ModelSection = opt(ModelSection(), "The autoencoder.")
    dp: DPSection = opt(DPSection(), "Differential privacy.")
    optim: OptimSection = opt(OptimSection(), "Optimiser and epochs.")
    eval: EvalSection = opt(EvalSection(), "Validation and early stopping.")

    def required_paths(self) -> list[str]:
        return [self.data.dataset]

    def validate(self) -> None:
        d, p, o, e = self.data, self.dp, self.optim, self.eval
        checks = [
            (len(d.frame_size) == 2 and all(s >= 8 and s % 8 == 0 for s in d.frame_size),
             f"data.frame_size = {d.frame_size} must be [height, width], positive multiples of 8 (three stride-2 stages)"),
            (0.0 < d.crop_scale <= 1.0, f"data.crop_scale = {d.crop_scale} must be in (0, 1]"),
            (d.videos_per_class >= 1, f"data.videos_per_class = {d.videos_per_class} must be >= 1"),
            (d.frame_stride >= 1, f"data.frame_stride = {d.frame_stride} must be >= 1"),
            (d.max_frames_per_video is None or d.max_frames_per_video >= 1,
             f"data.max_frames_per_video = {d.max_frames_per_video} must be >= 1 or null"),
            (d.classes is None or len(d.classes) > 0, "data.classes must be null or a non-empty list"),
            (len(d.split_fractions) == 3 and all(f > 0 for f in d.split_fractions) and abs(sum(d.split_fractions) - 1.0) < 1e-6,
             f"data.split_fractions = {d.split_fractions} must be three positive fractions summing to 1"),
            (not p.private or p.target_epsilon is not None or p.noise_multiplier > 0,
             f"dp.noise_multiplier = {p.noise_multiplier} must be > 0 (for training without DP set dp.private=false)"),
            (p.target_epsilon is None or p.target_epsilon > 0, f"dp.target_epsilon = {p.target_epsilon} must be > 0 or null"),
            (p.max_grad_norm > 0, f"dp.max_grad_norm = {p.max_grad_norm} must be > 0"),
            (0.0 < p.delta < 1.0, f"dp.delta = {p.delta} must be in (0, 1)"),
            (o.lr > 0, f"optim.lr = {o.lr} must be > 0"),
            (o.batch_size >= 1, f"optim.batch_size = {o.batch_size} must be >= 1"),
            (o.epochs >= 1, f"optim.epochs = {o.epochs} must be >= 1"),
            (e.batch_size >= 1, f"eval.batch_size = {e.batch_size} must be >= 1"),
            (e.patience >= 1, f"eval.patience = {e.patience} must be >= 1"),
            (e.quality_patience is None or e.quality_patience >= 1, f"eval.quality_patience = {e.quality_patience} must be >= 1 or null"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def registry_name(self) -> str:
        return PRESETS[self.model.preset]
