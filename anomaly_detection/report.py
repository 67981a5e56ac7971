"""What a finished stage-4 run leaves for people and for the reproduce script.

- results.json: the selected epoch and its validation value, test frame metrics (ROC AUC,
  AP, trapezoidal PR-AUC, each labelled), online scores, counts, config and feature-set
  hashes;
- test_scores.npz: every test video's clip scores, SAS stream and frame labels (no pickled
  objects): enough to recompute the test frame metrics, e.g. per resample of test videos;
- plots/<video>.png: per-frame score curves of a few test videos, anomalies shaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from anomaly_detection.data import EvalVideo
from anomaly_detection.evaluate import video_ground_truth
from aux_code.checkpoint import atomic_write
from aux_code.metrics import robust_rescale
from aux_code.segments import expand_clip_scores

def save_test_scores(
    path: Path,
    videos: Sequence[EvalVideo],
    clip_scores: Mapping[str, np.ndarray],
    video_scores: Mapping[str, float],
    sas: Mapping[str, np.ndarray],
    clip_span: int,
    *,
    robust_rescale: bool = False,
) -> None:
    """Per-video scores in one npz, ragged arrays stored flat with offsets (CSR style).

    Video i's clip scores are clip_scores[offsets[i]:offsets[i+1]]; same for sas. Its frame
    labels (video_ground_truth, the labels the test metrics are computed against) are
    frame_labels[frame_offsets[i]:frame_offsets[i+1]], num_clips[i] * clip_span of them.
    robust_rescale () says whether the evaluation rescaled each video's clip scores first
    (aux_code.metrics.robust_rescale); the test frame scores are then
    expand_clip_scores(rescaled or raw clip scores, clip_span). Loads with np.load(path)
    (no pickle): names (N,) str, labels (N,), num_clips (N,), video_scores (N,), clip_span ().
    """
    counts = np.array([v.num_clips for v in videos], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    frame_labels = [video_ground_truth(v, clip_span).astype(np.int8) for v in videos]
    frame_offsets = np.concatenate([[0], np.cumsum([f.size for f in frame_labels])]).astype(np.int64)
    arrays = {
        "names": np.array([v.name for v in videos], dtype=str),
        "labels": np.array([v.label for v in videos], dtype=np.int64),
        "num_clips": counts,
        "offsets": offsets,
        "clip_scores": np.concatenate([np.asarray(clip_scores[v.name], dtype=np.float64) for v in videos]),
        "sas": np.concatenate([np.asarray(sas[v.name], dtype=np.float64) for v in videos]),
        "video_scores": np.array([video_scores[v.name] for v in videos], dtype=np.float64),
        "clip_span": np.array(clip_span, dtype=np.int64),
        "frame_labels": np.concatenate(frame_labels) if frame_labels else np.zeros(0, dtype=np.int8),
        "frame_offsets": frame_offsets,
        "robust_rescale": np.array(bool(robust_rescale)),
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def pick_plot_videos(videos: Sequence[EvalVideo], n: int | None) -> list[EvalVideo]:
    """Up to n videos (None: all), alternating anomalous and normal (anomalous first), by name."""
    abnormal = sorted((v for v in videos if v.label == 1), key=lambda v: v.name)
    normal = sorted((v for v in videos if v.label == 0), key=lambda v: v.name)
    picked: list[EvalVideo] = []
    for i in range(max(len(abnormal), len(normal))):
        picked.extend(group[i] for group in (abnormal, normal) if i < len(group))
    return picked[:n]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_video_scores(
    out_dir: Path,
    videos: Sequence[EvalVideo],
    clip_scores: Mapping[str, np.ndarray],
    sas: Mapping[str, np.ndarray],
    clip_span: int,
    *,
    rescale: bool = False,
) -> list[Path]:
    """One PNG per video: per-frame score (and SAS) over the covered frames, anomalies shaded."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for v in videos:
        raw = np.asarray(clip_scores[v.name], dtype=np.float64)
        shown = robust_rescale(raw) if rescale else raw
        frames = expand_clip_scores(shown, clip_span=clip_span)
        gt = video_ground_truth(v, clip_span)
        fig, ax = plt.subplots(figsize=(8, 2.6), dpi=100)
        x = np.arange(frames.size)
        ax.plot(x, frames, lw=1.2, color="tab:blue", label="rescaled score" if rescale else "MGFN score")
        ax.plot(x, expand_clip_scores(sas[v.name], clip_span=clip_span), lw=1.0, ls="--", color="tab:orange", label="SAS")
        # Shade from the frame labels themselves, so the picture shows exactly what was scored against.
        edges = np.flatnonzero(np.diff(np.concatenate([[0], gt, [0]])))
        for start, end in zip(edges[::2], edges[1::2]):
            ax.axvspan(start, end, color="tab:red", alpha=0.2, lw=0)
        ax.set_xlim(0, max(frames.size, 1))
        if not rescale:
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("frame")
        ax.set_ylabel("anomaly score")
        ax.set_title(f"{v.name} ({'anomalous' if v.label else 'normal'}; shaded: annotated anomaly)", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{_safe_name(v.name)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
