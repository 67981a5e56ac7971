"""CUHK Avenue (Lu et al. 2013) as its release ships it.

Layout under the root::

    training_videos/01.avi ... 16.avi                  all normal
    testing_videos/01.avi ... 21.avi
    ground_truth_demo/testing_label_mask/1_label.mat   one per test video (no zero padding): a MATLAB
                                                       cell ``volLabel`` (1 x n) of h x w pixel masks;
                                                       a frame is abnormal when its mask is non-zero

The .mat files are read with scipy.io.loadmat; the number of masks must equal the video's frame
count (never resampled).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io

from aux_code.datasets.common import DatasetError
from aux_code.datasets.unsupervised import (
    Split, UnsupervisedAdapter, UnsupervisedVideo, check_labels, count_video_frames, require_dir, video_reader,
)


def read_label_mat(path: Path) -> np.ndarray:
    """Frame labels (uint8, one per mask) of an Avenue ``N_label.mat``."""
    try:
        data = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError) as e:
        raise DatasetError(f"CUHK Avenue: {path} is not a readable MATLAB file: {e}") from None
    if "volLabel" not in data:
        keys = ", ".join(k for k in data if not k.startswith("__"))
        raise DatasetError(f"CUHK Avenue: {path} holds no 'volLabel' cell (it holds: {keys or 'nothing'})")
    cells = np.asarray(data["volLabel"]).reshape(-1)
    return np.array([int(np.asarray(m).any()) for m in cells], dtype=np.uint8)


class Avenue(UnsupervisedAdapter):
    dataset_name = "CUHK Avenue"

    def __init__(self, root: str | Path, *, mask_dir: str = "ground_truth_demo/testing_label_mask") -> None:
        super().__init__(root)
        self.mask_dir = self.root / mask_dir

    def metadata_files(self) -> list[Path]:
        """The per-video label .mat files."""
        masks = sorted(self.mask_dir.glob("*_label.mat")) if self.mask_dir.is_dir() else []
        return super().metadata_files() + masks

    def _list(self, split: Split) -> list[UnsupervisedVideo]:
        folder = require_dir(self.dataset_name, self.root / f"{split}ing_videos", f"{split}ing videos")
        items = []
        for path in sorted(p for p in folder.glob("*.avi") if re.fullmatch(r"\d+", p.stem)):
            n = count_video_frames(path)
            labels = None
            if split == "test":
                mat = self.mask_dir / f"{int(path.stem)}_label.mat"
                if not mat.is_file():
                    raise DatasetError(f"{self.dataset_name}: test video {path.stem} has no ground truth {mat}")
                labels = check_labels(self.dataset_name, path.stem, read_label_mat(mat), n, mat)
            items.append(UnsupervisedVideo(self.dataset_name, path.stem, split, path, n, labels, video_reader))
        return items
