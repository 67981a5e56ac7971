"""ShanghaiTech Campus in the weakly supervised split of Zhong et al. (CVPR 2019).

Layout under ``root`` (names overridable)::

    training/videos/<scene>_<id>.avi         original training set (normal only), e.g. 01_001.avi
    testing/videos/<scene>_<id>.avi          original test set, e.g. 01_0014.avi
    testing/test_frame_mask/<name>.npy       per-frame 0/1 mask of every original test video
    SH_Train.txt, SH_Test.txt                Zhong et al.'s split: one video name per line
                                             (with or without the extension)

Zhong et al. moved some abnormal test videos into training and some normal training videos
into test, so the split lists mix both folders. Labels come from metadata, never from list
order: a video of the original test set is abnormal iff its frame mask has a positive
frame; a video of the original training set is normal (that set has no anomalies) and has
no mask. Frame labels of a test-set video are its mask, whose length must equal the
decoded frame count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from .common import (
    AnomalyVideo,
    AnomalyAdapter,
    DatasetError,
    OnError,
    read_lines,
    runs_of_ones,
)

Split = Literal["train", "test"]
VIDEO_SUFFIXES = (".avi", ".mp4")
NORMAL_CLASS = "Normal"
ABNORMAL_CLASS = "Abnormal"


class ShanghaiTech(AnomalyAdapter):
    dataset_name = "ShanghaiTech"

    def __init__(
        self,
        root: str | Path,
        *,
        on_error: OnError = "raise",
        train_list: str = "SH_Train.txt",
        test_list: str = "SH_Test.txt",
        training_videos_dir: str = "training/videos",
        testing_videos_dir: str = "testing/videos",
        mask_dir: str = "testing/test_frame_mask",
    ) -> None:
        super().__init__(root, on_error=on_error)
        self.list_files = {"train": self.root / train_list, "test": self.root / test_list}
        self.training_videos = self.root / training_videos_dir
        self.testing_videos = self.root / testing_videos_dir
        self.mask_dir = self.root / mask_dir
        for folder in (self.training_videos, self.testing_videos, self.mask_dir):
            if not folder.is_dir():
                raise DatasetError(f"ShanghaiTech: folder {folder} does not exist")

    def metadata_files(self) -> list[Path]:
        """The split lists and every test frame mask: the files labels and intervals come from."""
        lists = [p for p in (self.list_files["train"], self.list_files["test"]) if p.is_file()]
        return lists + sorted(self.mask_dir.glob("*.npy"))

    def mask_path(self, name: str) -> Path:
        return self.mask_dir / f"{name}.npy"

    def frame_labels(self, item: AnomalyVideo, num_frames: int) -> np.ndarray:
        """The video's frame mask (uint8); zeros for a video of the original training set."""
        if item.path.parent == self.training_videos:
            return np.zeros(num_frames, dtype=np.uint8)
        mask = self._load_mask(self.mask_path(item.name))
        if mask.shape[0] != num_frames:
            raise DatasetError(
                f"ShanghaiTech: mask {self.mask_path(item.name)} has {mask.shape[0]} frames but the video has "
                f"{num_frames}; expected equal lengths (no silent resampling)"
            )
        return mask

    # ------------------------------------------------------------------ parsing

    @staticmethod
    def _load_mask(path: Path) -> np.ndarray:
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"ShanghaiTech: frame mask {path} is not a readable .npy array: {e}") from None
        if mask.ndim != 1 or not np.all((mask == 0) | (mask == 1)):
            raise DatasetError(f"ShanghaiTech: frame mask {path} must be a 1-D array of 0/1, got shape {mask.shape}")
        return mask.astype(np.uint8)

    def _find_video(self, name: str) -> tuple[Path | None, list[Path]]:
        found = [
            folder / f"{name}{suffix}"
            for folder in (self.training_videos, self.testing_videos)
            for suffix in VIDEO_SUFFIXES
            if (folder / f"{name}{suffix}").is_file()
        ]
        return (found[0] if len(found) == 1 else None), found

    def _parse(self, split: Split) -> list[AnomalyVideo]:
        path = self._require_file(self.list_files[split], f"{split} list")
        out: list[AnomalyVideo] = []
        listed: set[str] = set()
        for number, line in read_lines(path):
            where = f"{path}:{number}"
            parts = line.split()
            if len(parts) != 1 or "/" in parts[0]:
                self._problem(f"{where}: {line!r} is malformed (expected one video name such as '01_0014')")
                continue
            name = parts[0]
            for suffix in VIDEO_SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            video, found = self._find_video(name)
            if video is None:
                what = "does not exist" if not found else f"is ambiguous ({', '.join(map(str, found))})"
                self._problem(
                    f"{where}: video {name} {what} (expected one of {self.training_videos}/{name}.avi "
                    f"or {self.testing_videos}/{name}.avi)"
                )
                continue
            if name in listed:
                self._problem(f"{where}: video {name} is listed twice")
                continue
            listed.add(name)
            if video.parent == self.training_videos:
                out.append(AnomalyVideo(path=video, name=name, label=0, class_name=NORMAL_CLASS, intervals=()))
                continue
            mask_file = self.mask_path(name)
            if not mask_file.is_file():
                self._problem(f"{where}: test-set video {name} has no frame mask {mask_file}")
                continue
            try:
                mask = self._load_mask(mask_file)
            except DatasetError as e:
                self._problem(f"{where}: {e}")
                continue
            intervals = runs_of_ones(mask)
            label = 1 if intervals else 0
            out.append(AnomalyVideo(
                path=video, name=name, label=label,
                class_name=ABNORMAL_CLASS if label else NORMAL_CLASS, intervals=intervals,
            ))
        return out
