"""ShanghaiTech Campus (Luo et al. 2017), the unsupervised split, as its release ships it.

Layout under the root::

    training/videos/01_001.avi ...          330 training videos, all normal
    testing/frames/01_0014/000.jpg ...      107 test videos as frame folders
    testing/test_frame_mask/01_0014.npy     one 1-D 0/1 array per test video, one value per frame

(This is the unsupervised protocol; ``aux_code.datasets.shanghaitech`` is Zhong et al.'s weakly
supervised re-split.) A mask under test_frame_mask named like a training video with anomalous
frames is an error: the training split must be normal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aux_code.datasets.common import DatasetError
from aux_code.datasets.unsupervised import (
    Split, UnsupervisedAdapter, UnsupervisedVideo, check_labels, count_video_frames, folder_reader, list_frames,
    require_dir, video_reader,
)

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_mask(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False).reshape(-1)
    except (OSError, ValueError) as e:
        raise DatasetError(f"ShanghaiTech: frame mask {path} is not a readable .npy array: {e}") from None


class ShanghaiTechUnsupervised(UnsupervisedAdapter):
    dataset_name = "ShanghaiTech"

    def __init__(self, root: str | Path, *, training_videos: str = "training/videos",
                 testing_frames: str = "testing/frames", mask_dir: str = "testing/test_frame_mask") -> None:
        super().__init__(root)
        self.training_videos = self.root / training_videos
        self.testing_frames = self.root / testing_frames
        self.mask_dir = self.root / mask_dir

    def metadata_files(self) -> list[Path]:
        """The frame masks (test labels, and the check that every training video is normal)."""
        masks = sorted(self.mask_dir.glob("*.npy")) if self.mask_dir.is_dir() else []
        return super().metadata_files() + masks

    def _list(self, split: Split) -> list[UnsupervisedVideo]:
        items = []
        if split == "train":
            require_dir(self.dataset_name, self.training_videos, "training videos")
            for path in sorted(self.training_videos.glob("*.avi")):
                n = count_video_frames(path)
                mask = self.mask_dir / f"{path.stem}.npy"
                labels = check_labels(self.dataset_name, path.stem, load_mask(mask), n, mask) if mask.is_file() else None
                items.append(UnsupervisedVideo(self.dataset_name, path.stem, split, path, n, labels, video_reader))
            return items
        require_dir(self.dataset_name, self.testing_frames, "testing frames")
        for d in sorted(p for p in self.testing_frames.iterdir() if p.is_dir()):
            n = len(list_frames(d, FRAME_SUFFIXES))
            mask = self.mask_dir / f"{d.name}.npy"
            if not mask.is_file():
                raise DatasetError(f"{self.dataset_name}: test video {d.name} has no frame mask {mask}")
            labels = check_labels(self.dataset_name, d.name, load_mask(mask), n, mask)
            items.append(UnsupervisedVideo(self.dataset_name, d.name, split, d, n, labels, folder_reader(FRAME_SUFFIXES)))
        return items
