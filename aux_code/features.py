"""The feature set passed from feature extraction to anomaly detection.

A feature directory holds::

    manifest.json        what produced the features, and one entry per video
    <name>.npy           (S, D) float32, one row per 16-frame clip (or (S, crops, D))
    train.list           MGFN-style list files: one .npy path per line. Written for tools
    test.list            that expect them; this project reads labels from the manifest,
                         never from the order of these lists.

Labels and anomalous intervals are copied from the dataset's metadata at extraction time,
so a feature directory is self-contained and the ground truth is built from the same clip
indexing that produced the features.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aux_code.checkpoint import atomic_write
from aux_code.config import path_under

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class FeatureSetError(ValueError):
    """A feature directory that is missing, inconsistent, or does not match the config."""


@dataclass
class VideoEntry:
    """One extracted video. ``intervals`` are [start, end) frame ranges of anomalies."""

    name: str
    file: str  # relative to the feature directory
    split: str  # "train" or "test"
    label: int  # 0 normal, 1 anomalous (video level, from metadata)
    class_name: str
    num_frames: int  # frames in the decoded video
    num_clips: int  # S, rows of the .npy
    intervals: list[list[int]] = field(default_factory=list)
    source_sha: str = ""  # digest of the video file, so a changed video is re-extracted


@dataclass
class FeatureSetInfo:
    """What produced a feature set; two sets are interchangeable only if these agree."""

    dataset: str
    backbone: str
    feature_dim: int
    clip_len: int
    skip: int
    resolution: int
    decoder: str
    anonymizer: dict[str, Any]  # {"kind": "unet"|"identity"|"downsample"|..., "checkpoint_sha": ..., ...}
    utility: dict[str, Any]  # {"name": ..., "checkpoint_sha": ...}
    crops: int = 1
    videos: dict[str, VideoEntry] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    # Videos of the extracted splits that have no entry: name -> {"split", "why", "detail"}, why one of
    # MISSING_WHY. Stage 4 refuses a set with missing videos unless each is accounted for.
    missing: dict[str, dict[str, str]] = field(default_factory=dict)
    # The dataset's list / annotation / label files the entries' labels and intervals were read from:
    # path relative to the dataset root -> digest (aux_code.datasets.dataset_digests).
    dataset_files: dict[str, str] = field(default_factory=dict)

    def producer_key(self) -> dict:
        """What produced the features (not the per-video entries, nor which videos are missing or where
        their labels came from): used to decide whether entries can be reused."""
        d = asdict(self)
        for key in ("videos", "missing", "dataset_files"):
            d.pop(key)
        return d


# Why a video of an extracted split has no features: it failed to decode, data.exclude named it,
# or data.limit cut the split short.
MISSING_WHY = ("failed", "excluded", "limit")


def save_features(path: str | Path, feats: np.ndarray) -> None:
    """Write one video's (S, D) features as float32, atomically."""
    arr = np.ascontiguousarray(feats, dtype=np.float32)
    atomic_write(Path(path), lambda f: np.save(f, arr))


def write_manifest(feature_dir: str | Path, info: FeatureSetInfo) -> None:
    """Write manifest.json and the train/test list files, atomically."""
    feature_dir = Path(feature_dir)
    text = json.dumps(asdict(info), indent=1, sort_keys=True).encode()
    atomic_write(feature_dir / MANIFEST, lambda f: f.write(text))
    for split in ("train", "test"):
        lines = [str(feature_dir / v.file) for v in sorted(info.videos.values(), key=lambda v: v.name) if v.split == split]
        data = ("\n".join(lines) + "\n" if lines else "").encode()
        atomic_write(feature_dir / f"{split}.list", lambda f, d=data: f.write(d))


def read_manifest(feature_dir: str | Path) -> FeatureSetInfo:
    feature_dir = Path(feature_dir)
    path = feature_dir / MANIFEST
    if not path.is_file():
        raise FeatureSetError(f"{path} does not exist: run feature extraction first (python -m feature_extraction)")
    try:
        raw = json.loads(path.read_text())
        videos = {k: VideoEntry(**v) for k, v in raw.pop("videos").items()}
        info = FeatureSetInfo(**raw, videos=videos)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise FeatureSetError(f"{path} is not a valid feature manifest ({type(e).__name__}: {e})") from None
    if info.version != MANIFEST_VERSION:
        raise FeatureSetError(f"{path} has manifest version {info.version}, this code reads {MANIFEST_VERSION}")
    return info


def load_video_features(feature_dir: str | Path, entry: VideoEntry, *, feature_dim: int) -> np.ndarray:
    """Load one video's features and check them against its manifest entry.

    Returns (S, D) or (S, crops, D) float32. A wrong row count, a wrong feature
    dimension or a non-finite value is an error naming the video.
    """
    path = path_under(feature_dir, entry.file, what=f"the manifest's file of video {entry.name}", error=FeatureSetError)
    if not path.is_file():
        raise FeatureSetError(f"features of video {entry.name} ({path}) are listed in the manifest but missing")
    try:
        feats = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # a truncated or foreign file
        raise FeatureSetError(f"features of video {entry.name} ({path}) cannot be read: {e}") from None
    if feats.shape[0] != entry.num_clips:
        raise FeatureSetError(f"video {entry.name}: {feats.shape[0]} feature rows, manifest says {entry.num_clips} clips")
    if feats.shape[-1] != feature_dim:
        raise FeatureSetError(f"video {entry.name}: feature dimension {feats.shape[-1]}, expected {feature_dim} (from the config)")
    if not np.isfinite(feats).all():
        raise FeatureSetError(f"video {entry.name}: features contain NaN or infinite values ({path})")
    return feats.astype(np.float32, copy=False)
