"""Privacy images: decode, person boxes, crop/resize, frozen fA, and the cache of the result.

The anonymizer is frozen during privacy evaluation, so its output on every image is fixed:
it is computed once per (anonymizer, resolution, split content) and stored as uint8 tensors
(the form a saved image has; the rounding is at most 1/510 per pixel). Training epochs and
reruns then read the tensors and never run fA (or the person detector) again.

Order of operations per image, as in feature extraction (aux_code.anonymizers contract):

1. decode to RGB uint8 (H, W, 3); an image that fails to decode is reported and skipped;
2. box methods: ``fa.apply_boxes`` at the ORIGINAL resolution; blur / blacken with the
   dataset's ground-truth person boxes (synthetic world) or the HOG detector's, face_blur /
   face_blacken with the Haar cascade's face boxes. Per split the images that got no box at
   all are counted (:class:`BoxCounts`): an image without a box goes through unchanged;
3. centre crop (``crop_scale`` of the short side) and resize to ``resolution``;
4. ``fa.model`` (UNet, down-then-up sampling, or identity) at model resolution.

The test split also keeps step 3 without steps 2 and 4 (the "original") for the image-level
leakage metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from aux_code.checkpoint import atomic_write
from aux_code.datasets.common import ImageItem
from aux_code.datasets.vispr import VISPR
from aux_code.transforms import ClipEval, to_float_image

# Bump when what a cache file holds or how it is computed changes (2: box counts per split).
CACHE_VERSION = 2
SPLITS = ("train", "val", "test")


class PrivacyDataError(ValueError):
    """A privacy split that cannot be used (empty, too many undecodable images, bad cache)."""


class ImageDecodeError(ValueError):
    """One image file that could not be decoded."""


def decode_image(path: Path) -> np.ndarray:
    """An image file -> RGB uint8 (H, W, 3). Raises ImageDecodeError naming the file."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types for truncated/foreign files; keep the cause in the message
        raise ImageDecodeError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageDecodeError(f"{path}: decoded to shape {rgb.shape}; expected (H, W, 3)")
    return rgb


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> uint8 with rounding (values outside [0, 1] are clipped)."""
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]."""
    return x.float().div_(255.0)


@dataclass
class BoxCounts:
    """Boxes a box method edited in one split: images seen, images without any box, boxes in all."""

    images: int = 0
    without_box: int = 0
    boxes: int = 0

    def add(self, n_boxes: int) -> None:
        self.images += 1
        self.without_box += int(n_boxes == 0)
        self.boxes += int(n_boxes)

    def to_dict(self) -> dict:
        return {"images": self.images, "without_box": self.without_box, "boxes": self.boxes}


