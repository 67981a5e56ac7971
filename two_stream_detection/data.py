"""The detector's frames: decode, anonymize, sample, flow, bag of objects, cached once per video.

For one video (:func:`video_frames`): every frame is decoded (flow needs each frame's
predecessor), person boxes are blurred / blackened at the original resolution for the box
methods, frames are cut to ``data.input_size`` as the camera cuts them
(aux_code.latent_codes.frames_to_tensor), the anonymizer runs (``dpae``: the DP-AE round trip,
so the streams see what the server reconstructs), and then, at the sampled frames only, the
Farneback flow from the previous anonymized frame (frame 0: to frame 1) becomes a flow image
(aux_code.two_stream.flow_to_image) and the boxes a bag-of-objects vector.

Sampling (s.3.4.3, adaptive frame rate): training frames in hard-anomaly segments at
``abnormal_fps``, every other training frame at ``normal_fps``; validation and test frames every
``eval_stride`` frames. A cache entry ``<cache>/<video>-<key>.npz`` holds one video's sampled
frames; its key hashes everything that makes it (video file, anonymizer, geometry, flow, bag,
sampled indices), so a changed setting never reads a stale entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from einops import rearrange

from aux_code.checkpoint import atomic_write
from aux_code.datasets.ucf_crime2local import HARD, NORMAL
from aux_code.two_stream import farneback_flow, flow_to_image

__all__ = ["FrameSet", "FrameSpec", "sample_indices", "video_frames", "concat"]


@dataclass(frozen=True)
class FrameSpec:
    """Everything that decides a video's cached arrays except the video and its sampled indices."""

    frame_size: tuple[int, int]
    crop_scale: float
    flow_bound: float
    flow_params: dict = field(default_factory=dict)
    bag: str | None = "gt"  # gt | hog | None (no bag)
    bag_classes: int = 80
    anonymizer: dict = field(default_factory=lambda: {"method": "raw"})
    batch: int = 256


@dataclass
class FrameSet:
    """Sampled frames of several videos, concatenated along N.

    rgb (N, H, W, 3) uint8, flow (N, H, W, 3) uint8 (flow images), bag (N, B) float32 (B = 0
    without a bag), kind (N,) int8 (NORMAL / SOFT / HARD), video (N,) int64 index into ``names``,
    frame (N,) int64 frame number. Per video: ``names``, ``labels`` (video label), ``num_frames``
    and ``frame_labels`` (F_i,) 0/1 for evaluation (soft frames count as normal), ``stride`` the
    frames each sampled score stands for (eval sets).
    """

    rgb: np.ndarray
    flow: np.ndarray
    bag: np.ndarray
    kind: np.ndarray
    video: np.ndarray
    frame: np.ndarray
    names: list[str]
    labels: list[int]
    num_frames: list[int]
    frame_labels: list[np.ndarray]
    stride: int = 1

    def __len__(self) -> int:
        return int(self.kind.shape[0])


def sample_indices(kinds: np.ndarray, *, fps: float, normal_fps: float, abnormal_fps: float) -> np.ndarray:
    """Training frames of one video (kinds (F,) NORMAL / SOFT / HARD): every round(fps / abnormal_fps)-th
    frame of the hard segments, every round(fps / normal_fps)-th of the rest (int64, sorted)."""
    f = np.arange(kinds.size)
    hard_step = max(1, int(round(fps / abnormal_fps)))
    normal_step = max(1, int(round(fps / normal_fps)))
    hard = kinds == HARD
    return f[(hard & (f % hard_step == 0)) | (~hard & (f % normal_step == 0))].astype(np.int64)


