"""Configuration of the two-stream frame detector (``python -m two_stream_detection``).

Giorgi, Abbasi and Saracino (JoWUA 2022, s.3.4, 4.3): frames (raw, or reconstructed by the
DP autoencoder through the ``anonymizer`` section) -> an RGB stream and a Farneback flow stream
(ResNet-50 in the paper), an optional bag-of-objects vector, two fully connected layers and a
sigmoid; trained on frame-level hard / soft anomaly annotations (UCFCrime2Local style) with
class weights 1 / 2 and hard sample mining; scored online with the sigmoidal anomaly score.
``--help-config`` lists every key. Paper settings live in configs/two_stream/, the embedded
default (tiny ResNets, 32x32 frames, a few epochs) in configs/synthetic/two_stream/. The run
directory ``<paths.runs>/two_stream/<run.name>/`` gets ``best.pt`` / ``last.pt``, ``results.json``
(FL-AUC with its 95% interval over test videos, VL-F1), ``test_scores.npz`` (every test frame's
score and label, for bootstrap intervals) and, unless ``data.cache_dir`` says otherwise,
``cache/``: each video's sampled frames and flow images, computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aux_code.anonymizers import AnonymizerSection
from aux_code.config import ConfigError, PathsConfig, TrainRunConfig, opt
from aux_code.datasets.ucf_crime2local import DEFAULT_FOLDER
from aux_code.precision import PRECISION_HELP, PrecisionMode, validate_precision
from aux_code.sections import shared


@dataclass
class DataSection:
    """Which videos, which of their frames, and how frames are cut."""

    dataset: Literal["ucf_crime"] = shared("data.dataset", "ucf_crime")
    annotations: str = opt(
        DEFAULT_FOLDER,
        "Folder of the UCFCrime2Local-style frame annotations of the abnormal training videos, under paths.ucf_crime "
        "(aux_code.datasets.ucf_crime2local: one VATIC text file per video; lost 0 = hard, lost 1 = soft anomaly).",
    )
    input_size: list[int] = opt(
        [32, 32],
        "[height, width] the streams see (paper: 224x224), multiples of 8 for the dpae anonymizer, which must be "
        "trained at it (its frame_size). Frames are cut as the camera cuts them (centred crop of this aspect, data.center_crop).",
    )
    center_crop: float = opt(
        1.0,
        "Centred crop of the largest box with data.input_size's aspect ratio, as a fraction of it, before the resize "
        "(the DP-AE's data.crop_scale geometry: a dpae pair sees frames cut as it was trained on them).",
    )
    normal_fps: float = opt(
        10.0, "Adaptive frame-rate sampling (s.3.4.3): training frames per second taken from segments without a hard anomaly (paper: 10)."
    )
    abnormal_fps: float = opt(
        30.0, "Training frames per second taken from hard-anomaly segments (paper: 3 on real UCF-Crime; 30: every frame of the analogue's short events)."
    )
    eval_stride: int = opt(
        2, "Validation and test videos are scored on every N-th frame, each score standing for the N frames it starts (the SAS runs over the scored frames)."
    )
    validation_fraction: float = shared("validation_fraction", 0.2)  # per video label, whole videos
    validation_seed: int = shared("validation_seed", 0)
    videos_per_label: Optional[int] = opt(None, "Use at most N videos per (split, label), first in name order, for quick trials; null: all.")
    cache_dir: Optional[str] = opt(
        None,
        "Where the per-video frame / flow cache lives; null: <run dir>/cache. A relative path resolves under paths.runs "
        "(the Table 1 driver shares one cache between its runs). Entries are keyed by everything that makes them.",
    )


@dataclass
class LabelsSection:
    """How hard and soft anomaly frames become training targets."""

    soft_frames: Literal["soft", "exclude", "positive"] = opt(
        "soft",
        "Soft-anomaly frames are never positives: 'soft' trains them toward labels.soft_target with the normal class "
        "weight (s.3.4.4: neither fully normal nor fully anomalous); 'exclude' leaves them out of training (the paper's "
        "hard-anomalies-only -ha models). 'positive' (the opposite reading, for comparison) makes them anomalies.",
    )
    soft_target: float = opt(0.5, "labels.soft_frames=soft: the target of a soft-anomaly frame, in (0, 0.5].")
    normal_weight: float = opt(1.0, "Class weight of normal frames in the BCE (paper: 1).")
    anomaly_weight: float = opt(2.0, "Class weight of hard-anomaly frames in the BCE (paper: 2).")


@dataclass
class FlowSection:
    """Dense optical flow of consecutive (anonymized) frames, OpenCV Farneback at data.input_size."""

    bound: float = opt(4.0, "Flow components clipped to [-bound, bound] pixels before they become an image (aux_code.two_stream.flow_to_image).")
    winsize: int = opt(9, "Farneback averaging window (OpenCV's example: 15, for larger frames).")
    levels: int = opt(2, "Farneback pyramid levels (OpenCV's example: 3).")


@dataclass
class BagSection:
    """The contextual bag-of-objects vector: per-class counts of the object detector's boxes."""

    enabled: bool = opt(True, "false: the paper's no-bag variants.")
    source: Literal["gt", "hog"] = opt(
        "gt",
        "'gt': the synthetic world's ground-truth person boxes (boxes/<video>.npy) stand in for YOLOv4; "
        "'hog': OpenCV's HOG person detector on the original frames (slow; for real data).",
    )
    num_classes: int = opt(80, "Length of the vector (COCO's 80 classes as YOLOv4; people are class 0).")


