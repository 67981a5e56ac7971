"""Configuration of stage 3: clip features of every video of an anomaly dataset.

Loaded by ``python -m feature_extraction --config FILE key=value ...``; every key is
listed with its meaning by ``--help-config``. Paper settings live in configs/extraction/,
the embedded default (tiny I3D on the synthetic world) in configs/synthetic/extraction/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aux_code.anonymizers import AnonymizerSection
from aux_code.config import ConfigError, LoaderRunConfig, PathsConfig, opt
from aux_code.precision import PRECISION_HELP, PrecisionMode, validate_precision
from aux_code.sections import ClipSection, UtilitySource, shared

DATASETS = ("ucf_crime", "xd_violence", "shanghaitech")


@dataclass
class DataSection:
    """Which anomaly dataset is read (its root is paths.<dataset>) and which of its splits."""

    dataset: Literal["ucf_crime", "xd_violence", "shanghaitech"] = shared("data.dataset", "ucf_crime")
    splits: list[str] = opt(["train", "test"], "Splits whose videos are extracted ('train', 'test').")
    limit: Optional[int] = opt(
        None,
        "Extract only the first N videos of each split (in the adapter's order), for quick trials; null = all.",
    )
    exclude: list[str] = shared("data.exclude", [])  # recorded in the manifest's "missing" as why = "excluded"


@dataclass
class ExtractSection:
    """Decoding and batching: they change speed, not the features (beyond decoder tolerance)."""

    decoder: Literal["auto", "pyav", "dali"] = opt(
        "auto",
        "'pyav' (CPU, any codec), 'dali' (NVIDIA DALI video reader: on the GPU when run.device is CUDA, else its "
        "CPU reader, which decodes only VP8/VP9/MJPEG), or 'auto' (DALI on a GPU when DALI is installed and every "
        "video's codec is supported, else PyAV).",
    )
    batch_size: int = opt(32, "Clips per model forward pass, gathered across videos.")
    background_thread: bool = opt(
        True,
        "With run.num_workers = 0 (PyAV), decode in a background thread while the model runs (else in turn).",
    )
    prefetch: int = opt(
        4, "Decoded ahead of the model: clips per PyAV worker (or for the background thread); batches for DALI's pipeline."
    )
    decode_threads: int = opt(1, "FFmpeg threads per PyAV decoder (0 = FFmpeg decides).")
    channels_last: bool = opt(True, "Channels-last memory formats for fA and fT on CUDA (ignored on CPU, where it did not help).")
    compile: Literal["auto", "on", "off"] = opt(
        "auto",
        "torch.compile fA and fT into one inductor graph with frozen weights (BatchNorm folded into the convolutions; "
        "the first batch compiles, 20-60 s): 'auto' = on the CPU for a model of >= 5 GFLOP per clip (I3D-R50 at "
        "16x224x224: 32.8, about 2x eager speed; features within 1e-4 of eager), never on CUDA, and eager again if the "
        "compile fails; 'on' (a failed compile stops the run); 'off' = eager.",
    )
    frames_per_pass: Optional[int] = opt(
        None, "Run the anonymizer on at most this many frames at a time (bounds memory for large batches)."
    )
    dali_threads: int = opt(2, "DALI pipeline CPU threads.")
    journal_every: int = opt(1, "Append finished videos to the resume journal every N videos.")


@dataclass
class ExtractionConfig:
    """Stage 3: anonymizer then utility model over every clip of an anomaly dataset, one .npy per video."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: LoaderRunConfig = opt(
        LoaderRunConfig(),
        "Run name (output <paths.runs>/extraction/<run.name>), seed, device, resume, num_workers (PyAV decode "
        "worker processes; 0 = the main process).",
    )
    data: DataSection = opt(DataSection(), "Anomaly dataset and splits.")
    clip: ClipSection = opt(ClipSection(), "Clip sampling and the shared crop/resize.")
    anonymizer: AnonymizerSection = opt(AnonymizerSection(), "fA: raw, trained UNet, or a baseline (downsample, blur, blacken).")
    utility: UtilitySource = opt(UtilitySource(), "fT: the model whose pooled feature is extracted.")
    extract: ExtractSection = opt(ExtractSection(), "Decoder and batching.")
    precision: PrecisionMode = opt("auto", PRECISION_HELP)

    def required_paths(self) -> list[str]:
        return [self.data.dataset]

    def validate(self) -> None:
        checks = [
            (bool(self.data.splits) and all(s in ("train", "test") for s in self.data.splits),
             f"data.splits = {self.data.splits} must be a non-empty list of 'train' / 'test'"),
            (len(set(self.data.splits)) == len(self.data.splits), f"data.splits = {self.data.splits} repeats a split"),
            (self.data.limit is None or self.data.limit >= 1, f"data.limit = {self.data.limit} must be >= 1 or null"),
            (self.extract.batch_size >= 1, f"extract.batch_size = {self.extract.batch_size} must be >= 1"),
            (self.extract.prefetch >= 1, f"extract.prefetch = {self.extract.prefetch} must be >= 1"),
            (self.extract.decode_threads >= 0, f"extract.decode_threads = {self.extract.decode_threads} must be >= 0"),
            (self.extract.dali_threads >= 1, f"extract.dali_threads = {self.extract.dali_threads} must be >= 1"),
            (self.extract.journal_every >= 1, f"extract.journal_every = {self.extract.journal_every} must be >= 1"),
            (self.extract.frames_per_pass is None or self.extract.frames_per_pass >= 1,
             f"extract.frames_per_pass = {self.extract.frames_per_pass} must be >= 1 or null"),
            (self.run.num_workers >= 0, f"run.num_workers = {self.run.num_workers} must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.clip.validate()
        validate_precision(self.precision, self.run.device)
