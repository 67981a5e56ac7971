"""Bootstrap confidence intervals for the test metrics (frame AUC / AP over videos, cMAP over images).

Method (one spec; :func:`bootstrap_ci` is the plain-loop reference, :func:`frame_metric_ci`
and :func:`cmap_ci` the vectorised versions of exactly the same computation):

1. **Items.** The unit of resampling is the test item that was sampled: a whole test
   *video* for frame-level AUC / AP (its frames are dependent, so frames are never
   resampled individually: a resample concatenates the frames of the drawn videos), an
   *image* for cMAP.
2. **Draws.** ``rng = numpy.random.default_rng(seed)``; ``items = rng.integers(0, n_items,
   size=(B, n_items))`` (B resamples of n_items, with replacement), then ``seeds =
   rng.integers(0, n_seeds, size=(B, n_seeds))``. Fixed ``seed`` (default 0): the same inputs
   always give the same interval.
3. **Seeds (resample seeds, then items).** The seeds' runs (e.g. one MGFN run per
   ``anomaly_seeds`` entry) score the *same* test items, so replicate b evaluates every seed's
   scores on the same item resample ``items[b]`` and averages the metric over the seeds drawn
   in ``seeds[b]`` (R seeds with replacement): ``rep_b = mean_r m(seed seeds[b, r], items[b])``.
   This is a two-level bootstrap of the *mean over seeds*, which is also the point estimate
   (``estimate`` = mean over seeds of the metric on the full test set). It contains the test
   sampling variance plus the seed-to-seed variance of a mean of R runs; with one seed it is
   the ordinary item bootstrap. (With R = 3 the seed level has only 10 distinct multisets: it
   is a coarse but honest share of the seed spread.)
4. **Interval.** Percentile bootstrap: ``low, high = numpy.percentile(reps, [100 a/2, 100 (1 - a/2)])``
   with ``a = 1 - level`` (default level 0.95) and numpy's default linear interpolation.
5. **Undefined resamples.** A resample whose metric is undefined (frame AUC: no anomalous or no
   normal frame; AP: no anomalous frame; cMAP: no attribute with a positive image; attributes
   without a positive in a resample are left out of its mean, as :func:`aux_code.metrics.cmap`
   does on the full set) is dropped and counted in ``undefined``; when every resample is
   undefined, :class:`BootstrapError` is raised.

Per-seed intervals (``per_seed_ci``) are the same percentiles of one seed's replicates
``m(seed r, items[b])``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from aux_code.metrics import cmap as cmap_metric

__all__ = [
    "BootstrapCI",
    "BootstrapError",
    "bootstrap_ci",
    "cmap_ci",
    "combine_seeds",
    "draw",
    "frame_metric_ci",
    "weighted_ap",
    "weighted_auc",
]

DEFAULT_RESAMPLES = 1000
METHOD = ("percentile bootstrap over test items (videos for frame metrics, images for cMAP), B resamples with a fixed "
          "seed; each replicate averages the metric over R seeds drawn with replacement, all scored on the same item resample; "
          "estimate = mean over seeds on the full test set")


class BootstrapError(ValueError):
    """Inputs a bootstrap interval cannot be computed from."""


@dataclass(frozen=True)
class BootstrapCI:
    """estimate: mean over seeds of the full-test-set metric; [low, high]: the interval (fractions, like the metric)."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    undefined: int
    seed: int
    per_seed: tuple[float, ...]
    per_seed_ci: tuple[tuple[float, float], ...]
    unit: str

    def as_dict(self) -> dict:
        return {
            "estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
            "resamples": self.resamples, "undefined_resamples": self.undefined, "seed": self.seed,
            "per_seed": list(self.per_seed), "per_seed_ci": [list(c) for c in self.per_seed_ci],
            "unit": self.unit, "method": METHOD,
        }