@dataclass
class ModelSection:
    streams: int = opt(2, "2: RGB + flow (the paper's 2S); 1: RGB only (1S).")
    backbone: Literal["tiny", "resnet50"] = opt("tiny", "Stream trunk: 'resnet50' (paper) or 'tiny' (from scratch on the synthetic world).")
    imagenet_weights: Optional[str] = opt(
        None,
        "Local torchvision-format ImageNet ResNet file loaded into both trunks (relative: under paths.weights); "
        "null: random initialisation. Nothing is downloaded.",
    )
    freeze_backbones: bool = opt(False, "Train only the fully connected layers (the paper's first phase, with ImageNet trunks).")
    hidden: int = opt(4096, "Units of each of the two fully connected layers (paper: 4096).")
    head_dropout: float = opt(0.5, "Dropout after each fully connected layer (paper: 0.5).")


@dataclass
class MiningSection:
    """Hard sample mining (s.3.4.3): score alpha*K candidates, train on the K with the highest loss."""

    enabled: bool = opt(True, "false: the paper's -no-hm variant (every candidate batch of K is trained on).")
    alpha: int = opt(3, "Candidates per trained sample (paper: 3); an epoch then trains on 1/alpha of the frames.")


@dataclass
class OptimSection:
    lr: float = shared("optim.lr", 1e-4)  # paper: 1e-5 (heads), then 1e-6 (everything)
    batch_size: int = shared("optim.batch_size", 32)  # K: frames per training step
    epochs: int = shared("optim.epochs", 4)
    weight_decay: float = opt(0.0, "Adam weight decay.")


@dataclass
class EvalSection:
    batch_size: int = shared("eval.batch_size", 256)
    stop_patience: Optional[int] = opt(5, "Early stopping: stop after this many validations without a higher validation FL-AUC (paper: 5); null: off.")
    tau: float = opt(0.5, "SAS sensibility threshold (paper: 0.5).")
    reactivity: float = opt(2.0, "SAS reactivity v (paper: 2).")
    upper: float = opt(7.0, "SAS accumulator upper bound UB (paper: 7).")
    lower: float = opt(-7.0, "SAS accumulator lower bound LB (paper: -7); the accumulator starts there.")
    threshold: float = opt(0.5, "VL-F1: a video is anomalous when its SAS exceeds this anywhere (paper: 0.5).")
    resamples: int = opt(1000, "Bootstrap resamples (whole test videos) of the FL-AUC's 95% interval.")


