"""LUSS-AE test-time scoring (Lohani et al. 2023, sections 3.2, 4.2, 4.3).

A window of T + 1 consecutive frames slides over a test video one frame at a time; its first T
frames go through the model and give three raw scores for its last frame (frame T + 1):

* A_VCR = mean over the T frames of E(reconstruction, frame)          (Eq. 12)
* A_FFP = E(predicted next frame, frame T + 1)                         (Eq. 13)
* A_PRP = softmax(PRP logits of the T frames)[accelerated]             (Eq. 14)

with E one of MSE (Eq. 8), PSE (Eq. 9: squared error of the Gaussian-smoothed difference, sigma 1,
k 5) and BPE (Eq. 11: the same blur, then stride-2 subsampling; both divided by the full C H W as
the equations write it). Blurs use zero padding (size-preserving) and the Gaussian kernel of
Eq. 10 normalised to sum 1 (a scale factor that per-video rescaling removes anyway).

The first T frames of a video end no window; they take the score of the first window (that of
frame T + 1), so a video of n frames gets exactly n scores. Videos shorter than T + 1 frames are
an error (they cannot be scored). Scoring streams the frames (memory holds one batch of windows,
whatever the video length).

Each task score is rescaled per video, robustly (x - median) / (p99 - p1) (Eq. 16) or by min-max,
and the final score is A = a1 A_VCR + a2 A_FFP + a3 A_PRP (Eq. 15) of the rescaled scores.
Frame AUC is micro-averaged (one ROC over all test frames, the paper's metric); the macro
average of per-video AUCs is reported beside it, labelled as such.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from aux_code.metrics import frame_auc, robust_rescale

# (alpha_VCR, alpha_FFP, alpha_PRP) of section 4.3.
PAPER_ALPHAS: dict[str, tuple[float, float, float]] = {
    "ped2": (0.1, 0.8, 1.0),
    "avenue": (0.1, 1.0, 0.1),
    "shanghaitech_unsupervised": (0.2, 0.2, 0.9),
}
MEASURES = ("mse", "pse", "bpe")
TASKS = ("vcr", "ffp", "prp")


def gaussian_kernel(k: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """``k x k`` Gaussian of Eq. 10, normalised to sum 1."""
    r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).float()


def frame_errors(pred: torch.Tensor, target: torch.Tensor, measure: str, *, k: int = 5, sigma: float = 1.0,
                 stride: int = 2) -> torch.Tensor:
    """Per-frame error ``n`` of ``n c h w`` frames: MSE, PSE or BPE (module docstring)."""
    diff = (pred.float() - target.float())
    n, c, h, w = diff.shape
    if measure == "mse":
        return diff.pow(2).flatten(1).mean(1)
    if measure not in ("pse", "bpe"):
        raise ValueError(f"error measure {measure!r} is not one of {', '.join(MEASURES)}")
    kernel = gaussian_kernel(k, sigma).to(diff.device).expand(c, 1, k, k)
    blurred = F.conv2d(diff, kernel, padding=k // 2, groups=c)
    if measure == "bpe":
        blurred = blurred[:, :, ::stride, ::stride]
    return blurred.pow(2).flatten(1).sum(1) / (c * h * w)


def rescale(scores: np.ndarray, how: Literal["robust", "minmax", "none"]) -> np.ndarray:
    """Per-video rescaling of one score stream (a constant stream becomes zeros)."""
    x = np.asarray(scores, dtype=np.float64)
    if how == "robust":
        return robust_rescale(x)
    if how == "minmax":
        spread = x.max() - x.min()
        return (x - x.min()) / spread if spread > 1e-12 else np.zeros_like(x)
    if how == "none":
        return x
    raise ValueError(f"rescaling {how!r} is not one of robust, minmax, none")


def windows(frames: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Sliding windows of ``size`` consecutive frames (stride 1), holding only ``size`` frames."""
    buf: deque = deque(maxlen=size)
    for f in frames:
        buf.append(f)
        if len(buf) == size:
            yield np.stack(buf)


