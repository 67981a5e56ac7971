"""The VISPR privacy-attribute split used by SPAct and TeD-SPAD (7 attributes, multi-label).

Layout under ``root``, as the SPAct / TeD-SPAD code reads it::

    train2017/<image_id>.jpg          e.g. 2017_10000245.jpg
    test2017/<image_id>.jpg
    train_labels.pkl                  dict: image_id (file stem) -> 7 values (0/1)
    test_labels.pkl

The label files ship with the TeD-SPAD code (``vispr_labels/``). A ``<split>_labels.json``
holding the same dict (lists of 7 numbers) is accepted in place of the pickle. The pickle
is read with a restricted unpickler that builds only plain builtins and numpy arrays, so a
label file cannot run code.

Attribute order is VISPR-7 of Wu et al.: :data:`VISPR_ATTRIBUTES`.

Splits: ``train`` and ``test`` as released, and ``val``: a deterministic fraction carved
out of train (``val_fraction``, ``val_seed``), so that model selection never looks at test.
With ``val_fraction > 0``, ``items("train")`` excludes the validation images.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .common import DatasetAdapter, DatasetError, ImageItem, OnError, carve_validation, empty_split_message

VISPR_ATTRIBUTES: tuple[str, ...] = (
    "gender",
    "complete_face",
    "partial_face",
    "semi_nudity",
    "skin_color",
    "personal_relationship",
    "social_relationship",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

Split = Literal["train", "val", "test"]

# (module, name) pairs a numpy array pickle needs; numpy 2 moved numpy.core to numpy._core.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}
_BUILTIN_GLOBALS = {("collections", "OrderedDict")}


class _LabelUnpickler(pickle.Unpickler):
    """Builds dicts, lists, numbers, strings and numpy arrays; refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        import importlib

        if (module, name) in _NUMPY_GLOBALS:
            target_module, target_name = _NUMPY_GLOBALS[(module, name)]
            return getattr(importlib.import_module(target_module), target_name)
        if (module, name) in _BUILTIN_GLOBALS:
            return getattr(importlib.import_module(module), name)
        raise DatasetError(
            f"{self.source} refers to {module}.{name}; a label pickle may hold only plain builtins "
            f"and numpy arrays (refused so that reading labels cannot run code)"
        )


def load_label_dict(path: Path) -> dict[str, Any]:
    """The image-id -> labels dict of a ``.pkl`` (restricted) or ``.json`` label file."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} is not valid JSON: {e}") from None
    else:
        with open(path, "rb") as f:
            try:
                data = _LabelUnpickler(f, path).load()
            except DatasetError:
                raise
            except Exception as e:  # a truncated or foreign pickle: name the file, keep the cause
                raise DatasetError(f"{path} is not a readable label pickle: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} holds a {type(data).__name__}; expected a dict image_id -> 7 attribute values")
    return data


class VISPR(DatasetAdapter):
    dataset_name = "VISPR"

    def __init__(
        self,
        root: str | Path,
        *,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        on_error: OnError = "raise",
    ) -> None:
        super().__init__(root, on_error=on_error)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"VISPR val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.val_seed = val_seed
        self._released: dict[str, list[ImageItem]] = {}
        self._boxes: dict[Path, dict] = {}

    @property
    def attributes(self) -> tuple[str, ...]:
        return VISPR_ATTRIBUTES

    def label_file(self, released_split: str) -> Path:
        """The label file of 'train' or 'test': the pickle if present, else the JSON."""
        for suffix in (".pkl", ".json"):
            path = self.root / f"{released_split}_labels{suffix}"
            if path.is_file():
                return path
        raise DatasetError(
            f"VISPR: no label file for the {released_split} split in {self.root} "
            f"(expected {released_split}_labels.pkl or {released_split}_labels.json)"
        )

    def metadata_files(self) -> list[Path]:
        """The label files of both released splits (and the synthetic world's person boxes, where shipped)."""
        labels = [self.root / f"{s}_labels{x}" for s in ("train", "test") for x in (".pkl", ".json")]
        boxes = [self.root / f"person_boxes_{s}2017.json" for s in ("train", "test")]
        return [p for p in labels + boxes if p.is_file()]

    def person_boxes(self, item: ImageItem) -> np.ndarray:
        """Ground-truth person boxes of an image, int32 ``(n, 4)`` rows ``x0, y0, x1, y1`` (x1/y1 exclusive).

        Only the synthetic world ships them, as ``person_boxes_<split>2017.json`` (image id -> boxes).
        """
        path = self.root / f"person_boxes_{item.path.parent.name}.json"
        if path not in self._boxes:
            if not path.is_file():
                raise DatasetError(f"person boxes {path} do not exist (only the synthetic world ships ground-truth boxes)")
            self._boxes[path] = json.loads(path.read_text())
        table = self._boxes[path]
        if item.image_id not in table:
            raise DatasetError(f"{path} has no entry for image {item.image_id}")
        boxes = np.asarray(table[item.image_id], dtype=np.int32).reshape(-1, 4)
        return boxes

    def items(self, split: Split) -> list[ImageItem]:
        """Images of 'train' (minus validation), 'val' or 'test', sorted by image id."""
        if split == "test":
            return list(self._released_items("test"))
        if split not in ("train", "val"):
            raise ValueError(f"VISPR split must be 'train', 'val' or 'test', got {split!r}")
        train, val = carve_validation(
            self._released_items("train"), fraction=self.val_fraction, seed=self.val_seed,
            key=lambda item: item.image_id,
        )
        return train if split == "train" else val

    def _released_items(self, released_split: str) -> list[ImageItem]:
        if released_split not in self._released:
            self._released[released_split] = self._parse(released_split)
        return self._released[released_split]

    def _parse(self, released_split: str) -> list[ImageItem]:
        image_dir = self.root / f"{released_split}2017"
        if not image_dir.is_dir():
            raise DatasetError(f"VISPR: image folder {image_dir} does not exist")
        label_path = self.label_file(released_split)
        labels = load_label_dict(label_path)
        on_disk = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        expected = len(VISPR_ATTRIBUTES)
        out: list[ImageItem] = []
        for image_id in sorted(labels, key=str):
            where = f"{label_path} entry {image_id!r}"
            if not isinstance(image_id, str):
                self._problem(f"{where}: image id is a {type(image_id).__name__}; expected the image file stem as a string")
                continue
            try:
                values = np.asarray(labels[image_id], dtype=np.float32)
            except (TypeError, ValueError):
                self._problem(f"{where}: labels {labels[image_id]!r} are not numbers; expected {expected} values 0/1")
                continue
            if values.shape != (expected,):
                self._problem(
                    f"{where}: has {values.size} label value(s) of shape {values.shape}; expected {expected} "
                    f"({', '.join(VISPR_ATTRIBUTES)})"
                )
                continue
            if not np.all((values == 0) | (values == 1)):
                self._problem(f"{where}: labels {values.tolist()} are not all 0/1")
                continue
            path = on_disk.get(image_id)
            if path is None:
                self._problem(f"{where}: image {image_dir / (image_id + '.jpg')} does not exist")
                continue
            out.append(ImageItem(path=path, image_id=image_id, labels=values))
        unlabeled = sorted(set(on_disk) - {k for k in labels if isinstance(k, str)})
        if unlabeled:
            shown = ", ".join(unlabeled[:5]) + (" ..." if len(unlabeled) > 5 else "")
            self._problem(f"{image_dir}: {len(unlabeled)} image(s) have no entry in {label_path}: {shown}")
        if not out:
            raise DatasetError(empty_split_message(self, released_split, label_path))
        return out