@dataclass
class TwoStreamConfig:
    """Giorgi et al.'s two-stream frame-level anomaly detector on (reconstructed) frames."""

    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: TrainRunConfig = opt(TrainRunConfig(), "Run name, seed, device, resume, logging.")
    data: DataSection = opt(DataSection(), "Videos, frame sampling and geometry.")
    labels: LabelsSection = opt(LabelsSection(), "Hard / soft anomaly targets and class weights.")
    anonymizer: AnonymizerSection = opt(AnonymizerSection(), "What the server sees: raw frames, or e.g. the DP-AE's reconstructions (method dpae).")
    flow: FlowSection = opt(FlowSection(), "The flow stream's input.")
    bag: BagSection = opt(BagSection(), "The bag-of-objects vector.")
    model: ModelSection = opt(ModelSection(), "Streams, trunks and head.")
    mining: MiningSection = opt(MiningSection(), "Hard sample mining.")
    optim: OptimSection = opt(OptimSection(), "Optimiser and epochs.")
    eval: EvalSection = opt(EvalSection(), "Validation, online score and test metrics.")
    precision: PrecisionMode = opt("auto", PRECISION_HELP)

    def required_paths(self) -> list[str]:
        return [self.data.dataset]

    def validate(self) -> None:
        d, lab, m, e = self.data, self.labels, self.model, self.eval
        checks = [
            (len(d.input_size) == 2 and all(s >= 8 and s % 8 == 0 for s in d.input_size),
             f"data.input_size = {d.input_size} must be [height, width], positive multiples of 8"),
            (0.0 < d.center_crop <= 1.0, f"data.center_crop = {d.center_crop} must be in (0, 1]"),
            (d.normal_fps > 0 and d.abnormal_fps > 0,
             f"data.normal_fps = {d.normal_fps} and data.abnormal_fps = {d.abnormal_fps} must be > 0"),
            (d.eval_stride >= 1, f"data.eval_stride = {d.eval_stride} must be >= 1"),
            (0.0 < d.validation_fraction < 1.0, f"data.validation_fraction = {d.validation_fraction} must be in (0, 1)"),
            (d.videos_per_label is None or d.videos_per_label >= 1, f"data.videos_per_label = {d.videos_per_label} must be >= 1 or null"),
            (0.0 < lab.soft_target <= 0.5, f"labels.soft_target = {lab.soft_target} must be in (0, 0.5] (a soft frame is never a positive)"),
            (lab.normal_weight > 0 and lab.anomaly_weight > 0,
             f"labels.normal_weight = {lab.normal_weight} and labels.anomaly_weight = {lab.anomaly_weight} must be > 0"),
            (self.flow.bound > 0, f"flow.bound = {self.flow.bound} must be > 0"),
            (self.flow.winsize >= 3 and self.flow.levels >= 1,
             f"flow.winsize = {self.flow.winsize} must be >= 3 and flow.levels = {self.flow.levels} >= 1"),
            (self.bag.num_classes >= 1, f"bag.num_classes = {self.bag.num_classes} must be >= 1"),
            (m.streams in (1, 2), f"model.streams = {m.streams} must be 1 (RGB) or 2 (RGB + flow)"),
            (m.hidden >= 1, f"model.hidden = {m.hidden} must be >= 1"),
            (0.0 <= m.head_dropout < 1.0, f"model.head_dropout = {m.head_dropout} must be in [0, 1)"),
            (not m.freeze_backbones or m.imagenet_weights is not None,
             "model.freeze_backbones = true trains only the head on random trunks: set model.imagenet_weights too"),
            (self.mining.alpha >= 1, f"mining.alpha = {self.mining.alpha} must be >= 1"),
            (self.optim.lr > 0, f"optim.lr = {self.optim.lr} must be > 0"),
            (self.optim.batch_size >= 1, f"optim.batch_size = {self.optim.batch_size} must be >= 1"),
            (self.optim.epochs >= 1, f"optim.epochs = {self.optim.epochs} must be >= 1"),
            (e.batch_size >= 1, f"eval.batch_size = {e.batch_size} must be >= 1"),
            (e.stop_patience is None or e.stop_patience >= 1, f"eval.stop_patience = {e.stop_patience} must be >= 1 or null"),
            (0.0 <= e.tau < 1.0, f"eval.tau = {e.tau} must be in [0, 1)"),
            (e.reactivity > 0, f"eval.reactivity = {e.reactivity} must be > 0"),
            (e.lower < e.upper, f"eval.lower = {e.lower} must be below eval.upper = {e.upper}"),
            (e.resamples >= 100, f"eval.resamples = {e.resamples} must be >= 100"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        validate_precision(self.precision, self.run.device)