@torch.no_grad()
def score_video(model: torch.nn.Module, frames: Iterable[np.ndarray], *, clip_len: int, batch_size: int = 8,
                device: torch.device | str = "cpu", autocast=None, video: str = "") -> dict[str, np.ndarray]:
    """Raw per-frame scores of one video, frames ``h w`` floats in [-1, 1] (an iterator is streamed).

    Returns ``vcr_<measure>``, ``ffp_<measure>`` for each measure and ``prp``, each of the video's
    length (the first ``clip_len`` frames padded with the first window's score).
    """
    import contextlib

    model.eval()
    out: dict[str, list] = {f"{t}_{m}": [] for t in ("vcr", "ffp") for m in MEASURES}
    out["prp"] = []
    n_frames = 0

    def run(batch: list[np.ndarray]) -> None:
        x = torch.from_numpy(np.stack(batch)).float().to(device)  # b (T+1) h w
        x = rearrange(x, "b t h w -> b 1 t h w")
        clip, nxt = x[:, :, :clip_len], x[:, :, clip_len]
        with autocast if autocast is not None else contextlib.nullcontext():
            recon, frame, logits = model(clip)
        recon, frame = recon.float(), frame.float()
        b = clip.shape[0]
        rec_frames = rearrange(recon, "b c t h w -> (b t) c h w")
        clip_frames = rearrange(clip, "b c t h w -> (b t) c h w")
        for m in MEASURES:
            out[f"vcr_{m}"].append(frame_errors(rec_frames, clip_frames, m).view(b, clip_len).mean(1).cpu().numpy())
            out[f"ffp_{m}"].append(frame_errors(frame, nxt, m).cpu().numpy())
        out["prp"].append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())

    def counted(it):
        nonlocal n_frames
        for f in it:
            n_frames += 1
            yield f

    batch: list[np.ndarray] = []
    for win in windows(counted(frames), clip_len + 1):
        batch.append(win)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    if n_frames < clip_len + 1:
        raise ValueError(f"test video {video or '?'} has {n_frames} frames; LUSS-AE scoring needs at least "
                         f"clip_len + 1 = {clip_len + 1}")
    result = {}
    for key, parts in out.items():
        s = np.concatenate(parts)
        result[key] = np.concatenate([np.full(clip_len, s[0]), s])
        assert result[key].shape == (n_frames,)
    return result


def combine(raw: Mapping[str, np.ndarray], alphas: Sequence[float], *, measure: str = "bpe",
            rescaling: Literal["robust", "minmax", "none"] = "robust") -> dict[str, np.ndarray]:
    """One video's rescaled task scores ``vcr``, ``ffp``, ``prp`` and their weighted sum ``final``."""
    tasks = {"vcr": rescale(raw[f"vcr_{measure}"], rescaling), "ffp": rescale(raw[f"ffp_{measure}"], rescaling),
             "prp": rescale(raw["prp"], rescaling)}
    tasks["final"] = sum(a * tasks[t] for a, t in zip(alphas, TASKS))
    return tasks


def micro_macro_auc(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> dict[str, float | int]:
    """Micro AUC (one ROC over all frames of all videos) and macro AUC (mean of per-video AUCs over the
    videos holding both classes; ``macro_videos`` says how many)."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} label arrays but {len(scores)} score arrays")
    for i, (y, s) in enumerate(zip(labels, scores)):
        if len(y) != len(s):
            raise ValueError(f"video {i}: {len(y)} labels but {len(s)} scores")
    micro = frame_auc(np.concatenate(labels), np.concatenate(scores))
    per = [frame_auc(y, s) for y, s in zip(labels, scores) if 0 < np.sum(y) < len(y)]
    return {"micro_auc": micro, "macro_auc": float(np.mean(per)) if per else float("nan"), "macro_videos": len(per)}