def draw(n_items: int, n_seeds: int, *, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The draws of step 2: item indices (B, n_items) and seed indices (B, n_seeds)."""
    if n_items < 1 or n_seeds < 1:
        raise BootstrapError(f"bootstrap: need at least one item and one seed, got {n_items} items and {n_seeds} seeds")
    if resamples < 1:
        raise BootstrapError(f"bootstrap: resamples = {resamples} must be >= 1")
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(resamples, n_items))
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    return items, seeds


def combine_seeds(full: Sequence[float], replicates: np.ndarray, seeds: np.ndarray, *, level: float, seed: int, unit: str) -> BootstrapCI:
    """Steps 3-5 from the per-seed full-set values (R,) and replicates (R, B) (NaN: undefined resample)."""
    if not 0.0 < level < 1.0:
        raise BootstrapError(f"bootstrap: level = {level} must be in (0, 1)")
    reps = np.asarray(replicates, dtype=np.float64)
    r, b = reps.shape
    if len(full) != r or seeds.shape != (b, r):
        raise BootstrapError(f"bootstrap: {len(full)} full-set values, replicates {reps.shape}, seed draws {seeds.shape} disagree")
    ok = ~np.isnan(reps).any(axis=0)
    if not ok.any():
        raise BootstrapError(f"bootstrap: the metric is undefined in all {b} resamples (e.g. no positive {unit} frame/label in any)")
    q = [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]
    combined = reps[seeds, np.arange(b)[:, None]].mean(axis=1)[ok]  # (B,): mean over the drawn seeds
    low, high = np.percentile(combined, q)
    per_seed_ci = tuple(tuple(float(v) for v in np.percentile(reps[i, ok], q)) for i in range(r))
    return BootstrapCI(float(np.mean(full)), float(low), float(high), level, b, int((~ok).sum()), seed,
                       tuple(float(v) for v in full), per_seed_ci, unit)


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    labels: Sequence[np.ndarray],
    scores_per_seed: Sequence[Sequence[np.ndarray]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "item",
) -> BootstrapCI:
    """The reference implementation (a plain loop) of the module's method for any metric.

    labels: one array per test item (a video's frame labels (F_i,), or an image's labels (1, A));
    scores_per_seed: per seed, one scores array per item, shaped like that item's labels.
    ``metric(concatenated labels, concatenated scores)`` is called on each resample; a ValueError
    from it marks the resample undefined. Slow (B * R metric calls); the vectorised
    :func:`frame_metric_ci` / :func:`cmap_ci` give the same numbers.
    """
    n, r = len(labels), len(scores_per_seed)
    _check_items(labels, scores_per_seed)
    items, seeds = draw(n, r, resamples=resamples, seed=seed)

    def value(s: int, idx: np.ndarray | None) -> float:
        pick = range(n) if idx is None else idx
        try:
            return float(metric(np.concatenate([labels[i] for i in pick]), np.concatenate([scores_per_seed[s][i] for i in pick])))
        except ValueError:
            if idx is None:
                raise
            return float("nan")

    full = [value(s, None) for s in range(r)]
    reps = np.array([[value(s, items[b]) for b in range(resamples)] for s in range(r)])
    return combine_seeds(full, reps, seeds, level=level, seed=seed, unit=unit)


def _check_items(labels: Sequence[np.ndarray], scores_per_seed: Sequence[Sequence[np.ndarray]]) -> None:
    if not len(scores_per_seed):
        raise BootstrapError("bootstrap: no seed's scores given")
    for s, scores in enumerate(scores_per_seed):
        if len(scores) != len(labels):
            raise BootstrapError(f"bootstrap: seed {s} has scores for {len(scores)} items but there are {len(labels)} labelled items")
        for i, (y, x) in enumerate(zip(labels, scores)):
            if np.shape(y) != np.shape(x):
                raise BootstrapError(f"bootstrap: item {i} has labels of shape {np.shape(y)} but seed {s}'s scores are {np.shape(x)}")


# --------------------------------------------------------------------------- weighted metrics


def _grouped(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, weights: np.ndarray, *, descending: bool):
    """Weighted positive / negative counts per distinct score: (B, G) each, groups in score order."""
    order = np.argsort(-scores if descending else scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    w = weights[:, order]
    return np.add.reduceat(w * pos[order], starts, axis=1), np.add.reduceat(w * neg[order], starts, axis=1)


def weighted_auc(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count 1/2, as sklearn's) of units with a score, ``pos`` positive and ``neg`` negative
    frames each, counted ``weights`` (B, M) times -> (B,), NaN where a row has no positive or no negative."""
    p, q = _grouped(np.asarray(scores, np.float64), np.asarray(pos, np.float64), np.asarray(neg, np.float64),
                    np.asarray(weights, np.float64), descending=False)
    below = np.cumsum(q, axis=1) - q  # negatives strictly below each group's score
    num = (p * (below + 0.5 * q)).sum(axis=1)
    tot_p, tot_q = p.sum(axis=1), q.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / (tot_p * tot_q)
    out[(tot_p == 0) | (tot_q == 0)] = np.nan
    return out


def weighted_ap(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Step-wise average precision (sklearn's: sum over distinct thresholds of recall gain x precision)
    of weighted units, as :func:`weighted_auc` -> (B,), NaN where a row has no positive."""
    p, q = _grouped(np.asarray(scores, np.float64), np.asarray(pos, np.float64), np.asarray(neg, np.float64),
                    np.asarray(weights, np.float64), descending=True)
    tp, fp = np.cumsum(p, axis=1), np.cumsum(q, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        out = (p * precision).sum(axis=1) / tp[:, -1]
    out[tp[:, -1] == 0] = np.nan
    return out


def _counts(items: np.ndarray, n: int) -> np.ndarray:
    """Multiplicity of each item in each resample: (B, n)."""
    b = items.shape[0]
    flat = (items + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n)


def _chunks(b: int, size: int):
    return (slice(i, min(i + size, b)) for i in range(0, b, size))


def frame_metric_ci(
    labels: Sequence[np.ndarray],
    scores_per_seed: Sequence[Sequence[np.ndarray]],
    *,
    metric: str = "auc",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 100,
) -> BootstrapCI:
    """Frame ROC AUC (``metric="auc"``) or AP (``"ap"``) interval, resampling whole test videos.

    labels: per test video, its 0/1 frame labels (F_i,); scores_per_seed: per seed (one stage-4 run
    each), per video, its frame scores (F_i,) (clip scores repeated over the clip's frames). Each
    video's frames are compressed to (distinct score, #anomalous, #normal) units, so a resample
    is a weighted metric over units, exactly the metric of the concatenated frames.
    """
    if metric not in ("auc", "ap"):
        raise BootstrapError(f"frame_metric_ci: metric {metric!r} must be 'auc' or 'ap'")
    labels = [np.asarray(y).ravel() for y in labels]
    scores_per_seed = [[np.asarray(x, dtype=np.float64).ravel() for x in run] for run in scores_per_seed]
    _check_items(labels, scores_per_seed)
    for i, y in enumerate(labels):
        if not np.isin(y, (0, 1)).all():
            raise BootstrapError(f"frame_metric_ci: video {i}'s frame labels must be 0/1")
    fn = weighted_auc if metric == "auc" else weighted_ap
    n, r = len(labels), len(scores_per_seed)
    items, seeds = draw(n, r, resamples=resamples, seed=seed)
    counts = _counts(items, n)
    full, reps = [], np.empty((r, resamples))
    for s, run in enumerate(scores_per_seed):
        unit_scores, unit_pos, unit_neg, unit_video = [], [], [], []
        for i, (y, x) in enumerate(zip(labels, run)):
            u, inverse = np.unique(x, return_inverse=True)
            pos = np.bincount(inverse, weights=y, minlength=u.size)
            unit_scores.append(u)
            unit_pos.append(pos)
            unit_neg.append(np.bincount(inverse, minlength=u.size) - pos)
            unit_video.append(np.full(u.size, i))
        us, up, un, uv = (np.concatenate(a) for a in (unit_scores, unit_pos, unit_neg, unit_video))
        value = float(fn(us, up, un, np.ones((1, us.size)))[0])
        if np.isnan(value):
            raise BootstrapError(f"frame_metric_ci: the {metric} of seed {s}'s full test set is undefined (one class only)")
        full.append(value)
        for sl in _chunks(resamples, chunk):
            reps[s, sl] = fn(us, up, un, counts[sl][:, uv])
    return combine_seeds(full, reps, seeds, level=level, seed=seed, unit="video")


def cmap_ci(
    labels: np.ndarray,
    scores_per_seed: Sequence[np.ndarray],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 200,
) -> BootstrapCI:
    """cMAP interval, resampling test images: labels (N, A) 0/1, scores_per_seed: per seed (N, A) logits.

    Each resample's cMAP is the mean AP over the attributes with a positive image in it.
    """
    y = np.asarray(labels)
    runs = [np.asarray(x, dtype=np.float64) for x in scores_per_seed]
    if y.ndim != 2:
        raise BootstrapError(f"cmap_ci: labels must be (N, A), got {y.shape}")
    if not runs:
        raise BootstrapError("cmap_ci: no seed's scores given")
    for s, x in enumerate(runs):
        if x.shape != y.shape:
            raise BootstrapError(f"cmap_ci: seed {s}'s scores are {x.shape} but the labels are {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise BootstrapError("cmap_ci: labels must be 0/1")
    n, a = y.shape
    items, seeds = draw(n, len(runs), resamples=resamples, seed=seed)
    counts = _counts(items, n)
    full, reps = [], np.empty((len(runs), resamples))
    yf = y.astype(np.float64)
    for s, x in enumerate(runs):
        try:
            full.append(cmap_metric(y, x).cmap)
        except ValueError as e:
            raise BootstrapError(f"cmap_ci: {e}") from e
        for sl in _chunks(resamples, chunk):
            aps = np.stack([weighted_ap(x[:, j], yf[:, j], 1.0 - yf[:, j], counts[sl]) for j in range(a)], axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row (no attribute has a positive) is undefined
                reps[s, sl] = np.nanmean(aps, axis=1)
    return combine_seeds(full, reps, seeds, level=level, seed=seed, unit="image")