@dataclass
class PreparedSplit:
    """One split at model resolution.

    images: uint8 (N, 3, R, R) after fA; labels: float32 (N, A); ids: N image ids;
    originals: uint8 (N, 3, R, R) before fA (test split only, else None);
    failures: (image id, message) of images that failed to decode and were skipped;
    box_counts: for box methods, how many images got no box (None for other methods).
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    originals: torch.Tensor | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    box_counts: BoxCounts | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def to_record(self) -> dict:
        rec = {"images": self.images, "labels": self.labels, "ids": list(self.ids), "failures": [list(f) for f in self.failures]}
        if self.originals is not None:
            rec["originals"] = self.originals
        if self.box_counts is not None:
            rec["box_counts"] = self.box_counts.to_dict()
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "PreparedSplit":
        counts = rec.get("box_counts")
        return cls(
            images=rec["images"], labels=rec["labels"], ids=list(rec["ids"]), originals=rec.get("originals"),
            failures=[tuple(f) for f in rec["failures"]],  # type: ignore[misc]
            box_counts=None if counts is None else BoxCounts(**counts),
        )


def boxes_for(fa: Any, dataset: VISPR, item: ImageItem, image: np.ndarray) -> np.ndarray:
    """int32 (n, 4) boxes x0, y0, x1, y1 for a box method: the dataset's ground truth or the detector's."""
    if fa.box_source == "gt":
        return dataset.person_boxes(item)
    if fa.box_source in ("hog", "haar"):
        return np.asarray(fa.detect(image), dtype=np.int32).reshape(-1, 4)
    raise PrivacyDataError(f"anonymizer {fa.describe()} needs boxes but names no box source (expected 'gt', 'hog' or 'haar')")


@torch.inference_mode()
def anonymize_frames(model: torch.nn.Module, frames: torch.Tensor, *, batch: int, device: torch.device) -> torch.Tensor:
    """fa.model over (N, C, R, R) float frames in chunks of ``batch`` -> uint8 (N, C, R, R) on the CPU."""
    out = [to_uint8(model(chunk.to(device)).float()).cpu() for chunk in frames.split(batch)]
    return torch.cat(out) if out else torch.empty((0, *frames.shape[1:]), dtype=torch.uint8)


def prepare_split(
    items: Sequence[ImageItem],
    *,
    dataset: VISPR,
    fa: Any,
    resolution: int,
    crop_scale: float,
    device: torch.device,
    batch: int = 64,
    keep_originals: bool = False,
    split: str = "split",
    max_failure_fraction: float = 0.05,
) -> PreparedSplit:
    """Decode, box-anonymize, crop/resize and run fa.model over ``items`` (see module docstring)."""
    if not items:
        raise PrivacyDataError(f"VISPR {split} split is empty ({dataset.root}); nothing to evaluate")
    crop = ClipEval(resolution, scale=crop_scale)
    anonymized_frames: list[torch.Tensor] = []
    originals: list[torch.Tensor] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    failures: list[tuple[str, str]] = []
    images_out: list[torch.Tensor] = []
    box_counts = BoxCounts() if fa.needs_boxes else None
    for item in items:
        try:
            image = decode_image(item.path)
        except ImageDecodeError as e:
            failures.append((item.image_id, str(e)))
            continue
        frame = to_float_image(image)  # (C, H, W)
        original = crop(frame)
        if fa.needs_boxes:
            boxes = boxes_for(fa, dataset, item, image)
            box_counts.add(len(boxes))
            frame = fa.apply_boxes(frame[None], [boxes])[0]
            anonymized_frames.append(crop(frame))
        else:
            anonymized_frames.append(original)
        if keep_originals:
            originals.append(to_uint8(original))
        labels.append(item.labels)
        ids.append(item.image_id)
        # Bounded memory: run fA every `batch` images rather than holding every float frame.
        if len(anonymized_frames) == batch:
            images_out.append(anonymize_frames(fa.model, torch.stack(anonymized_frames), batch=batch, device=device))
            anonymized_frames = []
    if anonymized_frames:
        images_out.append(anonymize_frames(fa.model, torch.stack(anonymized_frames), batch=batch, device=device))
    if len(failures) > max_failure_fraction * len(items) or not ids:
        shown = "\n  ".join(msg for _, msg in failures[:5])
        raise PrivacyDataError(
            f"VISPR {split} split: {len(failures)} of {len(items)} images failed to decode (allowed: "
            f"{max_failure_fraction:.0%}, data.max_decode_failures); first failures:\n  {shown}"
        )
    return PreparedSplit(
        images=torch.cat(images_out),
        labels=torch.from_numpy(np.stack(labels).astype(np.float32)),
        ids=ids,
        originals=torch.stack(originals) if keep_originals else None,
        failures=failures,
        box_counts=box_counts,
    )


def split_fingerprint(items: Sequence[ImageItem]) -> str:
    """Hash of a split's content: image ids, labels, file sizes and modification times.

    Size + mtime (not the pixels) keep the check cheap on 18,000 images while still
    noticing a regenerated or replaced image; the labels and the id set catch a changed
    label file or validation carve-out.
    """
    h = hashlib.sha256()
    for item in items:
        st = item.path.stat()
        h.update(f"{item.image_id}|{item.path.name}|{st.st_size}|{st.st_mtime_ns}|".encode())
        h.update(np.asarray(item.labels, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def cache_key(describe: dict, *, resolution: int, crop_scale: float, fingerprints: dict[str, str]) -> tuple[str, dict]:
    """(short key, the plain data it hashes): anonymizer description, resolution, crop, split content."""
    data = {
        "version": CACHE_VERSION,
        "anonymizer": describe,
        "resolution": resolution,
        "crop_scale": crop_scale,
        "splits": fingerprints,
    }
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20], data


@dataclass
class PrivacyData:
    """The three splits at model resolution plus where they came from."""

    splits: dict[str, PreparedSplit]
    key: str
    key_data: dict
    cache_path: Path | None
    cache_hit: bool
    prepare_time_s: float
    label_problems: list[str]

    def failures(self) -> dict[str, list[tuple[str, str]]]:
        return {name: s.failures for name, s in self.splits.items()}

    def counts(self) -> dict[str, int]:
        out = {name: len(s) for name, s in self.splits.items()}
        out.update({f"{name}_decode_failures": len(s.failures) for name, s in self.splits.items()})
        out["label_problems"] = len(self.label_problems)
        return out

    def box_counts(self) -> dict | None:
        """Per split {images, without_box, boxes} and their totals, for box methods; None otherwise."""
        per = {name: s.box_counts for name, s in self.splits.items()}
        if any(c is None for c in per.values()):
            return None
        total = BoxCounts(*(sum(getattr(c, f) for c in per.values()) for f in ("images", "without_box", "boxes")))
        return {**{name: c.to_dict() for name, c in per.items()}, "total": total.to_dict()}


def load_privacy_data(
    dataset: VISPR,
    fa: Any,
    *,
    resolution: int,
    crop_scale: float,
    device: torch.device,
    batch: int,
    cache_dir: Path | None,
    max_failure_fraction: float,
    log=print,
) -> PrivacyData:
    """The anonymized train/val/test images, from the cache when its key matches, else built (and cached)."""
    items = {name: dataset.items(name) for name in SPLITS}
    for name, split_items in items.items():
        if not split_items:
            raise PrivacyDataError(f"VISPR {name} split is empty under {dataset.root} (val_fraction={dataset.val_fraction})")
    ids = {name: {it.image_id for it in split_items} for name, split_items in items.items()}
    overlap = (ids["val"] | ids["train"]) & ids["test"]
    if overlap:
        raise PrivacyDataError(f"VISPR: {len(overlap)} image id(s) are in both train/val and test, e.g. {sorted(overlap)[:3]}")
    fingerprints = {name: split_fingerprint(split_items) for name, split_items in items.items()}
    key, key_data = cache_key(fa.describe(), resolution=resolution, crop_scale=crop_scale, fingerprints=fingerprints)
    path = cache_dir / f"{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        t0 = time.perf_counter()
        try:
            rec = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: rebuild rather than fail
            log(f"[privacy] cache {path} unreadable ({type(e).__name__}: {e}); rebuilding it")
            rec = None
        if rec is not None and rec.get("key_data") == json.loads(json.dumps(key_data, default=str)):
            splits = {name: PreparedSplit.from_record(rec["splits"][name]) for name in SPLITS}
            log(f"[privacy] cache hit {path} ({time.perf_counter() - t0:.2f} s)")
            return PrivacyData(splits, key, key_data, path, True, time.perf_counter() - t0, list(dataset.problems))
    t0 = time.perf_counter()
    splits = {
        name: prepare_split(
            items[name], dataset=dataset, fa=fa, resolution=resolution, crop_scale=crop_scale, device=device,
            batch=batch, keep_originals=(name == "test"), split=name, max_failure_fraction=max_failure_fraction,
        )
        for name in SPLITS
    }
    elapsed = time.perf_counter() - t0
    if path is not None:
        rec = {
            "version": CACHE_VERSION,
            "key": key,
            "key_data": json.loads(json.dumps(key_data, default=str)),
            "splits": {name: s.to_record() for name, s in splits.items()},
            "build_time_s": elapsed,
        }
        atomic_write(path, lambda f: torch.save(rec, f))
        log(f"[privacy] anonymized {sum(len(s) for s in splits.values())} images in {elapsed:.2f} s; cached in {path}")
    return PrivacyData(splits, key, key_data, path, False, elapsed, list(dataset.problems))
