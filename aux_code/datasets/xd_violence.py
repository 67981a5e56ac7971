"""XD-Violence (Wu et al., ECCV 2020) in the layout of the official release.

Layout under ``root`` (names overridable)::

    train/**/<name>.mp4        the training videos (the release splits them into part
                               folders such as 1-1004/; any depth is read)
    test/**/<name>.mp4         the test videos
    annotations.txt            test annotations: "<name> <s1> <e1> <s2> <e2> ..."

Labels come from the file name, never from list order: ``..._label_A`` is normal,
``..._label_B1-0-0``, ``..._label_B2-G-0`` etc. are abnormal with up to three category
codes (``0`` pads unused slots). Codes: A normal, B1 fighting, B2 shooting, B4 riot,
B5 abuse, B6 car accident, G explosion.

Annotation lines name a video with or without ``.mp4``; normal test videos have no line.
Frame numbers are 0-based with exclusive ends (as the TeD-SPAD/MGFN ground-truth builder
reads them: frames ``start .. end-1`` are abnormal). Training videos have only
video-level labels: abnormal ones get ``intervals = None``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal


from .common import (
    AnomalyVideo,
    AnomalyAdapter,
    DatasetError,
    OnError,
    read_lines,
)

Split = Literal["train", "test"]

XD_CATEGORIES: dict[str, str] = {
    "A": "Normal",
    "B1": "Fighting",
    "B2": "Shooting",
    "B4": "Riot",
    "B5": "Abuse",
    "B6": "CarAccident",
    "G": "Explosion",
}
_LABEL_PATTERN = re.compile(r"_label_([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)$")


def parse_xd_label(stem: str) -> tuple[int, str]:
    """(video label, class name) from an XD-Violence file stem; raises DatasetError if malformed."""
    match = _LABEL_PATTERN.search(stem)
    if match is None:
        raise DatasetError(f"file name {stem!r} has no '_label_<codes>' suffix (expected e.g. '..._label_A' or '..._label_B1-0-0')")
    codes = [c for c in match.group(1).split("-") if c != "0"]
    unknown = [c for c in codes if c not in XD_CATEGORIES]
    if unknown or not codes:
        raise DatasetError(
            f"file name {stem!r} has unknown category code(s) {unknown or match.group(1)} "
            f"(expected codes among {', '.join(XD_CATEGORIES)})"
        )
    if "A" in codes:
        if codes != ["A"]:
            raise DatasetError(f"file name {stem!r} mixes the normal code A with abnormal codes {codes}")
        return 0, XD_CATEGORIES["A"]
    return 1, "+".join(XD_CATEGORIES[c] for c in codes)


class XDViolence(AnomalyAdapter):
    dataset_name = "XD-Violence"

    def __init__(
        self,
        root: str | Path,
        *,
        on_error: OnError = "raise",
        train_dir: str = "train",
        test_dir: str = "test",
        annotation_file: str = "annotations.txt",
    ) -> None:
        super().__init__(root, on_error=on_error)
        self.split_dirs = {"train": self.root / train_dir, "test": self.root / test_dir}
        self.annotation_path = self.root / annotation_file

    def metadata_files(self) -> list[Path]:
        """The annotation file (labels come from the video names, which the video fingerprints cover)."""
        return [self.annotation_path] if self.annotation_path.is_file() else []

    # ------------------------------------------------------------------ parsing

    def _parse(self, split: Split) -> list[AnomalyVideo]:
        folder = self.split_dirs[split]
        if not folder.is_dir():
            raise DatasetError(f"XD-Violence: {split} folder {folder} does not exist")
        videos: dict[str, Path] = {}
        for path in sorted(folder.rglob("*.mp4")):
            if path.stem in videos:
                self._problem(f"{path}: a second video named {path.stem} (first: {videos[path.stem]})")
                continue
            videos[path.stem] = path
        annotations = self._parse_annotations() if split == "test" else {}
        out: list[AnomalyVideo] = []
        for stem, path in videos.items():
            try:
                label, class_name = parse_xd_label(stem)
            except DatasetError as e:
                self._problem(f"{path}: {e}")
                continue
            intervals: tuple[tuple[int, int], ...] | None = () if label == 0 else None
            if split == "test":
                annotation = annotations.get(stem)
                if label == 1 and annotation is None:
                    self._problem(f"{path}: abnormal test video has no line in {self.annotation_path}")
                    continue
                if label == 0 and annotation is not None:
                    self._problem(
                        f"{self.annotation_path}:{annotation[1]}: annotates {stem}, whose name says it is "
                        f"normal (label_A); expected no line for normal videos"
                    )
                    continue
                if annotation is not None:
                    intervals = annotation[0]
            out.append(AnomalyVideo(path=path, name=stem, label=label, class_name=class_name, intervals=intervals))
        if split == "test":
            for stem, (_, line_number) in sorted(annotations.items()):
                if stem not in videos:
                    self._problem(
                        f"{self.annotation_path}:{line_number}: names video {stem}, which does not exist in {folder}"
                    )
        return out

    def _parse_annotations(self) -> dict[str, tuple[tuple[tuple[int, int], ...], int]]:
        """video stem -> (half-open intervals, line number)."""
        path = self._require_file(self.annotation_path, "test annotation file")
        form = "'<name> <start1> <end1> [<start2> <end2> ...]' with end exclusive"
        out: dict[str, tuple[tuple[tuple[int, int], ...], int]] = {}
        for number, line in read_lines(path):
            where = f"{path}:{number}"
            parts = line.split()
            if len(parts) < 3 or len(parts) % 2 == 0:
                self._problem(f"{where}: {line!r} is malformed (expected {form})")
                continue
            stem = parts[0][:-4] if parts[0].endswith(".mp4") else parts[0]
            try:
                bounds = [int(v) for v in parts[1:]]
            except ValueError:
                self._problem(f"{where}: frame numbers {parts[1:]} are not integers (expected {form})")
                continue
            intervals = list(zip(bounds[0::2], bounds[1::2]))
            if any(start < 0 or end <= start for start, end in intervals):
                self._problem(f"{where}: intervals {intervals} must have 0 <= start < end (expected {form})")
                continue
            if stem in out:
                self._problem(f"{where}: video {stem} is annotated twice (first on line {out[stem][1]})")
                continue
            out[stem] = (tuple(sorted(intervals)), number)
        return out
