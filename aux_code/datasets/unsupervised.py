"""What the unsupervised VAD adapters share (UCSD Ped2, CUHK Avenue, ShanghaiTech unsupervised).

Each adapter lists ``train`` videos (all normal, no labels needed) and ``test`` videos with one
0/1 label per frame, in the release's own formats. Every item streams its frames as grey uint8
``h w`` arrays (or RGB ``h w 3`` for an anonymizer, which works on colour); :func:`prepared_frames`
resizes them and maps them to [-1, 1] (LUSS-AE's input). The synthetic analogues also carry every
person's box per frame (``person_boxes.json``, not a release format) for the box anonymizers.

Bad input raises :class:`~aux_code.datasets.common.DatasetError` naming the video: a test video
without ground truth, ground truth whose length differs from the frame count (never resampled),
frames of mixed sizes in one video, a training video with anomalous frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import json

import numpy as np
from PIL import Image

from aux_code.datasets.common import DatasetError

Split = Literal["train", "test"]
PERSON_BOXES = "person_boxes.json"  # the synthetic analogues' ground-truth person boxes (see PersonBoxes there)


@dataclass(frozen=True, eq=False)
class UnsupervisedVideo:
    """One video: ``source`` is a frame folder or a video file; ``labels`` one 0/1 per frame (None: a
    training video without annotation, normal by the dataset's definition)."""

    dataset: str
    name: str
    split: Split
    source: Path
    num_frames: int
    labels: np.ndarray | None = field(default=None, repr=False)
    reader: Callable[..., Iterator[np.ndarray]] | None = field(default=None, repr=False)

    def frames(self, *, color: bool = False) -> Iterator[np.ndarray]:
        """The video's frames as grey uint8 ``h w`` (``color``: RGB uint8 ``h w 3``; a grey release
        repeats its channel), streamed; mixed sizes raise DatasetError."""
        assert self.reader is not None
        shape = None
        for i, f in enumerate(self.reader(self, color=color)):
            if shape is None:
                shape = f.shape
            elif f.shape != shape:
                raise DatasetError(f"{self.dataset}: video {self.name} mixes frame sizes: frame {i} is "
                                   f"{f.shape[1]}x{f.shape[0]} but frame 0 is {shape[1]}x{shape[0]} ({self.source})")
            yield f

    def frame_labels(self) -> np.ndarray:
        return np.zeros(self.num_frames, np.uint8) if self.labels is None else self.labels


def to_grey(frame: np.ndarray) -> np.ndarray:
    """RGB / grey uint8 -> grey uint8 ``h w`` (ITU-R 601 luma, as PIL's 'L')."""
    if frame.ndim == 2:
        return frame
    return np.asarray(Image.fromarray(frame[..., :3]).convert("L"))


def read_image(path: Path, *, color: bool = False) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB" if color else "L"))
    except OSError as e:
        raise DatasetError(f"frame {path} is not a readable image: {e}") from None


def folder_reader(suffixes: tuple[str, ...]) -> Callable[..., Iterator[np.ndarray]]:
    def read(item: UnsupervisedVideo, *, color: bool = False) -> Iterator[np.ndarray]:
        for p in list_frames(item.source, suffixes):
            yield read_image(p, color=color)
    return read


def video_reader(item: UnsupervisedVideo, *, color: bool = False) -> Iterator[np.ndarray]:
    from aux_code.video import iter_frames

    for f in iter_frames(item.source):
        yield f[..., :3] if color else to_grey(f)


def list_frames(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))


def count_video_frames(path: Path) -> int:
    from aux_code.video import probe

    return probe(path).num_frames


def check_labels(dataset: str, name: str, labels: np.ndarray, num_frames: int, where: Path | str) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != num_frames:
        raise DatasetError(f"{dataset}: ground truth of video {name} ({where}) has {labels.shape[0]} frames "
                           f"but the video has {num_frames}; expected equal lengths (no resampling)")
    if not np.all((labels == 0) | (labels == 1)):
        raise DatasetError(f"{dataset}: ground truth of video {name} ({where}) must be 0/1")
    return labels.astype(np.uint8)


def check_normal_training(item: UnsupervisedVideo) -> None:
    if item.labels is not None and item.labels.any():
        raise DatasetError(f"{item.dataset}: training video {item.name} has {int(item.labels.sum())} anomalous "
                           "frames; the unsupervised training split must hold normal videos only")


def prepared_frames(frames: Iterator[np.ndarray], size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Grey uint8 frames -> float32 ``h w`` in [-1, 1] at ``size`` = (h, w) (bilinear)."""
    h, w = size
    for f in frames:
        if f.shape != (h, w):
            f = np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
        yield f.astype(np.float32) / 127.5 - 1.0


def require_dir(dataset: str, path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{dataset}: {what} folder {path} does not exist")
    return path


class UnsupervisedAdapter:
    """Base of the three adapters: ``videos(split)`` lists the split (checked, sorted by name)."""

    dataset_name = "dataset"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.dataset_name}: dataset root {self.root} does not exist")

    def videos(self, split: Split) -> list[UnsupervisedVideo]:
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r} is not train or test")
        items = self._list(split)
        if not items:
            raise DatasetError(f"{self.dataset_name}: the {split} split under {self.root} holds no video")
        if split == "train":
            for item in items:
                check_normal_training(item)
        return items

    def _list(self, split: Split) -> list[UnsupervisedVideo]:
        raise NotImplementedError

    def metadata_files(self) -> list[Path]:
        """The files labels (and the analogues' person boxes) are read from, so that a changed one is seen
        by resume and reuse checks (aux_code.datasets.dataset_digests); the frames and videos are not."""
        path = self.root / PERSON_BOXES
        return [path] if path.is_file() else []

    def person_boxes(self, video: UnsupervisedVideo) -> list[np.ndarray]:
        """Ground-truth person boxes of ``video``, one int32 (n, 4) array (x0, y0, x1, y1) per frame.

        Only the synthetic analogues have them (``person_boxes.json`` at the root); the real releases
        do not, so a box anonymizer there must detect them (``anonymizer.boxes: hog``).
        """
        path = self.root / PERSON_BOXES
        if not path.is_file():
            raise DatasetError(f"{self.dataset_name}: no ground-truth person boxes ({path} does not exist; only the "
                               "synthetic analogues ship them): use anonymizer.boxes=hog on real data")
        per_video = json.loads(path.read_text()).get(video.split, {})
        if video.name not in per_video:
            raise DatasetError(f"{self.dataset_name}: {path} has no boxes for {video.split} video {video.name}")
        frames = per_video[video.name]
        if len(frames) != video.num_frames:
            raise DatasetError(f"{self.dataset_name}: {path} has boxes for {len(frames)} frames of {video.split} video "
                               f"{video.name}, which has {video.num_frames}; expected one list per frame")
        return [np.asarray(b, dtype=np.int32).reshape(-1, 4) for b in frames]
