"""Data of stage 1: the proxy action set's clips (plain, triplet, evaluation), privacy images
(two augmented views, evaluation views) and the identity task's frames.

Randomness: every sample is drawn from its own generators, seeded by
``(run seed, stream, epoch, position in the epoch)``. A batch sampler yields
``(item index, sample seed)`` pairs, so an epoch's batches, clip positions and augmentations
depend only on the epoch number: a run resumed at an epoch boundary sees exactly the batches
the uninterrupted run saw, whatever ``num_workers`` is.

Layouts: clips (C, T, H, W) float in [0, 1] per sample, batched (B, C, T, H, W); images
(C, H, W) per sample, batched (B, C, H, W). RGB throughout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from aux_code.clips import clip_footprint, clip_frame_indices, last_valid_start, random_clip_start, sample_triplet_starts
from aux_code.datasets import UCF101, VISPR, ImageItem, VideoItem, carve_validation
from aux_code.runtime import seed_worker
from aux_code.transforms import ClipEval, ClipTrain, to_float_clip, to_float_image
from aux_code.video import iter_frames, probe, read_clip

# Streams keep the draws of different purposes independent of each other.
STREAM_ACTION, STREAM_PRIVACY, STREAM_FRAMES, STREAM_EVAL_VIEWS = 1, 2, 3, 4
# Seeds of the minimax remedies: budget-ensemble members' random inits, the fresh attacker probe.
STREAM_BUDGET_INIT, STREAM_ATTACKER = 5, 6


class StageDataError(ValueError):
    """A split that is empty or too small for the configured training, found before training."""


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence: well mixed, order sensitive)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_batches(
    n_items: int, *, batch_size: int, num_batches: int, seed: int, stream: int, epoch: int
) -> list[list[tuple[int, int]]]:
    """``num_batches`` batches of ``(item index, sample seed)`` for one epoch.

    Items come from seeded permutations of ``range(n_items)``, a fresh one each time the
    previous is used up; an incomplete tail of a permutation is dropped (BatchNorm needs full
    batches). Each position gets its own sample seed, so an item drawn twice in an epoch gets
    two different augmentations.
    """
    if n_items < batch_size:
        raise StageDataError(f"{n_items} item(s) cannot fill one batch of {batch_size}")
    out: list[list[tuple[int, int]]] = []
    per_perm = n_items // batch_size
    cycle = 0
    while len(out) < num_batches:
        perm = np.random.default_rng(sample_seed(seed, stream, epoch, cycle)).permutation(n_items)
        for b in range(min(per_perm, num_batches - len(out))):
            chunk = perm[b * batch_size : (b + 1) * batch_size]
            pos = len(out) * batch_size
            out.append([(int(i), sample_seed(seed, stream, epoch, 1_000_000 + pos + j)) for j, i in enumerate(chunk)])
        cycle += 1
    return out


def _generators(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    g = torch.Generator()
    g.manual_seed(seed)
    return np.random.default_rng(seed), g


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ActionSplits:
    """The proxy action set: train (minus validation), validation (carved from train), test list."""

    train: list[VideoItem]
    val: list[VideoItem]
    test: list[VideoItem]
    classes: tuple[str, ...]


_GROUP = re.compile(r"_g(\d+)_c\d+$")


def video_group(item: VideoItem) -> str:
    """UCF101's group number of a video (``v_<Class>_gXX_cYY`` -> ``gXX``); the name itself if it has none.

    Clips of one group share actors and background. UCF101's official splits hold out whole
    group numbers (g01-g07 for testlist01) across every class, so a validation carve by
    group number asks the same question as the test list: is the action recognised in front
    of people and places never seen in training.
    """
    match = _GROUP.search(item.name)
    return f"g{match.group(1)}" if match else item.name


def load_action_splits(root: str | Path, *, fold: int, val_fraction: float, val_seed: int,
                       by: str = "group") -> ActionSplits:
    """UCF101-layout splits; validation is carved from the train list (never the test list), by
    whole group numbers across all classes (``by="group"``, :func:`video_group`) or by single
    videos stratified by class (``"video"``)."""
    dataset = UCF101(root, fold=fold)
    train_all = dataset.items("train")
    units: dict[str, list[VideoItem]] = {}
    for item in train_all:
        units.setdefault(video_group(item) if by == "group" else item.name, []).append(item)
    label_of = {u: items[0].label for u, items in units.items()}
    train_units, val_units = carve_validation(list(units), fraction=val_fraction, seed=val_seed, key=lambda u: u,
                                              stratify=None if by == "group" else (lambda u: label_of[u]))
    train = sorted((v for u in train_units for v in units[u]), key=lambda v: v.name)
    val = sorted((v for u in val_units for v in units[u]), key=lambda v: v.name)
    test = dataset.items("test")
    for name, items in (("train", train), ("validation", val), ("test", test)):
        if not items:
            raise StageDataError(
                f"the action {name} split of {root} (fold {fold}, validation fraction {val_fraction}) is empty; "
                f"the train list has {len(train_all)} video(s)"
            )
    return ActionSplits(train=train, val=val, test=test, classes=dataset.classes)


def load_privacy_splits(root: str | Path, *, val_fraction: float, val_seed: int) -> tuple[list[ImageItem], list[ImageItem]]:
    """VISPR-layout train (minus validation) and validation images."""
    dataset = VISPR(root, val_fraction=val_fraction, val_seed=val_seed)
    train, val = dataset.items("train"), dataset.items("val")
    for name, items in (("train", train), ("validation", val)):
        if len(items) < 2:
            raise StageDataError(
                f"the privacy {name} split of {root} has {len(items)} image(s) (validation fraction {val_fraction}); "
                f"NT-Xent needs at least 2"
            )
    return train, val


class VideoSource:
    """Frame access to a list of videos, decoded on demand or cached in memory (uint8)."""

    def __init__(self, videos: Sequence[VideoItem], *, cache: bool) -> None:
        self.videos = list(videos)
        self._frames: list[np.ndarray] | None = None
        if cache:
            # Decoding counts the frames too; probing first would decode mpeg4 AVIs twice.
            self._frames = [np.stack(list(iter_frames(v.path))) for v in self.videos]
            self.num_frames = [len(f) for f in self._frames]
        else:
            self.num_frames = [probe(v.path).num_frames for v in self.videos]

    def __len__(self) -> int:
        return len(self.videos)

    def frames(self, i: int, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 frames of video i."""
        if self._frames is not None:
            return self._frames[i][list(indices)]
        from aux_code.video import read_frames

        return read_frames(self.videos[i].path, indices)

    def clip(self, i: int, start: int, *, clip_len: int, skip: int) -> np.ndarray:
        """(clip_len, H, W, 3) uint8 clip of video i starting at raw frame ``start``."""
        if self._frames is not None:
            return self._frames[i][clip_frame_indices(start, clip_len=clip_len, skip=skip)]
        return read_clip(self.videos[i].path, start, clip_len=clip_len, skip=skip)

    def check_length(self, needed: int, *, why: str) -> None:
        short = [(v.name, n) for v, n in zip(self.videos, self.num_frames) if n < needed]
        if short:
            shown = ", ".join(f"{name} ({n} frames)" for name, n in short[:5])
            raise StageDataError(f"{len(short)} video(s) are shorter than the {needed} frames {why} needs: {shown}")


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class ImageSource:
    """Privacy images, read on demand or cached in memory (uint8)."""

    def __init__(self, items: Sequence[ImageItem], *, cache: bool) -> None:
        self.items = list(items)
        self._cache = [read_image(item.path) for item in self.items] if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else read_image(self.items[i].path)


