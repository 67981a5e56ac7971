"""aux_code.stats: bootstrap intervals checked against hand-computed replicates."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from aux_code.metrics import frame_auc
from aux_code.stats import BootstrapError, bootstrap_ci, cmap_ci, frame_metric_ci, weighted_ap, weighted_auc

# Four tiny test videos (frame labels) and two seeds' frame scores (clip scores repeated over 2 frames).
LABELS = [np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), np.array([0, 1, 1, 1, 0, 0]), np.array([0, 0])]
SEED_A = [np.array([0.1, 0.1, 0.8, 0.8]), np.array([0.3, 0.3, 0.2, 0.2]), np.array([0.4, 0.4, 0.9, 0.9, 0.1, 0.1]), np.array([0.5, 0.5])]
SEED_B = [np.array([0.2, 0.2, 0.6, 0.6]), np.array([0.7, 0.7, 0.1, 0.1]), np.array([0.3, 0.3, 0.5, 0.5, 0.6, 0.6]), np.array([0.2, 0.2])]


def hand_interval(replicate, n_items: int, n_seeds: int, *, b: int, seed: int):
    """The documented method written out: draws, per-resample mean over the drawn seeds, percentiles."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(b, n_items))
    seeds = rng.integers(0, n_seeds, size=(b, n_seeds))
    reps = []
    for k in range(b):
        values = [replicate(s, items[k]) for s in range(n_seeds)]  # every seed on the same item resample
        if any(v is None for v in values):
            continue  # undefined resample: dropped
        reps.append(np.mean([values[s] for s in seeds[k]]))
    return np.percentile(reps, [2.5, 97.5]), b - len(reps)


def test_frame_auc_interval_matches_hand_computation():
    runs = [SEED_A, SEED_B]

    def replicate(s, idx):
        y = np.concatenate([LABELS[i] for i in idx])
        x = np.concatenate([runs[s][i] for i in idx])
        return None if y.min() == y.max() else roc_auc_score(y, x)

    (low, high), undefined = hand_interval(replicate, 4, 2, b=40, seed=5)
    ci = frame_metric_ci(LABELS, runs, resamples=40, seed=5)
    assert undefined > 0 and ci.undefined == undefined  # e.g. a resample of videos 1 and 3 only
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)
    full = [roc_auc_score(np.concatenate(LABELS), np.concatenate(r)) for r in runs]
    assert ci.per_seed == pytest.approx(full) and ci.estimate == pytest.approx(np.mean(full))
    ref = bootstrap_ci(frame_auc, LABELS, runs, resamples=40, seed=5)  # the plain-loop reference
    assert (ref.low, ref.high, ref.undefined) == pytest.approx((ci.low, ci.high, ci.undefined))
    d = ci.as_dict()
    assert d["resamples"] == 40 and d["undefined_resamples"] == undefined and len(d["per_seed_ci"]) == 2 and "bootstrap" in d["method"]


def test_frame_ap_and_cmap_intervals_match_hand_computation():
    def ap_rep(s, idx):
        y = np.concatenate([LABELS[i] for i in idx])
        return None if y.max() == 0 else average_precision_score(y, np.concatenate([SEED_A[i] for i in idx]))

    (low, high), _ = hand_interval(ap_rep, 4, 1, b=30, seed=2)
    ci = frame_metric_ci(LABELS, [SEED_A], metric="ap", resamples=30, seed=2)
    assert (ci.low, ci.high) == pytest.approx((low, high), abs=1e-12)

    # cMAP over 6 images, 3 attributes; attribute 2 has one positive, so some resamples leave it out.
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    x = np.array([[2.0, -1, 0.5], [-1, 1, 0.1], [0.5, 0.5, 0.9], [-2, -2, 0.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])

    def cmap_rep(s, idx):
        aps = [average_precision_score(y[idx, j], x[idx, j]) for j in range(3) if y[idx, j].sum() > 0]
        return np.mean(aps) if aps else None

    (low, high), undefined = hand_interval(cmap_rep, 6, 1, b=50, seed=11)
    ci = cmap_ci(y, [x], resamples=50, seed=11)
    assert (ci.low, ci.high, ci.undefined) == pytest.approx((low, high, undefined), abs=1e-12)
    assert ci.per_seed_ci[0] == pytest.approx((ci.low, ci.high))  # one seed: the plain item bootstrap


def test_weighted_metrics_equal_sklearn_on_repeated_frames():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(30), 1)  # many ties
    pos, neg = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
    w = rng.integers(0, 3, (5, 30))
    for k in range(5):
        y = np.concatenate([np.repeat([1, 0], [w[k, i] * pos[i], w[k, i] * neg[i]]) for i in range(30)])
        x = np.concatenate([np.full(w[k, i] * (pos[i] + neg[i]), scores[i]) for i in range(30)])
        assert weighted_auc(scores, pos, neg, w[k : k + 1])[0] == pytest.approx(roc_auc_score(y, x))
        assert weighted_ap(scores, pos, neg, w[k : k + 1])[0] == pytest.approx(average_precision_score(y, x))
    assert np.isnan(weighted_auc(scores, pos, np.zeros(30), np.ones((1, 30))))[0]
    assert np.isnan(weighted_ap(scores, np.zeros(30), neg, np.ones((1, 30))))[0]


