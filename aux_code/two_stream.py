"""Pieces of the DP-AE paper's two-stream frame detector (Giorgi et al., JoWUA 2022, s.3.4, 4.3).

- :func:`farneback_flow` / :func:`flow_stream`: dense optical flow of consecutive
  (reconstructed) frames with OpenCV's Farneback method, and :func:`flow_to_image`, the
  3-channel uint8 image of a flow field that the flow stream's ImageNet ResNet-50 takes;
- :func:`bag_of_objects`: the contextual vector, per-class counts of the object detector's
  boxes in a frame (80 COCO classes for YOLOv4);
- :func:`hard_examples`, :func:`candidate_batches`, :func:`mine_hard_batch`: hard sample
  mining: draw alpha*K candidates without replacement, score them with the current model,
  train on the K with the highest loss (an epoch then trains on 1/alpha of the samples);
- :class:`TwoStreamHead`: the joint-fusion classifier, [RGB GAP feature, flow GAP feature,
  bag of objects] -> two FC layers (4096, ReLU, dropout 0.5) -> one sigmoid unit;
  :func:`weighted_bce` with the paper's class weights (normal 1, anomaly 2).

The sigmoidal anomaly score and the video-level F1 are in aux_code.metrics
(``sigmoidal_anomaly_score``, ``video_level_f1``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "COCO_CLASSES",
    "FARNEBACK_DEFAULTS",
    "farneback_flow",
    "flow_stream",
    "flow_to_image",
    "bag_of_objects",
    "hard_examples",
    "candidate_batches",
    "mine_hard_batch",
    "TwoStreamHead",
    "weighted_bce",
]

COCO_CLASSES = 80

# OpenCV's documented example values for dense flow (pyramid 0.5, 3 levels, window 15, ...).
FARNEBACK_DEFAULTS: dict[str, Any] = {
    "pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2, "flags": 0,
}


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    if frame.ndim == 2:
        return frame if frame.dtype == np.uint8 else np.clip(frame * 255.0, 0, 255).astype(np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"optical flow: expected an RGB (H, W, 3) or grey (H, W) frame, got {frame.shape}")
    if frame.dtype != np.uint8:
        frame = np.clip(frame * 255.0, 0, 255).astype(np.uint8)  # float frames in [0, 1]
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def farneback_flow(prev: np.ndarray, nxt: np.ndarray, **params: Any) -> np.ndarray:
    """Dense flow (H, W, 2) float32 in pixels (dx, dy) from ``prev`` to ``nxt`` (RGB uint8 or [0, 1] float)."""
    import cv2

    a, b = _gray(prev), _gray(nxt)
    if a.shape != b.shape:
        raise ValueError(f"optical flow: frames differ in size, {a.shape} vs {b.shape}")
    p = {**FARNEBACK_DEFAULTS, **params}
    return cv2.calcOpticalFlowFarneback(a, b, None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"],
                                        p["poly_n"], p["poly_sigma"], p["flags"])


def flow_stream(frames: np.ndarray | Sequence[np.ndarray], **params: Any) -> np.ndarray:
    """Flow of each consecutive pair: (T, H, W, 3) frames -> (T-1, H, W, 2) float32."""
    if len(frames) < 2:
        raise ValueError(f"optical flow needs at least two frames, got {len(frames)}")
    return np.stack([farneback_flow(frames[i], frames[i + 1], **params) for i in range(len(frames) - 1)])


def flow_to_image(flow: np.ndarray, *, bound: float = 20.0) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8: dx and dy clipped to [-bound, bound] mapped to [0, 255]
    (128 is no motion), and the magnitude clipped to [0, bound] mapped to [0, 255]."""
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_image: expected (H, W, 2), got {flow.shape}")
    if not bound > 0:
        raise ValueError(f"flow_to_image: bound must be > 0, got {bound}")
    xy = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    mag = np.clip(np.linalg.norm(flow, axis=-1, keepdims=True), 0, bound) * (255.0 / bound)
    return np.round(np.concatenate([xy, mag], axis=-1)).astype(np.uint8)


