"""What every dataset adapter shares: item types, the error type, the skip/raise policy.

Conventions for every adapter in this package:

- Frames are counted from 0. Anomaly intervals are half-open ``(start, end)``: frame ``f``
  is abnormal when ``start <= f < end``. Each adapter converts its file's convention
  (UCF-Crime's inclusive ends, XD-Violence's exclusive ends) into this one when parsing.
- A bad input (a missing file named by a list, a malformed line, a label with the wrong
  number of values) raises :class:`DatasetError` naming the file, the line (or entry) and
  what was expected. With ``on_error="skip"`` the bad item is left out and its message is
  appended to the adapter's ``problems`` list instead; nothing is dropped silently.
- A missing dataset root or a missing split/annotation file always raises: without them
  there is no dataset to skip items of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, Literal, Sequence, TypeVar

import numpy as np

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "skip")

T = TypeVar("T")


class DatasetError(ValueError):
    """A dataset file or item that does not match the documented layout."""


@dataclass(frozen=True)
class VideoItem:
    """One action video (UCF101 style). ``label`` is the 0-based class index."""

    path: Path
    name: str
    label: int
    class_name: str


@dataclass(frozen=True)
class AnomalyVideo:
    """One video of a weakly supervised anomaly dataset.

    ``label`` is the video-level label (1 = contains an anomaly). ``intervals`` holds the
    abnormal frame ranges as half-open ``(start, end)`` pairs, ``()`` for a normal video,
    and ``None`` when the video has only a video-level label (abnormal training videos of
    UCF-Crime and XD-Violence: weak supervision, no frame annotation exists).
    """

    path: Path
    name: str
    label: int
    class_name: str
    intervals: tuple[tuple[int, int], ...] | None


@dataclass(frozen=True, eq=False)
class ImageItem:
    """One privacy-attribute image: ``labels`` is a read-only float32 vector, one per attribute."""

    path: Path
    image_id: str
    labels: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.float32).reshape(-1)
        # Frozen items are shared between loaders and workers: make the array immutable too.
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)


def check_on_error(on_error: str) -> OnError:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error = {on_error!r} must be one of {', '.join(map(repr, ON_ERROR_CHOICES))}")
    return on_error  # type: ignore[return-value]


class DatasetAdapter:
    """Base of every adapter: root check, the raise/skip policy and the ``problems`` record."""

    dataset_name = "dataset"

    def __init__(self, root: str | Path, *, on_error: OnError = "raise") -> None:
        self.root = Path(root).expanduser()
        self.on_error = check_on_error(on_error)
        self.problems: list[str] = []
        if not self.root.is_dir():
            raise DatasetError(
                f"{self.dataset_name} root {self.root} does not exist or is not a directory "
                f"(expected the dataset folder described in {type(self).__module__})"
            )

    def _problem(self, message: str) -> None:
        """Raise, or record and carry on, according to ``on_error``."""
        if self.on_error == "raise":
            raise DatasetError(message)
        self.problems.append(message)

    def _require_file(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise DatasetError(f"{self.dataset_name}: {what} {path} does not exist")
        return path


def is_plain_name(part: str) -> bool:
    """A list entry's folder or file name that stays where it is joined ('..', '.', '' and absolute names do not)."""
    return part not in ("", ".", "..") and "/" not in part and "\\" not in part


def empty_split_message(adapter: DatasetAdapter, split: str, source: Path) -> str:
    """The error for a split with no usable item: nothing to train or test on is never a result."""
    skipped = f"; {len(adapter.problems)} item(s) were skipped as bad: {adapter.problems[0]}" if adapter.problems else ""
    return f"{adapter.dataset_name}: the {split} split ({source}) has no usable item{skipped}"


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers; tolerates CRLF endings and a BOM."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text: {e}") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped:
            out.append((number, stripped))
    return out


def intervals_to_frame_labels(
    intervals: Sequence[tuple[int, int]], num_frames: int, *, name: str
) -> np.ndarray:
    """uint8 per-frame labels from half-open intervals.

    Annotated ends past the last frame are cut at ``num_frames`` (real annotations overrun
    decoded lengths by a few frames); an interval that starts at or after ``num_frames``
    means the annotation and the video disagree, and raises.
    """
    if num_frames <= 0:
        raise DatasetError(f"{name}: num_frames must be positive, got {num_frames}")
    labels = np.zeros(num_frames, dtype=np.uint8)
    for start, end in intervals:
        if start >= num_frames:
            raise DatasetError(
                f"{name}: abnormal interval [{start}, {end}) starts at or after the video's last frame "
                f"(expected start < num_frames = {num_frames})"
            )
        labels[start:min(end, num_frames)] = 1
    return labels


