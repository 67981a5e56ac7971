from __future__ import annotations

import numpy as np
import pytest
import torch

from aux_code.segments import (
    LengthMismatchError,
    append_magnitude,
    check_equal_length,
    expand_clip_scores,
    frame_ground_truth,
    process_feat,
    segment_boundaries,
)

# REFERENCE.md section 4, written out by hand.
GOLDEN_R_T10 = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10]


def test_segment_boundaries_golden_t10() -> None:
    assert segment_boundaries(10, 32).tolist() == GOLDEN_R_T10


def test_process_feat_golden_t10() -> None:
    # Row t of the features is (t, 10 t), so a segment's value names the clips it used.
    feat = np.stack([np.arange(10.0), 10.0 * np.arange(10.0)], axis=1)
    out = process_feat(feat, 32)
    assert out.shape == (32, 2) and out.dtype == np.float32
    # Every non-empty slice has one clip here, and empty slices take feat[r[i]]:
    # segment i is clip r[i] in both cases.
    expected = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9]
    np.testing.assert_array_equal(out[:, 0], expected)
    np.testing.assert_array_equal(out[:, 1], 10.0 * np.array(expected))


def test_process_feat_means_slices() -> None:
    # T = 64: r = 0, 2, 4, ..., so segment i is the mean of clips 2i and 2i+1 = 2i + 0.5.
    feat = np.arange(64.0)[:, None]
    out = process_feat(feat, 32)
    np.testing.assert_allclose(out[:, 0], 2.0 * np.arange(32) + 0.5)
    # T = 40: r[3] = 3, r[4] = floor(4 * 1.25) = 5 -> segment 3 = mean(3, 4) = 3.5.
    out40 = process_feat(np.arange(40.0)[:, None], 32)
    assert out40[3, 0] == pytest.approx(3.5)
    assert out40[4, 0] == pytest.approx(5.0)


def test_process_feat_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no clips"):
        process_feat(np.zeros((0, 4)), 32)


def test_append_magnitude_numpy_and_torch() -> None:
    arr = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = append_magnitude(arr)
    np.testing.assert_allclose(out, [[3.0, 4.0, 5.0], [0.0, 0.0, 0.0]])
    assert out.dtype == np.float32
    t = append_magnitude(torch.tensor([[[6.0, 8.0]]]))
    assert torch.allclose(t, torch.tensor([[[6.0, 8.0, 10.0]]]))


def test_expand_clip_scores() -> None:
    out = expand_clip_scores([0.1, 0.9], clip_span=3)
    np.testing.assert_allclose(out, [0.1, 0.1, 0.1, 0.9, 0.9, 0.9])


def test_frame_ground_truth_intervals() -> None:
    # Half-open by default (the dataset adapters' convention): frames 2 and 3.
    gt = frame_ground_truth([(2, 4), (-1, -1)], 8)
    assert gt.tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    gt_incl = frame_ground_truth([(2, 4)], 8, end_inclusive=True)
    assert gt_incl.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    # An event running into the unscored tail is clipped, not rejected.
    assert frame_ground_truth([(6, 20)], 8).tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        frame_ground_truth([(5, 3)], 8)


def test_gt_length_equals_sum_of_clip_spans() -> None:
    num_clips, span = 5, 32
    pred = expand_clip_scores(np.linspace(0, 1, num_clips), clip_span=span)
    gt = frame_ground_truth([(40, 70)], num_clips * span)
    assert len(pred) == len(gt) == 160
    check_equal_length("Abuse028_x264", len(pred), len(gt))


def test_length_mismatch_names_the_video() -> None:
    pred = expand_clip_scores(np.zeros(5), clip_span=32)
    with pytest.raises(LengthMismatchError, match="Abuse028_x264.*160.*170"):
        check_equal_length("Abuse028_x264", len(pred), 170)
