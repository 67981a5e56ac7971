"""UCSD Ped2 (Li et al. 2013) as the UCSD_Anomaly_Dataset.v1p2 release ships it.

Layout under the root (the ``UCSDped2`` folder)::

    Train/Train001/001.tif ...        16 training videos, all normal
    Test/Test001/001.tif ...          12 test videos
    Test/UCSDped2.m                   frame-level ground truth: one line per test video, in order,
                                      ``TestVideoFile{end+1}.gt_frame = [61:180];`` (1-based,
                                      inclusive ranges; several ranges or single frames separated
                                      by commas or spaces)
    Test/Test001_gt/001.bmp ...       pixel masks (optional); used for a test video the .m file
                                      does not cover: a frame is abnormal when its mask is non-zero
    Train/Train001_gt/                (not in the release) masks of a training video: any non-zero
                                      mask is an error (the training split must be normal)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from aux_code.datasets.common import DatasetError
from aux_code.datasets.unsupervised import (
    Split, UnsupervisedAdapter, UnsupervisedVideo, check_labels, folder_reader, list_frames, read_image, require_dir,
)

FRAME_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIXES = (".bmp", ".png", ".tif")
_GT_LINE = re.compile(r"gt_frame\s*=\s*\[([^\]]*)\]")


def parse_gt_m_file(path: Path) -> list[list[tuple[int, int]]]:
    """The .m file's ranges per test video, in file order, as 0-based half-open (start, end)."""
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        code = line.split("%", 1)[0]
        m = _GT_LINE.search(code)
        if not m:
            continue
        ranges = []
        for token in re.split(r"[,\s]+", m.group(1).strip()):
            if not token:
                continue
            try:
                a, _, b = token.partition(":")
                lo, hi = int(a), int(b or a)
            except ValueError:
                raise DatasetError(f"UCSD Ped2: {path}:{number}: {token!r} is not a frame range like 61:180") from None
            if lo < 1 or hi < lo:
                raise DatasetError(f"UCSD Ped2: {path}:{number}: range {token!r} must be 1-based with start <= end")
            ranges.append((lo - 1, hi))
        out.append(ranges)
    return out


def mask_folder_labels(folder: Path) -> np.ndarray:
    return np.array([int(read_image(p).any()) for p in list_frames(folder, MASK_SUFFIXES)], dtype=np.uint8)


class Ped2(UnsupervisedAdapter):
    dataset_name = "UCSD Ped2"

    def __init__(self, root: str | Path, *, gt_file: str = "Test/UCSDped2.m") -> None:
        super().__init__(root)
        self.gt_file = self.root / gt_file

    def metadata_files(self) -> list[Path]:
        """The .m file and the mask folders the labels are read from: those of training videos and of test
        videos past the .m file's entries (a mask folder the .m file overrides is not read)."""
        files = super().metadata_files()
        covered = 0
        if self.gt_file.is_file():
            files.append(self.gt_file)
            covered = len(parse_gt_m_file(self.gt_file))
        for prefix in ("Train", "Test"):
            folder = self.root / prefix
            for d in sorted(folder.iterdir()) if folder.is_dir() else []:
                m = re.fullmatch(rf"{prefix}(\d+)_gt", d.name)
                if m and d.is_dir() and not (prefix == "Test" and int(m.group(1)) <= covered):
                    files += list_frames(d, MASK_SUFFIXES)
        return files

    def _list(self, split: Split) -> list[UnsupervisedVideo]:
        folder = require_dir(self.dataset_name, self.root / ("Train" if split == "train" else "Test"), split)
        prefix = "Train" if split == "train" else "Test"
        dirs = sorted(d for d in folder.iterdir() if d.is_dir() and re.fullmatch(rf"{prefix}\d+", d.name))
        gt = parse_gt_m_file(self.gt_file) if split == "test" and self.gt_file.is_file() else []
        items = []
        for d in dirs:
            n = len(list_frames(d, FRAME_SUFFIXES))
            if n == 0:
                raise DatasetError(f"{self.dataset_name}: video {d.name} ({d}) holds no .tif frame")
            labels = None
            mask_dir = d.with_name(d.name + "_gt")
            if split == "test":
                index = int(d.name[len(prefix):]) - 1
                if index < len(gt):
                    labels = np.zeros(n, np.uint8)
                    for lo, hi in gt[index]:
                        if hi > n:
                            raise DatasetError(f"{self.dataset_name}: {self.gt_file} marks frames {lo + 1}:{hi} of "
                                               f"test video {d.name}, which has {n} frames")
                        labels[lo:hi] = 1
                elif mask_dir.is_dir():
                    labels = check_labels(self.dataset_name, d.name, mask_folder_labels(mask_dir), n, mask_dir)
                else:
                    raise DatasetError(f"{self.dataset_name}: test video {d.name} has no ground truth: neither entry "
                                       f"{index + 1} of {self.gt_file} ({len(gt)} entries) nor a folder {mask_dir}")
            elif mask_dir.is_dir():
                labels = check_labels(self.dataset_name, d.name, mask_folder_labels(mask_dir), n, mask_dir)
            items.append(UnsupervisedVideo(self.dataset_name, d.name, split, d, n, labels, folder_reader(FRAME_SUFFIXES)))
        return items