def test_degenerate_inputs_raise():
    no_pos = [np.zeros(4, int), np.zeros(2, int)]
    with pytest.raises(BootstrapError, match="undefined"):
        frame_metric_ci(no_pos, [[np.ones(4), np.ones(2)]], resamples=10)
    with pytest.raises(BootstrapError, match="no attribute has a positive"):
        cmap_ci(np.zeros((5, 2), int), [np.zeros((5, 2))], resamples=10)
    # Defined on the full set, undefined in every resample: one all-normal and one all-anomalous video,
    # each of the three resamples of generator seed 10 drawing the same video twice.
    items = np.random.default_rng(10).integers(0, 2, size=(3, 2))
    assert all(row[0] == row[1] for row in items)
    with pytest.raises(BootstrapError, match="undefined in all 3 resamples"):
        frame_metric_ci([np.zeros(2, int), np.ones(2, int)], [[np.zeros(2), np.ones(2)]], resamples=3, seed=10)
    with pytest.raises(BootstrapError, match="scores for 1 items but there are 2"):
        frame_metric_ci(LABELS[:2], [SEED_A[:1]])
    with pytest.raises(BootstrapError, match="item 0 has labels of shape"):
        frame_metric_ci(LABELS[:2], [[SEED_A[0][:3], SEED_A[1]]])
    with pytest.raises(BootstrapError, match="seed 1's scores are"):
        cmap_ci(np.eye(3, dtype=int), [np.eye(3), np.eye(2)])
    with pytest.raises(BootstrapError, match="resamples"):
        cmap_ci(np.eye(3, dtype=int), [np.eye(3)], resamples=0)


def test_combining_seeds_widens_and_narrows_as_expected():
    rng = np.random.default_rng(3)
    labels = [np.repeat([0, 1, 0], [4, 4 * (i % 2), 4]) for i in range(24)]  # half the videos anomalous
    noisy = lambda scale: [[y + scale * rng.normal(size=y.size) for y in labels] for _ in range(8)]  # noqa: E731

    # Identical seeds: exactly the single-seed interval.
    one = noisy(1.0)[0]
    single = frame_metric_ci(labels, [one], resamples=300)
    same = frame_metric_ci(labels, [one, one, one], resamples=300)
    assert (same.low, same.high, same.estimate) == pytest.approx((single.low, single.high, single.estimate))

    # Two seeds of very different quality: the interval of their mean spans both seeds' intervals' middles
    # and is wider than either seed's own.
    good, bad = noisy(0.3)[0], noisy(3.0)[0]
    pair = frame_metric_ci(labels, [good, bad], resamples=300)
    (g_lo, g_hi), (b_lo, b_hi) = pair.per_seed_ci
    assert pair.high - pair.low > max(g_hi - g_lo, b_hi - b_lo)
    assert pair.low < pair.per_seed[1] < pair.per_seed[0] < pair.high

    # Eight seeds of the same quality, independent noise: averaging over seeds narrows the interval
    # below each seed's own (the noise-by-item part averages out; the shared test sampling stays).
    runs = noisy(1.5)
    many = frame_metric_ci(labels, runs, resamples=300)
    widths = [hi - lo for lo, hi in many.per_seed_ci]
    assert many.high - many.low < min(widths)
    assert many.estimate == pytest.approx(np.mean(many.per_seed))