# --------------------------------------------------------------------------- datasets


class ActionClips(Dataset):
    """Training clips with labels; indexed by ``(video index, sample seed)``.

    ``triplet=False``: {"clip": (C, T, h, w), "label"}. ``triplet=True``: also the positive (the
    anchor's frames under a second augmentation) and the negative (a clip of the same video at
    another time, drawn by :func:`sample_triplet_starts` with a minimum gap or a fixed distance).
    """

    def __init__(
        self,
        source: VideoSource,
        transform: ClipTrain,
        *,
        clip_len: int,
        skip: int,
        triplet: bool = False,
        negative_distance: int | None = None,
        negative_min_gap: int | None = None,
    ) -> None:
        self.source, self.transform = source, transform
        self.clip_len, self.skip, self.triplet = clip_len, skip, triplet
        self.negative_distance, self.negative_min_gap = negative_distance, negative_min_gap
        if triplet:
            gap = negative_distance or negative_min_gap or clip_len * skip
            source.check_length(clip_footprint(clip_len=clip_len, skip=skip) + gap, why="an anchor and a negative clip")
        else:
            source.check_length(clip_footprint(clip_len=clip_len, skip=skip), why="one clip")

    def __len__(self) -> int:
        return len(self.source)

    def _clip(self, i: int, start: int) -> torch.Tensor:
        return to_float_clip(self.source.clip(i, start, clip_len=self.clip_len, skip=self.skip))

    def __getitem__(self, key: tuple[int, int]) -> dict:
        i, seed = key
        rng, g = _generators(seed)
        n = self.source.num_frames[i]
        label = self.source.videos[i].label
        if not self.triplet:
            start = random_clip_start(n, clip_len=self.clip_len, skip=self.skip, rng=rng)
            return {"clip": self.transform(self._clip(i, start), generator=g), "label": label}
        t, t_neg = sample_triplet_starts(
            n, clip_len=self.clip_len, skip=self.skip, rng=rng,
            min_gap=None if self.negative_distance else self.negative_min_gap, distance=self.negative_distance,
        )
        anchor_raw = self._clip(i, t)
        return {
            "clip": self.transform(anchor_raw, generator=g),
            "positive": self.transform(anchor_raw, generator=g),
            "negative": self.transform(self._clip(i, t_neg), generator=g),
            "label": label,
        }


