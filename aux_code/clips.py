"""Clip index arithmetic: which raw frames a clip reads, and where clips start.

Pure integer logic with no decoding, so the PyAV path (aux_code/video.py), the DALI path of
feature extraction and the anomaly stage's ground truth all index frames the same way.

Vocabulary (paper convention: clip_len 16, skip 2):

- a clip reads ``clip_len`` frames ``start, start + skip, ..., start + (clip_len - 1) * skip``;
- its *footprint* is the frames from the first to the last one it reads,
  ``(clip_len - 1) * skip + 1`` = 31 frames: a clip can be decoded when its footprint fits;
- its *span* is ``clip_len * skip`` = 32 frames: the raw frames the clip stands for. Extraction
  clips tile the video with spans, so clip ``i`` covers frames ``[32 i, 32 i + 32)``.
"""

from __future__ import annotations

import numpy as np


def _check_clip_args(*, clip_len: int, skip: int) -> None:
    if clip_len < 1 or skip < 1:
        raise ValueError(f"clip_len and skip must be >= 1, got clip_len={clip_len}, skip={skip}")


def _check_num_frames(num_frames: int) -> None:
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")


def clip_span(*, clip_len: int = 16, skip: int = 2) -> int:
    """Raw frames one clip stands for: ``clip_len * skip`` (32 for the paper's clips)."""
    _check_clip_args(clip_len=clip_len, skip=skip)
    return clip_len * skip


def clip_footprint(*, clip_len: int = 16, skip: int = 2) -> int:
    """Raw frames from a clip's first read frame to its last: ``(clip_len - 1) * skip + 1`` (31)."""
    _check_clip_args(clip_len=clip_len, skip=skip)
    return (clip_len - 1) * skip + 1


def clip_frame_indices(start: int, *, clip_len: int = 16, skip: int = 2) -> list[int]:
    """The raw frame indices a clip starting at ``start`` reads, ascending, length ``clip_len``."""
    _check_clip_args(clip_len=clip_len, skip=skip)
    if start < 0:
        raise ValueError(f"clip start must be >= 0, got {start}")
    return list(range(start, start + clip_len * skip, skip))