def bag_of_objects(
    class_ids: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
    *,
    num_classes: int = COCO_CLASSES,
    min_score: float = 0.0,
) -> np.ndarray:
    """(num_classes,) float32 counts of the boxes of one frame per class, keeping boxes whose
    detector score is >= ``min_score`` (all boxes when ``scores`` is None)."""
    ids = np.asarray(class_ids, dtype=np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(f"bag_of_objects: class ids must be in [0, {num_classes}), got {sorted(set(ids.tolist()))}")
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64).ravel()
        if s.size != ids.size:
            raise ValueError(f"bag_of_objects: {ids.size} class ids but {s.size} scores")
        ids = ids[s >= min_score]
    return np.bincount(ids, minlength=num_classes).astype(np.float32)


def hard_examples(losses: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest per-sample ``losses`` (highest first; ties to the lower index)."""
    if losses.ndim != 1:
        raise ValueError(f"hard_examples: expected per-sample losses (N,), got {tuple(losses.shape)}")
    if not 0 < k <= losses.numel():
        raise ValueError(f"hard_examples: k must be in [1, {losses.numel()}], got {k}")
    # A stable sort makes the choice among equal losses deterministic.
    order = torch.sort(losses.detach(), descending=True, stable=True).indices
    return order[:k]


def candidate_batches(n: int, k: int, alpha: int, *, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """One epoch of candidate index sets: a permutation of range(n) cut into alpha*K chunks
    (sampling without replacement); the last, short chunk is kept if it has at least K."""
    if k <= 0 or alpha < 1:
        raise ValueError(f"candidate_batches: need k >= 1 and alpha >= 1, got k={k}, alpha={alpha}")
    perm = torch.randperm(n, generator=generator)
    size = alpha * k
    for start in range(0, n, size):
        chunk = perm[start : start + size]
        if chunk.numel() >= k:
            yield chunk


def mine_hard_batch(per_sample_loss: Callable[[Any], torch.Tensor], candidates: Any, k: int,
                    *, model: nn.Module | None = None) -> tuple[torch.Tensor, Any]:
    """Score ``candidates`` without gradients (in eval mode when ``model`` is given) and return
    (indices, the K hardest candidates). ``candidates`` is a tensor or a tuple/list of tensors
    sharing the first dimension; ``per_sample_loss(candidates) -> (N,)``."""
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        with torch.no_grad():
            losses = per_sample_loss(candidates)
    finally:
        if model is not None:
            model.train(was_training)
    idx = hard_examples(losses, k)
    if isinstance(candidates, torch.Tensor):
        return idx, candidates[idx.to(candidates.device)]
    return idx, type(candidates)(c[idx.to(c.device)] for c in candidates)


class TwoStreamHead(nn.Module):
    """Joint fusion: cat(rgb (N, Dr), flow (N, Df) or None, bag (N, Db) or None) -> anomaly probability (N,).

    Two fully connected layers of ``hidden`` units with ReLU and dropout, then one sigmoid
    unit (the paper: 4096, dropout 0.5). ``flow_dim=0`` is the one-stream (1S) variant and
    ``bag_dim=0`` the no-bag variant.
    """

    def __init__(self, *, rgb_dim: int = 2048, flow_dim: int = 2048, bag_dim: int = COCO_CLASSES,
                 hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.dims = (rgb_dim, flow_dim, bag_dim)
        self.mlp = nn.Sequential(
            nn.Linear(rgb_dim + flow_dim + bag_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def logits(self, rgb: torch.Tensor, flow: torch.Tensor | None = None, bag: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        for name, x, dim in (("rgb", rgb, self.dims[0]), ("flow", flow, self.dims[1]), ("bag", bag, self.dims[2])):
            if dim == 0:
                if x is not None:
                    raise ValueError(f"TwoStreamHead: built without a {name} input, but one was given")
                continue
            if x is None or x.ndim != 2 or x.shape[1] != dim:
                raise ValueError(f"TwoStreamHead: {name} must be (N, {dim}), got {None if x is None else tuple(x.shape)}")
            parts.append(x)
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor | None = None, bag: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(rgb, flow, bag))


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, *, normal_weight: float = 1.0,
                 anomaly_weight: float = 2.0, reduction: str = "none") -> torch.Tensor:
    """Binary cross-entropy on logits with per-class weights (the paper: normal 1, anomaly 2)."""
    y = labels.float()
    w = torch.where(y > 0.5, torch.full_like(y, anomaly_weight), torch.full_like(y, normal_weight))
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, weight=w, reduction="none")
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"weighted_bce: reduction must be 'none' or 'mean', got {reduction!r}")
