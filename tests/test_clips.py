"""Clip index arithmetic: extraction starts, DALI parity rule, training and triplet sampling."""

from __future__ import annotations

import numpy as np
import pytest

from aux_code.clips import (
    clip_footprint,
    clip_frame_indices,
    clip_span,
    covered_frames,
    dali_starts,
    extraction_starts,
    last_valid_start,
    random_clip_start,
    sample_triplet_starts,
)


def test_span_and_footprint_paper_convention():
    assert clip_span(clip_len=16, skip=2) == 32
    assert clip_footprint(clip_len=16, skip=2) == 31
    assert clip_frame_indices(32, clip_len=16, skip=2) == list(range(32, 64, 2))
    assert clip_frame_indices(0, clip_len=4, skip=3) == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        clip_frame_indices(-1)
    with pytest.raises(ValueError):
        clip_span(clip_len=0, skip=2)


@pytest.mark.parametrize(
    "num_frames, starts",
    [
        (0, []),
        (31, []),
        (32, [0]),
        (63, [0]),
        (64, [0, 32]),
        (95, [0, 32]),
        (100, [0, 32, 64]),
    ],
)
def test_extraction_starts_keep_only_full_spans(num_frames, starts):
    assert extraction_starts(num_frames) == starts
    assert covered_frames(num_frames) == 32 * len(starts)
    # Every covered frame belongs to exactly one clip span; the uncovered tail is shorter than a span.
    assert num_frames - covered_frames(num_frames) < 32


def test_extraction_starts_other_clip_shapes():
    assert extraction_starts(50, clip_len=8, skip=1) == [0, 8, 16, 24, 32, 40]
    assert covered_frames(50, clip_len=8, skip=1) == 48
    assert extraction_starts(50, clip_len=4, skip=4) == [0, 16, 32]


def test_dali_rule_adds_one_clip_exactly_when_remainder_is_span_minus_one():
    assert dali_starts(31) == [0]
    assert dali_starts(63) == [0, 32]
    assert dali_starts(30) == []
    for n in range(0, 300):
        ours, dali = extraction_starts(n), dali_starts(n)
        assert dali[: len(ours)] == ours, n  # same frame numbers on the common prefix
        extra = 1 if n % 32 == 31 else 0
        assert len(dali) == len(ours) + extra, n
        # DALI's extra clip still reads only frames inside the video.
        for s in dali:
            assert clip_frame_indices(s)[-1] < n


def test_dali_rule_with_explicit_step():
    # Overlapping sequences, as a DALI reader with step 16 would give.
    assert dali_starts(80, step=16) == [0, 16, 32, 48]
    with pytest.raises(ValueError):
        dali_starts(80, step=0)


def test_random_clip_start_covers_every_valid_start():
    rng = np.random.default_rng(0)
    n = 40  # valid starts 0..9
    draws = {random_clip_start(n, clip_len=16, skip=2, rng=rng) for _ in range(500)}
    assert draws == set(range(last_valid_start(n) + 1))
    assert random_clip_start(31, rng=rng) == 0  # a footprint-sized video has one clip
    with pytest.raises(ValueError, match="30 frames.*needs at least 31"):
        random_clip_start(30, rng=rng)


def _check_pairs(pairs: np.ndarray, *, num_frames: int, condition) -> None:
    last = last_valid_start(num_frames)
    t, t_neg = pairs[:, 0], pairs[:, 1]
    assert np.all(t != t_neg)
    assert t.min() >= 0 and t_neg.min() >= 0
    assert t.max() <= last and t_neg.max() <= last
    assert np.all(condition(np.abs(t - t_neg)))


@pytest.mark.parametrize("num_frames", [63, 64, 80, 93, 94, 200])
def test_triplet_random_distance_respects_min_gap(num_frames):
    rng = np.random.default_rng(1)
    pairs = np.array([sample_triplet_starts(num_frames, rng=rng) for _ in range(1500)])
    _check_pairs(pairs, num_frames=num_frames, condition=lambda d: d >= 32)
    last = last_valid_start(num_frames)
    # Exactly the anchors that have a partner >= 32 away are drawn (a hole in the middle for 63..93).
    expected = {t for t in range(last + 1) if t - 32 >= 0 or t + 32 <= last}
    assert set(pairs[:, 0].tolist()) == expected


def test_triplet_random_distance_custom_gap_and_uniform_negative():
    rng = np.random.default_rng(2)
    pairs = np.array([sample_triplet_starts(100, rng=rng, min_gap=5) for _ in range(3000)])
    _check_pairs(pairs, num_frames=100, condition=lambda d: d >= 5)
    # Negatives both before and after the anchor occur.
    assert np.any(pairs[:, 1] < pairs[:, 0]) and np.any(pairs[:, 1] > pairs[:, 0])
    # min_gap=1 only forbids t' == t.
    pairs = np.array([sample_triplet_starts(33, rng=rng, min_gap=1) for _ in range(200)])
    _check_pairs(pairs, num_frames=33, condition=lambda d: d >= 1)


@pytest.mark.parametrize("distance", [8, 32])
@pytest.mark.parametrize("num_frames", [40, 70, 200])
def test_triplet_fixed_distance(distance, num_frames):
    rng = np.random.default_rng(3)
    last = last_valid_start(num_frames)
    if last < distance:
        with pytest.raises(ValueError, match=f"{num_frames} frames.*needs at least {31 + distance}"):
            sample_triplet_starts(num_frames, rng=rng, distance=distance)
        return
    pairs = np.array([sample_triplet_starts(num_frames, rng=rng, distance=distance) for _ in range(1500)])
    _check_pairs(pairs, num_frames=num_frames, condition=lambda d: d == distance)
    expected = {t for t in range(last + 1) if t - distance >= 0 or t + distance <= last}
    assert set(pairs[:, 0].tolist()) == expected
    # Where both directions fit, both are taken (the coin is used).
    both = (pairs[:, 0] - distance >= 0) & (pairs[:, 0] + distance <= last)
    if both.any():
        signs = np.sign(pairs[both, 1] - pairs[both, 0])
        assert set(signs.tolist()) == {-1, 1}


def test_triplet_errors_name_length_and_need():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="62 frames.*needs at least 63"):
        sample_triplet_starts(62, rng=rng)  # default gap 32 + footprint 31
    assert sample_triplet_starts(63, rng=rng) in {(0, 32), (32, 0)}
    with pytest.raises(ValueError, match="not both"):
        sample_triplet_starts(200, rng=rng, min_gap=4, distance=8)
    with pytest.raises(ValueError, match="min_gap"):
        sample_triplet_starts(200, rng=rng, min_gap=0)
    with pytest.raises(ValueError, match="distance"):
        sample_triplet_starts(200, rng=rng, distance=0)


def test_triplet_reproducible_with_seed():
    a = [sample_triplet_starts(150, rng=np.random.default_rng(7)) for _ in range(3)]
    b = [sample_triplet_starts(150, rng=np.random.default_rng(7)) for _ in range(3)]
    assert a == b