def extraction_starts(num_frames: int, *, clip_len: int = 16, skip: int = 2) -> list[int]:
    """Starts of the non-overlapping feature-extraction clips of a ``num_frames``-frame video.

    Rule: clips start at 0, span, 2 span, ... (span = clip_len * skip = 32) and a clip is kept
    only when its whole span lies inside the video, so there are
    ``S = num_frames // span`` clips and they cover frames ``[0, S * span)`` exactly. The
    ``num_frames % span`` frames after the last full span are not covered by any clip (and
    get no score); the anomaly stage builds frame ground truth over exactly these ``S * span``
    frames (see :func:`covered_frames`). A video shorter than one span gives no clip.

    This differs from NVIDIA DALI's video reader by one clip when
    ``num_frames % span == span - 1`` (e.g. 31 or 63 frames at span 32): DALI only needs the
    footprint (31 frames) to fit, so it keeps a last clip whose span overhangs the video by
    one frame; this rule drops that clip. :func:`dali_starts` reproduces DALI's rule, and on
    the common prefix both give the same starts.
    """
    _check_num_frames(num_frames)
    span = clip_span(clip_len=clip_len, skip=skip)
    return list(range(0, (num_frames // span) * span, span))


def covered_frames(num_frames: int, *, clip_len: int = 16, skip: int = 2) -> int:
    """Frames covered by the extraction clips: ``(num_frames // span) * span`` (see extraction_starts)."""
    _check_num_frames(num_frames)
    span = clip_span(clip_len=clip_len, skip=skip)
    return (num_frames // span) * span


def dali_starts(num_frames: int, *, clip_len: int = 16, skip: int = 2, step: int | None = None) -> list[int]:
    """Sequence starts NVIDIA DALI's ``readers.video`` yields for one file.

    DALI (sequence_length=clip_len, stride=skip, step) keeps a start ``s`` when
    ``s + (clip_len - 1) * skip + 1 <= num_frames``, i.e. ``range(0, num_frames -
    (clip_len - 1) * skip, step)``; its default step is ``clip_len * skip``. With the default
    step this equals :func:`extraction_starts` plus one extra clip when
    ``num_frames % span == span - 1``.

    That is the documented rule; DALI 2.4's ``fn.experimental.readers.video`` on CPU was
    measured to stop at :func:`extraction_starts` instead (63 frames give one clip, not two).
    The extraction stage accepts either and keeps only :func:`extraction_starts`, so both
    decoders give the same clips whichever rule a DALI version follows.
    """
    _check_num_frames(num_frames)
    _check_clip_args(clip_len=clip_len, skip=skip)
    step = clip_len * skip if step is None else step
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    return list(range(0, max(num_frames - (clip_len - 1) * skip, 0), step))


def last_valid_start(num_frames: int, *, clip_len: int = 16, skip: int = 2) -> int:
    """Largest start whose footprint fits in the video; -1 when no clip fits at all."""
    _check_num_frames(num_frames)
    return num_frames - clip_footprint(clip_len=clip_len, skip=skip)


def random_clip_start(num_frames: int, *, clip_len: int = 16, skip: int = 2, rng: np.random.Generator) -> int:
    """A training clip start drawn uniformly from every start whose footprint fits.

    Training clips need only their footprint inside the video (a 31-frame video gives one
    clip at 16 x 2), unlike extraction clips, which need their whole span.
    """
    last = last_valid_start(num_frames, clip_len=clip_len, skip=skip)
    if last < 0:
        raise ValueError(
            f"a video of {num_frames} frames is too short for a clip of {clip_len} frames at skip {skip}: "
            f"needs at least {clip_footprint(clip_len=clip_len, skip=skip)} frames"
        )
    return int(rng.integers(0, last + 1))


def _anchor_with_partner(*, last: int, gap: int, rng: np.random.Generator) -> int:
    """Uniform draw over the starts in [0, last] that have a partner at least ``gap`` away.

    Those are [0, last - gap] (partner above) and [gap, last] (partner below); the middle
    (last - gap, gap) has none when ``last < 2 gap - 1``. Needs ``last >= gap``.
    """
    n_side = last - gap + 1
    if gap <= n_side:  # the two ranges touch or overlap: every start qualifies
        return int(rng.integers(0, last + 1))
    k = int(rng.integers(0, 2 * n_side))
    return k if k < n_side else gap + (k - n_side)


def sample_triplet_starts(
    num_frames: int,
    *,
    clip_len: int = 16,
    skip: int = 2,
    rng: np.random.Generator,
    min_gap: int | None = None,
    distance: int | None = None,
) -> tuple[int, int]:
    """Anchor start ``t`` and negative start ``t'`` for the temporal-distinctive triplet loss.

    Both are starts whose footprint fits in the video, and ``t' != t`` always.

    - Random distance (``distance=None``, the paper's default): ``t`` is uniform over the
      starts that have at least one partner at ``|t' - t| >= min_gap``, then ``t'`` is uniform
      over those partners. ``min_gap`` defaults to the clip span (``clip_len * skip``), so the
      two clips never share a frame.
    - Fixed distance ``d`` (Table 5 uses 8 and 32): ``|t' - t| == d``; ``t`` is uniform over
      the starts with a partner at distance ``d``, and when both ``t - d`` and ``t + d`` fit
      the direction is a fair coin.

    Raises ValueError naming ``num_frames`` and the frames needed when no valid pair exists.
    """
    if min_gap is not None and distance is not None:
        raise ValueError("give either min_gap (random distance) or distance (fixed distance), not both")
    last = last_valid_start(num_frames, clip_len=clip_len, skip=skip)
    footprint = clip_footprint(clip_len=clip_len, skip=skip)

    if distance is not None:
        if distance < 1:
            raise ValueError(f"triplet distance must be >= 1 frame, got {distance}")
        if last < distance:
            raise ValueError(
                f"a video of {num_frames} frames has no two clips ({clip_len} frames at skip {skip}) "
                f"exactly {distance} frames apart: needs at least {footprint + distance} frames"
            )
        t = _anchor_with_partner(last=last, gap=distance, rng=rng)
        down_ok, up_ok = t - distance >= 0, t + distance <= last
        go_up = bool(rng.integers(0, 2)) if (down_ok and up_ok) else up_ok
        return t, t + distance if go_up else t - distance

    gap = clip_span(clip_len=clip_len, skip=skip) if min_gap is None else min_gap
    if gap < 1:
        raise ValueError(f"triplet min_gap must be >= 1 frame so that t' != t, got {gap}")
    if last < gap:
        raise ValueError(
            f"a video of {num_frames} frames has no two clips ({clip_len} frames at skip {skip}) "
            f"at least {gap} frames apart: needs at least {footprint + gap} frames"
        )
    t = _anchor_with_partner(last=last, gap=gap, rng=rng)
    below = max(t - gap + 1, 0)  # partners in [0, t - gap]
    above = max(last - (t + gap) + 1, 0)  # partners in [t + gap, last]
    k = int(rng.integers(0, below + above))
    t_neg = k if k < below else t + gap + (k - below)
    return t, t_neg
