"""UCF101 action videos, read in the layout of the official release.

Layout under ``root`` (folder names overridable)::

    Videos/<Class>/v_<Class>_gXX_cYY.avi
    ucfTrainTestlist/classInd.txt      "1 ApplyEyeMakeup"  (1-based id, class folder name)
    ucfTrainTestlist/trainlist0N.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist0N.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

``fold`` picks the official split 1, 2 or 3. Labels come from the class folder of each
list line through classInd (the test lists carry no id); a train line's id must agree
with it. Item labels are 0-based (classInd id - 1).
The file name's class part is not trusted: the real release spells one class differently
in folder and file names (HandstandPushups / v_HandStandPushups_...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from .common import (DatasetAdapter, DatasetError, OnError, VideoItem, empty_split_message, is_plain_name, read_lines,
                     read_person_boxes)

Split = Literal["train", "test"]


class UCF101(DatasetAdapter):
    dataset_name = "UCF101"

    def __init__(
        self,
        root: str | Path,
        *,
        fold: int = 1,
        on_error: OnError = "raise",
        videos_dir: str = "Videos",
        lists_dir: str = "ucfTrainTestlist",
    ) -> None:
        super().__init__(root, on_error=on_error)
        if fold not in (1, 2, 3):
            raise ValueError(f"UCF101 fold must be 1, 2 or 3 (trainlist0N/testlist0N), got {fold!r}")
        self.fold = fold
        self.videos_root = self.root / videos_dir
        if not self.videos_root.is_dir():
            raise DatasetError(f"UCF101: videos folder {self.videos_root} does not exist")
        self.lists_root = self.root / lists_dir
        self.classes: tuple[str, ...] = self._read_class_index()
        self._class_ids = {name: i for i, name in enumerate(self.classes)}
        self._cache: dict[str, list[VideoItem]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def metadata_files(self) -> list[Path]:
        """classInd.txt and the split lists of every fold present (whichever fold a run reads)."""
        names = ["classInd.txt"] + [f"{s}list0{f}.txt" for f in (1, 2, 3) for s in ("train", "test")]
        return [self.lists_root / n for n in names if (self.lists_root / n).is_file()]

    def _read_class_index(self) -> tuple[str, ...]:
        path = self._require_file(self.lists_root / "classInd.txt", "class index")
        names: dict[int, str] = {}
        for number, line in read_lines(path):
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                # A broken class index invalidates every label: never skippable.
                raise DatasetError(f"{path}:{number}: {line!r} is malformed (expected '<1-based id> <ClassName>')")
            class_id, name = int(parts[0]), parts[1]
            if class_id in names or name in names.values():
                raise DatasetError(f"{path}:{number}: class id {class_id} or name {name!r} appears twice")
            names[class_id] = name
        if not names:
            raise DatasetError(f"{path} lists no classes (expected lines '<id> <ClassName>')")
        expected = list(range(1, len(names) + 1))
        if sorted(names) != expected:
            raise DatasetError(f"{path}: class ids are {sorted(names)}; expected consecutive ids 1..{len(names)}")
        return tuple(names[i] for i in expected)

    def person_boxes(self, item: VideoItem, num_frames: int) -> list[np.ndarray]:
        """Ground-truth person boxes per frame (synthetic world only): ``boxes/<name>.npy``."""
        return read_person_boxes(self.root / "boxes" / f"{item.name}.npy", num_frames)

    def items(self, split: Split) -> list[VideoItem]:
        """Videos of the train or test list of this fold, in list order."""
        if split not in ("train", "test"):
            raise ValueError(f"UCF101 split name must be 'train' or 'test', got {split!r}")
        if split not in self._cache:
            self._cache[split] = self._parse_list(split)
        return list(self._cache[split])

    def _parse_list(self, split: Split) -> list[VideoItem]:
        list_name = f"{split}list0{self.fold}.txt"
        path = self._require_file(self.lists_root / list_name, f"{split} list")
        expected_fields = 2 if split == "train" else 1
        form = "'<Class>/<file>.avi <id>'" if split == "train" else "'<Class>/<file>.avi'"
        out: list[VideoItem] = []
        seen: set[str] = set()
        for number, line in read_lines(path):
            where = f"{path}:{number}"
            parts = line.split()
            relative = parts[0] if parts else ""
            # Some copies of the test lists carry the id too; accept it and check it.
            if len(parts) not in (expected_fields, 2) or relative.count("/") != 1:
                self._problem(f"{where}: {line!r} is malformed (expected {form})")
                continue
            class_name, file_name = relative.split("/")
            if not is_plain_name(file_name):
                self._problem(f"{where}: {line!r} leaves {self.videos_root} (expected {form})")
                continue
            if class_name not in self._class_ids:
                self._problem(f"{where}: class folder {class_name!r} is not in classInd.txt")
                continue
            label = self._class_ids[class_name]
            if len(parts) == 2:
                if not parts[1].isdigit():
                    self._problem(f"{where}: class id {parts[1]!r} is not an integer (expected {form})")
                    continue
                if int(parts[1]) != label + 1:
                    self._problem(
                        f"{where}: class id {parts[1]} disagrees with classInd.txt, which gives "
                        f"{class_name} the id {label + 1}"
                    )
                    continue
            video = self.videos_root / class_name / file_name
            if not video.is_file():
                self._problem(f"{where}: video {video} does not exist")
                continue
            if relative in seen:
                self._problem(f"{where}: video {relative} is listed twice")
                continue
            seen.add(relative)
            out.append(VideoItem(path=video, name=Path(file_name).stem, label=label, class_name=class_name))
        if not out:
            raise DatasetError(empty_split_message(self, split, path))
        return out