def eval_clip_starts(num_frames: int, *, clip_len: int, skip: int, count: int) -> list[int]:
    """``count`` evenly spaced clip starts (the centre one when count is 1)."""
    last = last_valid_start(num_frames, clip_len=clip_len, skip=skip)
    if last < 0:
        raise StageDataError(f"a video of {num_frames} frames is shorter than one clip of {clip_len} at skip {skip}")
    if count == 1:
        return [last // 2]
    return sorted({int(round(x)) for x in np.linspace(0, last, count)})


class EvalClips(Dataset):
    """Fixed evaluation clips: ``clips_per_video`` evenly spaced clips of every video, centre crop.

    Items: {"clip": (C, T, h, w), "label", "video": video index}.
    """

    def __init__(self, source: VideoSource, transform: ClipEval, *, clip_len: int, skip: int, clips_per_video: int) -> None:
        self.source, self.transform, self.clip_len, self.skip = source, transform, clip_len, skip
        source.check_length(clip_footprint(clip_len=clip_len, skip=skip), why="one clip")
        self.index = [(i, s) for i, n in enumerate(source.num_frames)
                      for s in eval_clip_starts(n, clip_len=clip_len, skip=skip, count=clips_per_video)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i, start = self.index[k]
        clip = to_float_clip(self.source.clip(i, start, clip_len=self.clip_len, skip=self.skip))
        return {"clip": self.transform(clip), "label": self.source.videos[i].label, "video": i}


class ImageViews(Dataset):
    """Two augmented views of a privacy image, indexed by ``(image index, sample seed)``.

    Items: {"view1": (C, h, w), "view2": (C, h, w)} (+ "labels": (A,) float 0/1, the image's
    privacy attributes, with ``labels=True``). Evaluation uses fixed seeds, so the views are the
    same at every validation.
    """

    def __init__(self, source: ImageSource, transform: ClipTrain, *, labels: bool = False) -> None:
        self.source, self.transform, self.labels = source, transform, labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        i, seed = key
        _, g = _generators(seed)
        image = to_float_image(self.source.image(i))
        item = {"view1": self.transform(image, generator=g), "view2": self.transform(image, generator=g)}
        if self.labels:
            item["labels"] = torch.from_numpy(np.array(self.source.items[i].labels, dtype=np.float32))
        return item


class EvalImages(Dataset):
    """Privacy images under the evaluation crop: {"image": (C, h, w)}."""

    def __init__(self, source: ImageSource, transform: ClipEval) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(to_float_image(self.source.image(i)))}


class IdentityFrames(Dataset):
    """identity task: single frames of action videos and privacy images, each augmented.

    Index ``k < len(videos) * frames_per_video`` is a random frame of video
    ``k // frames_per_video``; the rest are the privacy images. Items: {"image": (C, h, w)}.
    """

    def __init__(self, videos: VideoSource, images: ImageSource, transform: ClipTrain, *, frames_per_video: int) -> None:
        self.videos, self.images, self.transform = videos, images, transform
        self.frames_per_video = frames_per_video
        self.n_frames = len(videos) * frames_per_video

    def __len__(self) -> int:
        return self.n_frames + len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        k, seed = key
        rng, g = _generators(seed)
        if k < self.n_frames:
            i = k // self.frames_per_video
            frame = self.videos.frames(i, [int(rng.integers(0, self.videos.num_frames[i]))])[0]
        else:
            frame = self.images.image(k - self.n_frames)
        return {"image": self.transform(to_float_image(frame), generator=g)}


class EvalFrames(Dataset):
    """identity validation: the middle frame of each validation video, then every val image."""

    def __init__(self, videos: VideoSource, images: ImageSource, transform: ClipEval) -> None:
        self.videos, self.images, self.transform = videos, images, transform

    def __len__(self) -> int:
        return len(self.videos) + len(self.images)

    def __getitem__(self, k: int) -> dict:
        if k < len(self.videos):
            frame = self.videos.frames(k, [self.videos.num_frames[k] // 2])[0]
        else:
            frame = self.images.image(k - len(self.videos))
        return {"image": self.transform(to_float_image(frame))}


def loader(dataset: Dataset, *, batches: list | None = None, batch_size: int | None = None, num_workers: int = 0) -> DataLoader:
    """A DataLoader over explicit batches (training) or over the dataset in order (evaluation)."""
    common = {"num_workers": num_workers, "worker_init_fn": seed_worker if num_workers else None}
    if batches is not None:
        return DataLoader(dataset, batch_sampler=batches, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, **common)


def train_transform(size: int, *, scale: Sequence[float], jitter_p: float, erase_p: float) -> ClipTrain:
    return ClipTrain(size, scale=(float(scale[0]), float(scale[1])), jitter_p=jitter_p, erase_p=erase_p)


def eval_transform(size: int, *, scale: float) -> ClipEval:
    return ClipEval(size, scale=scale)


def eval_view_keys(n: int, *, seed: int) -> list[tuple[int, int]]:
    """Fixed (index, sample seed) keys for the evaluation views of n images."""
    return [(i, sample_seed(seed, STREAM_EVAL_VIEWS, i)) for i in range(n)]
