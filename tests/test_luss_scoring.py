"""LUSS-AE scoring (issue 17): error measures, rescaling, micro vs macro AUC, score length."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aux_code.luss_scoring import combine, frame_errors, gaussian_kernel, micro_macro_auc, rescale, score_video
from aux_code.models.luss_ae import build_luss_ae


def _impulse():
    target = torch.zeros(1, 1, 5, 5)
    pred = target.clone()
    pred[0, 0, 2, 2] = 1.0
    return pred, target


def test_mse_pse_bpe_by_hand():
    pred, target = _impulse()
    # 1-D Gaussian taps exp(-i^2 / 2), i = -2..2; the 2-D kernel is their outer product / s1^2.
    s1 = 1 + 2 * math.exp(-0.5) + 2 * math.exp(-2)
    sq_all = 1 + 2 * math.exp(-1) + 2 * math.exp(-4)       # sum of squared taps
    sq_sub = 1 + 2 * math.exp(-4)                           # taps at rows/cols 0, 2, 4 (stride 2)
    assert frame_errors(pred, target, "mse").item() == pytest.approx(1 / 25)
    # The impulse's blurred difference is the kernel itself (zero padding, centred).
    assert frame_errors(pred, target, "pse").item() == pytest.approx(sq_all**2 / s1**4 / 25, rel=1e-5)
    assert frame_errors(pred, target, "pse").item() == pytest.approx(0.0033019, rel=1e-3)
    assert frame_errors(pred, target, "bpe").item() == pytest.approx(sq_sub**2 / s1**4 / 25, rel=1e-5)
    assert frame_errors(pred, target, "bpe").item() == pytest.approx(0.0011295, rel=1e-3)
    assert gaussian_kernel().sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not one of"):
        frame_errors(pred, target, "psnr")


def test_rescaling_fixed_vector():
    x = np.arange(101, dtype=float)  # median 50, p1 1, p99 99
    np.testing.assert_allclose(rescale(x, "robust"), (x - 50) / 98)
    np.testing.assert_allclose(rescale(x, "minmax"), x / 100)
    assert np.all(rescale(np.full(5, 3.0), "minmax") == 0) and np.all(rescale(np.full(5, 3.0), "robust") == 0)


def test_micro_differs_from_macro():
    labels = [np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])]
    scores = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.6, 0.7, 0.8, 0.9])]
    r = micro_macro_auc(labels, scores)
    assert r["macro_auc"] == 1.0 and r["macro_videos"] == 2
    assert r["micro_auc"] == pytest.approx(12 / 16)  # 0.3 and 0.4 lose to 0.6 and 0.7


def test_combine_weighted_sum():
    raw = {"vcr_bpe": np.arange(101.0), "ffp_bpe": np.zeros(101), "prp": np.arange(101.0)[::-1].copy()}
    out = combine(raw, (0.1, 0.8, 1.0))
    np.testing.assert_allclose(out["final"], 0.1 * (np.arange(101) - 50) / 98 - (np.arange(101) - 50) / 98)


def test_score_length_equals_frame_count_streamed():
    torch.manual_seed(0)
    model = build_luss_ae(preset="tiny", clip_len=8)
    rng = np.random.default_rng(0)
    frames = (rng.random((13, 16, 16)) * 2 - 1).astype(np.float32)
    raw = score_video(model, iter(frames), clip_len=8, batch_size=2, video="t01")  # a generator: streamed
    for key, s in raw.items():
        assert s.shape == (13,), key
        assert np.all(s[:8] == s[8])  # the first T frames take the first window's score
    assert np.all((raw["prp"] >= 0) & (raw["prp"] <= 1))
    # the same scores with one batch
    again = score_video(model, frames, clip_len=8, batch_size=16)
    np.testing.assert_allclose(again["vcr_bpe"], raw["vcr_bpe"], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="test video short has 8 frames"):
        score_video(model, frames[:8], clip_len=8, video="short")
