"""Configurations of the two remote commands (``--help-config`` lists every key).

``python -m remote.encode`` (the camera; schema :class:`EncodeConfig`, configs in
configs/synthetic/camera/) and ``python -m remote.score`` (the server; :class:`ScoreConfig`,
configs in configs/synthetic/server/). The camera writes ``<paths.runs>/camera/<run.name>/``
(``codes/<video>.dpae`` and ``camera.json``); the server reads such a folder (``codes``)
and writes ``<paths.runs>/server/<run.name>/`` (``score.json`` and one PNG per video).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Optional

from anomaly_detection.config import SasSection
from aux_code.config import ConfigError, PathsConfig, RunConfig, opt
from aux_code.sections import ClipSection, UtilitySource, shared


def _run_help(name: str) -> str:
    """The help text of RunConfig's key ``name`` (one meaning for run.* in every command)."""
    return next(f.metadata["help"] for f in fields(RunConfig) if f.name == name)


@dataclass
class RemoteRunConfig:
    """What the remote commands honour of the run keys (they train nothing: no seed, no resume)."""

    name: str = opt("default", _run_help("name"))
    device: str = opt("auto", _run_help("device"))


@dataclass
class CameraData:
    """Which videos the camera encodes."""

    dataset: Literal["ucf_crime", "xd_violence", "shanghaitech"] = shared("data.dataset", "ucf_crime")
    video_split: Literal["train", "test"] = opt("test", "Without data.videos: encode the videos of this split of data.dataset.")
    max_videos: Optional[int] = opt(None, "Without data.videos: only the first N videos of data.video_split (adapter order); null: all.")
    videos: list[str] = opt(
        [],
        "Video files to encode instead of a split (relative paths resolve under paths.<data.dataset>; absolute ones "
        "as given, e.g. a camera's recording).",
    )


@dataclass
class CodeSection:
    dtype: Literal["float16", "float32"] = opt("float16", "Number type of the transmitted code values (float16: half the bytes).")
    batch_size: int = opt(32, "Frames per encoder forward pass (speed and memory only).")


@dataclass
class ReportSection:
    jpeg_quality: int = opt(90, "Quality of the JPEGs the code is compared with (OpenCV, 0-100).")
    compare_frames: int = opt(64, "Frames per video re-encoded as JPEG and H.264 for the bytes-per-frame comparison.")


@dataclass
class EncodeConfig:
    """The camera: encode videos into latent code files with the DP autoencoder's encoder alone."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: RemoteRunConfig = opt(RemoteRunConfig(), "Run name (the output folder) and device.")
    encoder: str = opt("dpae/dp_adam/encoder.pt", "The camera's encoder file (a DP-AE run's encoder.pt), relative to paths.runs.")
    data: CameraData = opt(CameraData(), "Videos to encode.")
    code: CodeSection = opt(CodeSection(), "The transmitted code.")
    report: ReportSection = opt(ReportSection(), "The bytes-per-frame comparison.")

    def required_paths(self) -> list[str]:
        return [self.data.dataset]

    def validate(self) -> None:
        checks = [
            (self.data.max_videos is None or self.data.max_videos >= 1, f"data.max_videos = {self.data.max_videos} must be >= 1 or null"),
            (self.code.batch_size >= 1, f"code.batch_size = {self.code.batch_size} must be >= 1"),
            (0 <= self.report.jpeg_quality <= 100, f"report.jpeg_quality = {self.report.jpeg_quality} must be in [0, 100]"),
            (self.report.compare_frames >= 1, f"report.compare_frames = {self.report.compare_frames} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class DetectorSection:
    """The clip-level anomaly detector the server scores with: a stage-4 run (MGFN) on features of reconstructed frames."""

    checkpoint: str = opt("anomaly/dpae_dp_adam/best.pt", "Stage-4 checkpoint, relative to paths.runs.")
    model_key: str = opt("mgfn", "Key of the detector inside the checkpoint's 'models'.")


@dataclass
class ServerEval:
    sas: SasSection = opt(SasSection(), "Online scoring of the test videos (SAS and video-level F1).")
    causal: bool = opt(
        True,
        "Score clip t from clips 0..t only, as a live server can (one detector pass per clip); false: the whole "
        "video in one pass, as stage 4 scores its test set.",
    )
    plot_videos: Optional[int] = shared("eval.plot_videos", None)


@dataclass
class ScoreConfig:
    """The server: decode latent codes with the decoder alone, extract features, print and plot the online anomaly score."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: RemoteRunConfig = opt(RemoteRunConfig(), "Run name (the output folder) and device.")
    codes: str = opt("camera/default", "Folder of received code files (a remote.encode run directory), relative to paths.runs.")
    decoder: str = opt("dpae/dp_adam/decoder.pt", "The server's decoder file (paired with the camera's encoder), relative to paths.runs.")
    utility: UtilitySource = opt(UtilitySource(), "fT, which turns reconstructed clips into features (the one stage 3 used).")
    clip: ClipSection = opt(ClipSection(), "Clips of the reconstructed frames as fT's input (as stage 3 cut them).")
    detector: DetectorSection = opt(DetectorSection(), "The anomaly detector.")
    eval: ServerEval = opt(ServerEval(), "Online scoring and plots.")

    def validate(self) -> None:
        self.clip.validate()
        s = self.eval.sas
        if not 0.0 <= s.tau < 1.0:
            raise ConfigError(f"eval.sas.tau = {s.tau} must be in [0, 1)")
        if s.lower > s.upper:
            raise ConfigError(f"eval.sas.lower = {s.lower} must be <= eval.sas.upper = {s.upper}")
        if self.eval.plot_videos is not None and self.eval.plot_videos < 0:
            raise ConfigError(f"eval.plot_videos = {self.eval.plot_videos} must be null or >= 0")
