from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from aux_code.metrics import (
    average_precision,
    cmap,
    frame_auc,
    frame_metrics,
    macro_f1,
    pr_auc_trapezoid,
    robust_rescale,
    sigmoidal_anomaly_score,
    video_level_f1,
)

LABELS = np.array([0, 0, 1, 1, 0, 1, 0, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.7, 0.65, 0.9])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_frame_auc_hand_value() -> None:
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of the 4 pairs are ordered -> 0.75.
    assert frame_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_frame_metrics_equal_sklearn() -> None:
    m = frame_metrics(LABELS, SCORES)
    assert m.roc_auc == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert m.average_precision == pytest.approx(average_precision_score(LABELS, SCORES))
    precision, recall, _ = precision_recall_curve(LABELS, SCORES)
    assert m.pr_auc_trapezoid == pytest.approx(auc(recall, precision))
    # The two PR summaries are different numbers on the same scores.
    assert m.average_precision != pytest.approx(m.pr_auc_trapezoid)
    assert average_precision(LABELS, SCORES) == m.average_precision
    assert pr_auc_trapezoid(LABELS, SCORES) == m.pr_auc_trapezoid


def test_frame_auc_single_class_raises() -> None:
    with pytest.raises(ValueError, match="single class"):
        frame_auc([0, 0, 0], [0.1, 0.2, 0.3])


def test_cmap_equals_sklearn_macro_ap() -> None:
    targets = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3], [0.6, 0.4, 0.5], [0.3, 0.2, 0.9], [0.4, 0.6, 0.1]])
    result = cmap(targets, scores, attribute_names=["gender", "face", "skin"])
    assert result.cmap == pytest.approx(average_precision_score(targets, scores, average="macro"))
    assert result.excluded == ()
    assert result.per_attribute["face"] == pytest.approx(average_precision_score(targets[:, 1], scores[:, 1]))


def test_cmap_excludes_attribute_without_positives() -> None:
    targets = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0]])
    scores = np.array([[0.9, 0.9, 0.2], [0.1, 0.8, 0.6], [0.8, 0.7, 0.7], [0.3, 0.1, 0.1]])
    result = cmap(targets, scores, attribute_names=["a", "b", "c"])
    assert result.excluded == ("b",)
    assert set(result.per_attribute) == {"a", "c"}
    # a: positives ranked 1st and 2nd -> AP 1. c: ranking 0.7(+), 0.6(-), 0.2(+), 0.1(-)
    # -> precision at the positives 1/1 and 2/3 -> AP 5/6.
    assert result.per_attribute["a"] == pytest.approx(1.0)
    assert result.per_attribute["c"] == pytest.approx(5.0 / 6.0)
    assert result.cmap == pytest.approx((1.0 + 5.0 / 6.0) / 2.0)
    with pytest.raises(ValueError, match="no attribute"):
        cmap(np.zeros((3, 2)), np.ones((3, 2)))


def test_macro_f1_on_probabilities() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    probs = np.array([[0.9, 0.2], [0.4, 0.6], [0.7, 0.3]])
    # attr 0: predictions 1,0,1 = targets -> F1 1. attr 1: predictions 0,1,0 -> tp 1, fn 1
    # -> F1 2/3. Macro = 5/6.
    assert macro_f1(targets, probs) == pytest.approx(5.0 / 6.0)
    with pytest.raises(ValueError, match="sigmoid"):
        macro_f1(targets, np.array([[2.0, -1.0], [0.5, 0.5], [0.5, 0.5]]))


def test_sas_follows_recurrence() -> None:
    scores = [1.0, 1.0, 1.0, 1.0, 0.75, 0.0, 1.0, 1.0, 1.0, 1.0, 0.25, 0.5]
    # x0 = LB = -7. Steps: s=1 -> +2; s=0.75 -> +1; s=0 -> -2; s=0.25 -> -1; s=0.5 -> 0.
    # x: -5, -3, -1, 1, 2, 0, 2, 4, 6, 8 clipped to 7, 6, 6.
    expected_x = [-5, -3, -1, 1, 2, 0, 2, 4, 6, 7, 6, 6]
    out = sigmoidal_anomaly_score(scores)
    np.testing.assert_allclose(out, [_sigmoid(x) for x in expected_x], rtol=1e-12)
    # Clipped at the lower bound too, and a neutral start is available.
    np.testing.assert_allclose(sigmoidal_anomaly_score([0.0, 0.0]), [_sigmoid(-7), _sigmoid(-7)])
    np.testing.assert_allclose(sigmoidal_anomaly_score([0.75], initial=0.0), [_sigmoid(1.0)])


def test_video_level_f1() -> None:
    streams = [np.array([0.1, 0.6]), np.array([0.5, 0.2]), np.array([0.9])]
    # Predicted anomalous: yes (0.6 > 0.5), no (0.5 is not above), yes. Labels 1, 1, 0
    # -> tp 1, fn 1, fp 1 -> F1 = 2 / (2 + 1 + 1) = 0.5.
    assert video_level_f1(streams, [1, 1, 0]) == pytest.approx(0.5)


def test_robust_rescale() -> None:
    x = np.arange(101.0)
    # median 50, p1 = 1, p99 = 99 (linear interpolation on 0..100).
    np.testing.assert_allclose(robust_rescale(x), (x - 50.0) / 98.0)
    np.testing.assert_allclose(robust_rescale(np.full(5, 3.0)), np.zeros(5))
