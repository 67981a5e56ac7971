"""Evaluation metrics: frame-level anomaly detection, privacy (cMAP, F1), SAS, robust rescaling.

Two precision-recall summaries are kept apart because papers mix them:
``average_precision`` is sklearn's step-wise AP (the XD-Violence "AP"), while
``pr_auc_trapezoid`` is the trapezoidal area under sklearn's PR curve, the number MGFN's
code prints as "PR". They differ on the same scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc, average_precision_score, f1_score, precision_recall_curve, roc_auc_score

__all__ = [
    "CMAPResult",
    "FrameMetrics",
    "average_precision",
    "cmap",
    "frame_auc",
    "frame_metrics",
    "macro_f1",
    "pr_auc_trapezoid",
    "robust_rescale",
    "sigmoidal_anomaly_score",
    "video_level_f1",
]


def _binary_inputs(name: str, labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{name}: {y.size} labels but {s.size} scores; expected one score per label")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name}: labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError(f"{name}: the labels hold a single class ({int(y[0]) if y.size else 'none'}); the metric is undefined")
    return y.astype(np.int64), s


def frame_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Frame-level ROC AUC of concatenated per-frame labels (F,) and scores (F,)."""
    y, s = _binary_inputs("frame_auc", labels, scores)
    return float(roc_auc_score(y, s))


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Step-wise average precision (sklearn), the XD-Violence "AP"."""
    y, s = _binary_inputs("average_precision", labels, scores)
    return float(average_precision_score(y, s))


def pr_auc_trapezoid(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Trapezoidal area under the precision-recall curve, as MGFN's code reports "PR"."""
    y, s = _binary_inputs("pr_auc_trapezoid", labels, scores)
    precision, recall, _ = precision_recall_curve(y, s)
    return float(auc(recall, precision))


@dataclass(frozen=True)
class FrameMetrics:
    roc_auc: float
    average_precision: float
    pr_auc_trapezoid: float

    def as_dict(self) -> dict[str, float]:
        return {"roc_auc": self.roc_auc, "average_precision": self.average_precision, "pr_auc_trapezoid": self.pr_auc_trapezoid}


def frame_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> FrameMetrics:
    """All three frame-level summaries of one concatenated test set."""
    return FrameMetrics(frame_auc(labels, scores), average_precision(labels, scores), pr_auc_trapezoid(labels, scores))


@dataclass(frozen=True)
class CMAPResult:
    """cmap: mean AP over the attributes that have at least one positive.
    per_attribute: AP by attribute name, for the included attributes only.
    excluded: names of attributes left out because the split has no positive for them
    (AP is undefined there; averaging a NaN or a 0 would silently bias the mean)."""

    cmap: float
    per_attribute: dict[str, float]
    excluded: tuple[str, ...]


def cmap(
    targets: np.ndarray,
    scores: np.ndarray,
    *,
    attribute_names: Sequence[str] | None = None,
) -> CMAPResult:
    """Class-mean average precision of multi-label targets (N, A) 0/1 and scores (N, A).

    Scores may be logits or probabilities (AP depends only on the ranking).
    """
    y = np.asarray(targets)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"cmap: expected targets and scores both (N, A), got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("cmap: targets must be 0/1")
    names = list(attribute_names) if attribute_names is not None else [f"attr_{i}" for i in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"cmap: {len(names)} attribute names for {y.shape[1]} attribute columns")
    per_attribute: dict[str, float] = {}
    excluded: list[str] = []
    for j, name in enumerate(names):
        if y[:, j].sum() == 0:
            excluded.append(name)
            continue
        per_attribute[name] = float(average_precision_score(y[:, j], s[:, j]))
    if not per_attribute:
        raise ValueError(f"cmap: no attribute has a positive example in this split (all of {names} excluded)")
    return CMAPResult(float(np.mean(list(per_attribute.values()))), per_attribute, tuple(excluded))


