"""UCF-Crime (Sultani et al., CVPR 2018) in the layout of the official release.

Layout under ``root`` (file names overridable)::

    Videos/<Folder>/<name>_x264.mp4
        anomaly classes in their own folders:        Fighting/Fighting003_x264.mp4
        normal training videos:  Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4
        normal test videos:      Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4
    Anomaly_Train.txt     one "<Folder>/<name>_x264.mp4" per line
    Anomaly_Test.txt      same form
    Temporal_Anomaly_Annotation_for_Testing_Videos.txt
        "<name>_x264.mp4  <Class>  <s1>  <e1>  <s2>  <e2>"   (-1 = no second/first event)

The annotation's frame numbers are 0-based with inclusive ends (the TeD-SPAD/MGFN ground
truth builders mark frames ``start .. end`` inclusive); they become half-open
``(start, end + 1)`` here. Video labels come from the folder (a folder or file named
``Normal...`` is normal) and, for test videos, must agree with the annotation's class.
Abnormal training videos have no frame annotation: their ``intervals`` are ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal


from .common import (
    AnomalyVideo,
    AnomalyAdapter,
    DatasetError,
    OnError,
    is_plain_name,
    read_lines,
)

Split = Literal["train", "test"]
NORMAL_CLASS = "Normal"


def _is_normal(folder: str, file_name: str) -> bool:
    return folder.startswith("Normal") or "_Normal_" in folder or file_name.startswith("Normal_Videos")


class UCFCrime(AnomalyAdapter):
    dataset_name = "UCF-Crime"

    def __init__(
        self,
        root: str | Path,
        *,
        on_error: OnError = "raise",
        videos_dir: str = "Videos",
        train_list: str = "Anomaly_Train.txt",
        test_list: str = "Anomaly_Test.txt",
        annotation_file: str = "Temporal_Anomaly_Annotation_for_Testing_Videos.txt",
    ) -> None:
        super().__init__(root, on_error=on_error)
        self.videos_root = self.root / videos_dir
        if not self.videos_root.is_dir():
            raise DatasetError(f"UCF-Crime: videos folder {self.videos_root} does not exist")
        self.list_files = {"train": self.root / train_list, "test": self.root / test_list}
        self.annotation_path = self.root / annotation_file

    def metadata_files(self) -> list[Path]:
        """The split lists and the temporal annotation: every file labels and intervals come from."""
        return [p for p in (self.list_files["train"], self.list_files["test"], self.annotation_path) if p.is_file()]

    # ------------------------------------------------------------------ parsing

    def _parse(self, split: Split) -> list[AnomalyVideo]:
        path = self._require_file(self.list_files[split], f"{split} list")
        annotations = self._parse_annotations() if split == "test" else {}
        out: list[AnomalyVideo] = []
        listed: set[str] = set()
        for number, line in read_lines(path):
            where = f"{path}:{number}"
            parts = line.split()
            if len(parts) != 1 or parts[0].count("/") != 1 or not parts[0].endswith(".mp4"):
                self._problem(f"{where}: {line!r} is malformed (expected '<Folder>/<name>_x264.mp4')")
                continue
            folder, file_name = parts[0].split("/")
            if not (is_plain_name(folder) and is_plain_name(file_name)):
                self._problem(f"{where}: {line!r} leaves {self.videos_root} (expected '<Folder>/<name>_x264.mp4')")
                continue
            video = self.videos_root / folder / file_name
            if not video.is_file():
                self._problem(f"{where}: video {video} does not exist")
                continue
            if file_name in listed:
                self._problem(f"{where}: video {file_name} is listed twice")
                continue
            listed.add(file_name)
            normal = _is_normal(folder, file_name)
            class_name = NORMAL_CLASS if normal else folder
            intervals: tuple[tuple[int, int], ...] | None = () if normal else None
            if split == "test":
                annotation = annotations.get(file_name)
                if annotation is None:
                    self._problem(f"{where}: test video {file_name} has no line in {self.annotation_path}")
                    continue
                annotated_class, annotated_intervals, annotation_line = annotation
                if annotated_class != class_name:
                    self._problem(
                        f"{self.annotation_path}:{annotation_line}: class {annotated_class!r} of {file_name} "
                        f"disagrees with its folder {folder!r} in {where} (expected {class_name!r})"
                    )
                    continue
                intervals = annotated_intervals
            out.append(AnomalyVideo(
                path=video, name=Path(file_name).stem, label=0 if normal else 1,
                class_name=class_name, intervals=intervals,
            ))
        if split == "test":
            for file_name, (_, _, line_number) in sorted(annotations.items()):
                if file_name not in listed:
                    self._problem(
                        f"{self.annotation_path}:{line_number}: names video {file_name}, which is not in "
                        f"{path} or does not exist"
                    )
        return out

    def _parse_annotations(self) -> dict[str, tuple[str, tuple[tuple[int, int], ...], int]]:
        """file name -> (class, half-open intervals, line number)."""
        path = self._require_file(self.annotation_path, "temporal annotation file")
        out: dict[str, tuple[str, tuple[tuple[int, int], ...], int]] = {}
        form = "'<name>_x264.mp4 <Class> <start1> <end1> <start2> <end2>' with -1 for absent events"
        for number, line in read_lines(path):
            where = f"{path}:{number}"
            parts = line.split()
            if len(parts) != 6 or not parts[0].endswith(".mp4"):
                self._problem(f"{where}: {line!r} is malformed (expected {form})")
                continue
            try:
                bounds = [int(v) for v in parts[2:]]
            except ValueError:
                self._problem(f"{where}: frame numbers {parts[2:]} are not integers (expected {form})")
                continue
            intervals = []
            bad = None
            for start, end in (bounds[0:2], bounds[2:4]):
                if start == -1 and end == -1:
                    continue
                if start < 0 or end < start:
                    bad = f"event [{start}, {end}] is not a valid inclusive frame range"
                    break
                intervals.append((start, end + 1))
            if bad is None and parts[1] == NORMAL_CLASS and intervals:
                bad = "a Normal video has abnormal frames"
            if bad is None and parts[1] != NORMAL_CLASS and not intervals:
                bad = f"abnormal class {parts[1]} has no event"
            if bad is not None:
                self._problem(f"{where}: {bad} (expected {form})")
                continue
            if parts[0] in out:
                self._problem(f"{where}: video {parts[0]} is annotated twice (first on line {out[parts[0]][2]})")
                continue
            out[parts[0]] = (parts[1], tuple(sorted(intervals)), number)
        return out