def _cache_key(video: Path, indices: np.ndarray, spec: FrameSpec) -> str:
    st = video.stat()
    blob = json.dumps({"video": str(video.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                       "indices": hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest(),
                       "spec": {**spec.__dict__, "batch": None}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _decode(path: Path) -> np.ndarray:
    from aux_code.video import iter_frames

    frames = list(iter_frames(path))
    if len(frames) < 2:
        raise ValueError(f"{path}: {len(frames)} decoded frames; the flow stream needs at least 2")
    return np.stack(frames)


@torch.no_grad()
def _anonymized(frames: np.ndarray, spec: FrameSpec, anonymizer: Any | None, boxes: Sequence[np.ndarray] | None,
                device: torch.device) -> np.ndarray:
    """(T, H0, W0, 3) uint8 -> (T, h, w, 3) uint8 at spec.frame_size, through the anonymizer."""
    from aux_code.latent_codes import frames_to_tensor

    out = []
    for s in range(0, len(frames), spec.batch):
        chunk = frames[s : s + spec.batch]
        if anonymizer is not None and anonymizer.needs_boxes:
            x = rearrange(torch.from_numpy(np.ascontiguousarray(chunk)), "t h w c -> t c h w").float() / 255.0
            x = anonymizer.apply_boxes(x, list(boxes[s : s + spec.batch]))
            chunk = rearrange((x * 255.0).round().clamp(0, 255).to(torch.uint8), "t c h w -> t h w c").numpy()
        x = frames_to_tensor(chunk, size=spec.frame_size, crop_scale=spec.crop_scale).to(device)
        if anonymizer is not None:
            x = anonymizer.model(x).float().clamp(0.0, 1.0)
        out.append(rearrange((x * 255.0).round().to(torch.uint8), "t c h w -> t h w c").cpu().numpy())
    return np.concatenate(out)


def video_frames(path: Path, indices: np.ndarray, spec: FrameSpec, *, anonymizer: Any | None = None,
                 boxes: Sequence[np.ndarray] | None = None, detector: Any | None = None,
                 cache_dir: Path | None = None, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """One video's arrays at ``indices`` (K,): rgb (K, h, w, 3) uint8, flow (K, h, w, 3) uint8,
    bag (K, B) float32; read from / written to ``cache_dir`` when given.

    ``boxes``: the video's person boxes, one (n_i, 4) array per frame (ground truth), for the bag
    (spec.bag 'gt') and the box anonymizers; ``detector``: RGB uint8 image -> (n, 4) boxes for
    spec.bag 'hog'."""
    from aux_code.two_stream import bag_of_objects

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{path.stem}-{_cache_key(path, indices, spec)}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                return {k: z[k] for k in ("rgb", "flow", "bag")}
    frames = _decode(path)
    if indices.size and int(indices.max()) >= len(frames):
        raise ValueError(f"{path}: sampled frame {int(indices.max())} but the video decodes to {len(frames)} frames")
    anon = _anonymized(frames, spec, anonymizer, boxes, torch.device(device))
    params = {"pyr_scale": 0.5, "iterations": 3, "poly_n": 5, "poly_sigma": 1.1, **spec.flow_params}
    flow = np.zeros((indices.size, *anon.shape[1:]), np.uint8)
    for j, i in enumerate(indices.tolist()):
        # Frame 0 has no predecessor: it takes the motion towards frame 1.
        prev, nxt = (anon[i - 1], anon[i]) if i > 0 else (anon[0], anon[1])
        flow[j] = flow_to_image(farneback_flow(prev, nxt, **params), bound=spec.flow_bound)
    if spec.bag is None:
        bag = np.zeros((indices.size, 0), np.float32)
    else:
        person = 0  # COCO's person class, what YOLOv4 would count
        if spec.bag == "gt":
            if boxes is None:
                raise ValueError(f"{path}: the ground-truth bag of objects needs the video's person boxes")
            counts = [len(boxes[i]) for i in indices.tolist()]
        else:
            counts = [len(detector(frames[i])) for i in indices.tolist()]
        bag = np.stack([bag_of_objects([person] * c, num_classes=spec.bag_classes) for c in counts]) if counts else \
            np.zeros((0, spec.bag_classes), np.float32)
    arrays = {"rgb": np.ascontiguousarray(anon[indices]), "flow": flow, "bag": bag.astype(np.float32)}
    if cache is not None:
        atomic_write(cache, lambda f: np.savez(f, **arrays))
    return arrays


def concat(parts: Sequence[dict[str, np.ndarray]], kinds: Sequence[np.ndarray], frames: Sequence[np.ndarray], *,
           names: Sequence[str], labels: Sequence[int], num_frames: Sequence[int],
           frame_labels: Sequence[np.ndarray], stride: int = 1, size: tuple[int, int], bag_dim: int) -> FrameSet:
    """A FrameSet from per-video arrays (video_frames), sampled kinds (K_i,) and frame numbers (K_i,)."""
    h, w = size
    def cat(key: str, shape: tuple, dtype) -> np.ndarray:
        return np.concatenate([p[key] for p in parts]) if parts else np.zeros((0, *shape), dtype)
    return FrameSet(
        rgb=cat("rgb", (h, w, 3), np.uint8), flow=cat("flow", (h, w, 3), np.uint8), bag=cat("bag", (bag_dim,), np.float32),
        kind=np.concatenate(kinds).astype(np.int8) if kinds else np.zeros(0, np.int8),
        video=np.concatenate([np.full(len(k), i, np.int64) for i, k in enumerate(kinds)]) if kinds else np.zeros(0, np.int64),
        frame=np.concatenate(frames).astype(np.int64) if frames else np.zeros(0, np.int64),
        names=list(names), labels=[int(v) for v in labels], num_frames=[int(n) for n in num_frames],
        frame_labels=[np.asarray(y, np.int8) for y in frame_labels], stride=stride,
    )


def eval_kinds(frame_labels: np.ndarray) -> np.ndarray:
    """Evaluation frames' kinds from 0/1 labels: HARD where abnormal, NORMAL elsewhere."""
    return np.where(np.asarray(frame_labels) > 0, HARD, NORMAL).astype(np.int8)
