"""Clip features <-> MGFN segments <-> per-frame scores and ground truth.

Indexing contract shared by the feature extractor, the anomaly trainer and the evaluator:
a video of F decoded frames gives S = F // clip_span non-overlapping clips (16 frames at
skip rate 2, so clip_span = 32 raw frames); clip s covers raw frames
[s * clip_span, (s + 1) * clip_span). The trailing F mod clip_span frames belong to no clip
and are not scored, so the per-frame prediction and the ground truth both have exactly
S * clip_span entries. Lengths are checked, never resampled
(REFERENCE.md section 7, "silent resampling").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

DEFAULT_NUM_SEGMENTS = 32
DEFAULT_CLIP_SPAN = 32


class LengthMismatchError(ValueError):
    """Per-frame predictions and ground truth of one video have different lengths."""


def segment_boundaries(num_clips: int, num_segments: int = DEFAULT_NUM_SEGMENTS) -> np.ndarray:
    """Integer boundaries r (num_segments + 1,) of the MGFN/RTFM resampling.

    Computed as the float ``np.linspace(0, T, n + 1)`` truncated to integers, the same
    arithmetic the public MGFN/RTFM ``process_feat`` uses, so that segment features match
    theirs bit for bit (an exact integer formula would differ where the float product
    lands just below an integer).
    """
    if num_clips < 1:
        raise ValueError(f"segment_boundaries: need at least one clip, got num_clips={num_clips}")
    if num_segments < 1:
        raise ValueError(f"segment_boundaries: num_segments must be >= 1, got {num_segments}")
    return np.linspace(0, num_clips, num_segments + 1).astype(np.int64)


def process_feat(feat: np.ndarray, num_segments: int = DEFAULT_NUM_SEGMENTS) -> np.ndarray:
    """Resample clip features (T, *F) to (num_segments, *F), float32.

    Segment i is the mean of ``feat[r[i]:r[i+1]]``; when that slice is empty (T < num_segments)
    it is ``feat[r[i]]``, so short videos repeat clips rather than pad with zeros.
    Trailing dims are kept, so (T, D) and (T, ncrops, D) both work.
    """
    feat = np.asarray(feat)
    if feat.ndim < 2:
        raise ValueError(f"process_feat: expected features shaped (T, D), got shape {feat.shape}")
    num_clips = feat.shape[0]
    if num_clips == 0:
        raise ValueError("process_feat: the video has no clips (T = 0); nothing to resample")
    r = segment_boundaries(num_clips, num_segments)
    out = np.empty((num_segments, *feat.shape[1:]), dtype=np.float32)
    for i in range(num_segments):
        lo, hi = int(r[i]), int(r[i + 1])
        # lo = floor(i * T / n) < T for every i < n, so feat[lo] always exists.
        out[i] = feat[lo:hi].mean(axis=0) if hi > lo else feat[lo]
    return out


def append_magnitude(features: ArrayOrTensor) -> ArrayOrTensor:
    """Append the L2 norm of each feature vector as one extra last channel.

    (..., D) -> (..., D + 1); numpy arrays and torch tensors both work, the type is kept.
    MGFN feeds this channel to its magnitude branch (REFERENCE.md section 2).
    """
    if isinstance(features, torch.Tensor):
        norm = torch.linalg.vector_norm(features, ord=2, dim=-1, keepdim=True)
        return torch.cat([features, norm], dim=-1)
    arr = np.asarray(features)
    if arr.ndim < 1 or arr.shape[-1] == 0:
        raise ValueError(f"append_magnitude: expected features shaped (..., D) with D > 0, got {arr.shape}")
    norm = np.linalg.norm(arr, ord=2, axis=-1, keepdims=True).astype(arr.dtype, copy=False)
    return np.concatenate([arr, norm], axis=-1)


def expand_clip_scores(scores: np.ndarray | Sequence[float], *, clip_span: int = DEFAULT_CLIP_SPAN) -> np.ndarray:
    """Per-clip scores (S,) -> per-frame scores (S * clip_span,).

    Each clip's score is repeated over the clip_span raw frames it covers.
    """
    if clip_span < 1:
        raise ValueError(f"expand_clip_scores: clip_span must be >= 1, got {clip_span}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"expand_clip_scores: expected one score per clip, shape (S,), got {scores.shape}")
    return np.repeat(scores, clip_span)


def frame_ground_truth(
    intervals: Iterable[tuple[int, int]],
    num_covered_frames: int,
    *,
    end_inclusive: bool = False,
) -> np.ndarray:
    """Binary per-frame labels (num_covered_frames,) from anomalous frame intervals.

    intervals: (start, end) pairs of 0-based raw-frame indices, half-open by default
    (frame f is abnormal when start <= f < end), the convention the dataset adapters
    (aux_code.datasets) parse every annotation file into; end_inclusive=True reads raw
    UCF-Crime-style pairs whose end frame is abnormal too. Pairs with start == -1 are
    absent events (the annotation file's placeholder) and are skipped. Frames past
    num_covered_frames are the unscored tail of the video (see the module docstring),
    so intervals are clipped to it rather than rejected.
    """
    if num_covered_frames < 0:
        raise ValueError(f"frame_ground_truth: num_covered_frames must be >= 0, got {num_covered_frames}")
    gt = np.zeros(num_covered_frames, dtype=np.int64)
    for pair in intervals:
        start, end = (int(v) for v in pair)
        if start == -1:
            continue
        if start < 0 or end < start:
            raise ValueError(
                f"frame_ground_truth: interval ({start}, {end}) is invalid; expected 0 <= start <= end"
            )
        stop = end + 1 if end_inclusive else end
        gt[min(start, num_covered_frames) : min(stop, num_covered_frames)] = 1
    return gt


def check_equal_length(video_name: str, n_pred: int, n_gt: int) -> None:
    """Raise LengthMismatchError naming the video when prediction and ground truth differ."""
    if int(n_pred) != int(n_gt):
        raise LengthMismatchError(
            f"video {video_name!r}: {n_pred} per-frame predictions but {n_gt} ground-truth frames; "
            "expected equal lengths (features and ground truth must come from the same clip indexing; "
            "predictions are never resampled to fit)"
        )