def macro_f1(targets: np.ndarray, probabilities: np.ndarray, *, threshold: float = 0.5) -> float:
    """Macro F1 over attributes: targets (N, A) or (N,), sigmoid probabilities of the same shape.

    Probabilities are required (values outside [0, 1] raise): thresholding logits at 0.5 is
    a known bug of the public code (REFERENCE.md section 7). A 1-D input is one attribute,
    i.e. the binary F1 of the positive class. An attribute with no positive and no predicted
    positive scores 0 (sklearn's zero_division=0).
    """
    y = np.asarray(targets)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape or y.ndim not in (1, 2):
        raise ValueError(f"macro_f1: expected targets and probabilities of the same shape (N,) or (N, A), got {y.shape} and {p.shape}")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"macro_f1: probabilities must lie in [0, 1], got range [{p.min():.3g}, {p.max():.3g}]; apply a sigmoid to logits first"
        )
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    predicted = (p >= threshold).astype(np.int64)
    return float(f1_score(y.astype(np.int64), predicted, average="macro", zero_division=0))


def sigmoidal_anomaly_score(
    clip_scores: Iterable[float] | np.ndarray,
    *,
    tau: float = 0.5,
    v: float = 2.0,
    upper: float = 7.0,
    lower: float = -7.0,
    initial: float | None = None,
) -> np.ndarray:
    """Sigmoidal anomaly score (Giorgi et al.) of a clip-score stream (S,) -> (S,) in (0, 1).

    Accumulator, one step per clip score s_t in [0, 1]:
        x_t = x_{t-1} + v * (s_t - tau) / (1 - tau)          if s_t >= tau
        x_t = x_{t-1} - v * (1 - s_t - tau) / (1 - tau)      otherwise
    clipped to [lower, upper]; the output is sigmoid(x_t) after each update.

    Initial value: the paper gives the recurrence but not x_0 in what we could check, so
    x_0 = lower by default ("initial=None"): the stream starts in the fully-normal state,
    and an alarm (SAS > 0.5) needs accumulated evidence, e.g. four saturated clips
    (s = 1, v = 2) from LB = -7, which is the debouncing the accumulator is for. Pass
    initial=0.0 to start at the neutral point instead.
    """
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"sigmoidal_anomaly_score: tau must be in [0, 1), got {tau}")
    if lower > upper:
        raise ValueError(f"sigmoidal_anomaly_score: lower {lower} is above upper {upper}")
    s = np.asarray(list(clip_scores) if not isinstance(clip_scores, np.ndarray) else clip_scores, dtype=np.float64).ravel()
    x = lower if initial is None else float(np.clip(initial, lower, upper))
    out = np.empty_like(s)
    for t, st in enumerate(s):
        step = v * (st - tau) / (1.0 - tau) if st >= tau else -v * (1.0 - st - tau) / (1.0 - tau)
        x = min(max(x + step, lower), upper)
        out[t] = 1.0 / (1.0 + np.exp(-x))
    return out


def video_level_f1(
    sas_per_video: Sequence[np.ndarray],
    video_labels: Sequence[int] | np.ndarray,
    *,
    threshold: float = 0.5,
) -> float:
    """F1 of the anomalous class, a video being predicted anomalous when its SAS stream
    exceeds ``threshold`` anywhere. sas_per_video: one (S_i,) array per video."""
    y = np.asarray(video_labels).ravel()
    if len(sas_per_video) != y.size:
        raise ValueError(f"video_level_f1: {len(sas_per_video)} score streams but {y.size} video labels")
    predicted = np.array([int(np.asarray(s).size > 0 and float(np.max(s)) > threshold) for s in sas_per_video])
    return float(f1_score(y.astype(np.int64), predicted, average="binary", zero_division=0))


def robust_rescale(scores: Sequence[float] | np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """LUSS-AE per-video rescaling: (x - median) / (p99 - p1), percentiles by linear interpolation.

    A video whose p99 equals p1 (a constant or near-constant stream) has no spread to
    divide by; it is only centred (divided by 1) rather than turned into NaN/inf.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError("robust_rescale: empty score array")
    p1, median, p99 = np.percentile(x, [1.0, 50.0, 99.0])
    spread = p99 - p1
    return (x - median) / (spread if spread > eps else 1.0)