def runs_of_ones(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Half-open ``(start, end)`` runs where a 0/1 vector is 1."""
    flags = np.asarray(mask).astype(bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], flags, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return tuple((int(s), int(e)) for s, e in zip(starts, ends))


def carve_validation(
    items: Iterable[T],
    *,
    fraction: float,
    seed: int,
    key: Callable[[T], str],
    stratify: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """Split items into (train, validation) deterministically.

    The choice depends only on the set of keys, the fraction and the seed, never on the
    order the items came in: items are sorted by ``key`` before a seeded permutation. With
    ``stratify``, each group (e.g. each video label) gives the same fraction. Both returned
    lists are sorted by key. Carved from a training split, the validation set is disjoint
    from the test split by construction.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    ordered = sorted(items, key=key)
    keys = [key(item) for item in ordered]
    if len(set(keys)) != len(keys):
        raise ValueError("carve_validation needs unique keys; two items share one")
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(ordered):
        groups.setdefault(stratify(item) if stratify else None, []).append(index)
    chosen: set[int] = set()
    rng = np.random.default_rng(seed)
    for group_key in sorted(groups, key=repr):
        members = groups[group_key]
        count = int(round(fraction * len(members)))
        picks = rng.permutation(len(members))[:count]
        chosen.update(members[i] for i in picks)
    train = [item for i, item in enumerate(ordered) if i not in chosen]
    val = [item for i, item in enumerate(ordered) if i in chosen]
    return train, val


def read_person_boxes(path: Path, num_frames: int) -> list[np.ndarray]:
    """Ground-truth person boxes of one video: a list with one ``(n_i, 4)`` int32 array per frame.

    The file is a ``.npy`` int32 array of shape ``(K, 5)``, one row per (frame, person):
    ``frame, x0, y0, x1, y1`` in pixels, ``x1``/``y1`` exclusive. Only the synthetic world
    ships these; real datasets have no person boxes.
    """
    if not path.is_file():
        raise DatasetError(f"person boxes {path} do not exist (only the synthetic world ships ground-truth boxes)")
    rows = np.load(path, allow_pickle=False)
    if rows.ndim != 2 or rows.shape[1] != 5:
        raise DatasetError(f"person boxes {path} have shape {rows.shape}; expected (K, 5) rows of frame, x0, y0, x1, y1")
    if rows.size and (rows[:, 0].min() < 0 or rows[:, 0].max() >= num_frames):
        raise DatasetError(
            f"person boxes {path} name frame {int(rows[:, 0].max())}; expected frames in [0, {num_frames})"
        )
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order]
    splits = np.searchsorted(rows[:, 0], np.arange(1, num_frames))
    return [chunk[:, 1:].astype(np.int32) for chunk in np.split(rows, splits)]


class AnomalyAdapter(DatasetAdapter):
    """Shared by the weakly supervised anomaly datasets: cached splits, frame labels, boxes.

    Subclasses implement ``_parse(split)``; ShanghaiTech overrides ``frame_labels`` (masks).
    """

    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, root: str | Path, *, on_error: OnError = "raise") -> None:
        super().__init__(root, on_error=on_error)
        self._cache: dict[str, list[AnomalyVideo]] = {}

    def _parse(self, split: str) -> list[AnomalyVideo]:
        raise NotImplementedError

    def items(self, split: str) -> list[AnomalyVideo]:
        """Videos of a split (see the subclass for their order; labels never depend on it)."""
        if split not in self.splits:
            raise ValueError(f"{self.dataset_name} split must be 'train' or 'test', got {split!r}")
        if split not in self._cache:
            parsed = self._parse(split)
            if not parsed:
                raise DatasetError(empty_split_message(self, split, getattr(self, "list_files", {}).get(split, self.root)))
            self._cache[split] = parsed
        return list(self._cache[split])

    def frame_labels(self, item: AnomalyVideo, num_frames: int) -> np.ndarray:
        """uint8 per-frame labels; raises for an abnormal video without frame annotation."""
        if item.intervals is None:
            raise DatasetError(
                f"{self.dataset_name}: {item.name} is an abnormal training video with a video-level label only "
                f"(frame labels exist for test videos)"
            )
        return intervals_to_frame_labels(item.intervals, num_frames, name=item.name)

    def person_boxes(self, item: AnomalyVideo, num_frames: int) -> list[np.ndarray]:
        """Ground-truth person boxes per frame (synthetic world only): ``boxes/<name>.npy``."""
        return read_person_boxes(self.root / "boxes" / f"{item.name}.npy", num_frames)
