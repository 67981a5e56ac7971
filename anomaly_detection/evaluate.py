"""Scoring full-length videos with MGFN, and the frame-level and online metrics.

Ground truth follows the extractor's clip indexing (aux_code.segments): a video of
S clips covers S * clip_span frames, clip s covering [s * clip_span, (s + 1) * clip_span);
its frame labels come from the manifest intervals over exactly those frames, and its S
clip scores are repeated clip_span times. The two lengths are asserted equal per video,
then concatenated over videos for ROC AUC, AP and the trapezoidal PR-AUC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn

from anomaly_detection.data import AnomalyData, EvalVideo
from aux_code.metrics import frame_auc, frame_metrics, robust_rescale, sigmoidal_anomaly_score, video_level_f1
from aux_code.precision import Precision
from aux_code.segments import append_magnitude, check_equal_length, expand_clip_scores, frame_ground_truth


@dataclass
class VideoScores:
    """Model outputs per video name: clip scores (S,) and the top-k video score."""

    clip: dict[str, np.ndarray]
    video: dict[str, float]


@torch.inference_mode()
def score_videos(
    model: nn.Module,
    data: AnomalyData,
    videos: Sequence[EvalVideo],
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    precision: Precision | None = None,
) -> VideoScores:
    """Score each video on its full clip sequence (not resampled), one video per forward.

    Videos are sharded over ranks (rank r takes videos r, r + world, ...) and the results
    gathered, so every rank returns the scores of all ``videos``. ``model`` is the bare
    MGFN (not the DDP wrapper); it is put in eval mode and restored afterwards.
    """
    was_training = model.training
    model.eval()
    clip: dict[str, np.ndarray] = {}
    video: dict[str, float] = {}
    try:
        for v in videos[rank::world_size]:
            feats = torch.from_numpy(data.eval_features(v)).to(device)  # (S, crops, D)
            x = rearrange(append_magnitude(feats), "s n c -> 1 n s c")
            with (precision or Precision("fp32", device)).autocast():
                out = model(x)
            clip[v.name] = out.scores[0].double().cpu().numpy()
            video[v.name] = float(out.video_scores[0])
    finally:
        model.train(was_training)
    if world_size > 1:
        # Every rank gets every shard, so all ranks compute the same metrics and agree on the best epoch.
        parts: list[dict | None] = [None] * world_size
        torch.distributed.all_gather_object(parts, {"clip": clip, "video": video})
        clip, video = {}, {}
        for part in parts:
            clip.update(part["clip"])
            video.update(part["video"])
    missing = [v.name for v in videos if v.name not in clip]
    if missing:
        raise RuntimeError(f"score_videos: no scores gathered for {missing[:5]} ({len(missing)} videos)")
    return VideoScores(clip, video)


def video_ground_truth(video: EvalVideo, clip_span: int) -> np.ndarray:
    """Per-frame 0/1 labels (num_clips * clip_span,) from the manifest intervals."""
    return frame_ground_truth(video.intervals, video.num_clips * clip_span)


def frame_arrays(
    videos: Sequence[EvalVideo],
    clip_scores: Mapping[str, np.ndarray],
    clip_span: int,
    *,
    rescale: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated per-frame labels and scores over ``videos`` (both (sum S_i * clip_span,)).

    rescale: LUSS-AE robust per-video rescaling of the clip scores first. A video whose
    scores do not cover exactly its ground-truth frames is a LengthMismatchError naming it.
    """
    labels, scores = [], []
    for v in videos:
        s = np.asarray(clip_scores[v.name], dtype=np.float64)
        if rescale:
            s = robust_rescale(s)
        frames = expand_clip_scores(s, clip_span=clip_span)
        gt = video_ground_truth(v, clip_span)
        check_equal_length(v.name, frames.size, gt.size)
        labels.append(gt)
        scores.append(frames)
    return np.concatenate(labels), np.concatenate(scores)


def selection_metric(
    kind: str,
    videos: Sequence[EvalVideo],
    scores: VideoScores,
    clip_span: int,
    *,
    rescale: bool = False,
) -> float:
    """The validation number a run is selected on: 'video_auc' or 'frame_auc'."""
    if kind == "video_auc":
        return frame_auc([v.label for v in videos], [scores.video[v.name] for v in videos])
    if kind == "frame_auc":
        return frame_auc(*frame_arrays(videos, scores.clip, clip_span, rescale=rescale))
    raise ValueError(f"selection_metric: unknown kind {kind!r}; expected 'video_auc' or 'frame_auc'")


def sas_streams(
    videos: Sequence[EvalVideo], clip_scores: Mapping[str, np.ndarray], *, tau: float, v: float, upper: float, lower: float
) -> dict[str, np.ndarray]:
    """The sigmoidal anomaly score (S,) of each video's raw clip-score stream, in clip order."""
    return {
        vid.name: sigmoidal_anomaly_score(clip_scores[vid.name], tau=tau, v=v, upper=upper, lower=lower) for vid in videos
    }


def evaluate_test_set(
    videos: Sequence[EvalVideo],
    scores: VideoScores,
    clip_span: int,
    *,
    rescale: bool,
    sas: Mapping[str, float],
    headline: str,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Frame metrics, the headline metric and the online (SAS) metrics of a test set.

    sas: tau, v, upper, lower, threshold. Returns (report, SAS stream per video).
    """
    labels, frame_scores = frame_arrays(videos, scores.clip, clip_span, rescale=rescale)
    frame = frame_metrics(labels, frame_scores).as_dict()
    streams = sas_streams(videos, scores.clip, tau=sas["tau"], v=sas["v"], upper=sas["upper"], lower=sas["lower"])
    sas_labels, sas_frames = frame_arrays(videos, streams, clip_span)
    report = {
        "frame": frame,
        "headline": {"metric": headline, "value": frame["roc_auc" if headline == "auc" else "average_precision"]},
        "video_auc": selection_metric("video_auc", videos, scores, clip_span),
        "online": {
            "sas_video_f1": video_level_f1([streams[v.name] for v in videos], [v.label for v in videos], threshold=sas["threshold"]),
            "sas_frame_auc": frame_auc(sas_labels, sas_frames),
            "params": dict(sas),
        },
        "robust_rescale": rescale,
        "num_frames": int(labels.size),
        "num_anomalous_frames": int(labels.sum()),
    }
    return report, streams
