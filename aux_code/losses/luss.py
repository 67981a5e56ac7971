"""LUSS-AE training objective and clip sampling (Lohani et al. 2023, section 3.1, Eqs. 1-7).

A training sample of a (normal) video with ``n`` frames is

* a non-strided window of T + 1 frames starting at ``start``: its first T frames are X_VCR (the
  autoencoder's input and reconstruction target), frame T + 1 is X_FFP (the future frame);
* a PRP clip of T frames, original playback (label 0, stride 1) or accelerated (label 1, stride
  s in {2, 3, 4, 5}, i.e. skipping 1-4 frames: 2x-5x), drawn 50/50, s uniform over the four.

L = l1 * L_VCR + l2 * L_FFP + l3 * L_PRP with MSE, MSE and cross-entropy (the paper's
lambda = 0.6, 0.4, 1). Labels here are 0-based: 0 = original (the paper's c = 1), 1 =
accelerated (c = 2); A_PRP is softmax(logits)[:, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ACCELERATED_STRIDES = (2, 3, 4, 5)
ORIGINAL, ACCELERATED = 0, 1


def clip_indices(start: int, length: int, stride: int) -> np.ndarray:
    """Frame indices of V_{l,s} starting at ``start`` (Eq. 1): start, start + s, ..., start + (l - 1) s."""
    return start + stride * np.arange(length)


@dataclass(frozen=True)
class PrpDraw:
    """One PRP clip: its label (0 original / 1 accelerated), temporal stride and frame indices."""

    label: int
    stride: int
    indices: np.ndarray


def draw_prp(rng: np.random.Generator, n_frames: int, clip_len: int, *, video: str = "") -> PrpDraw:
    """Draw a PRP clip of ``clip_len`` frames from a video of ``n_frames``: 50/50 original or
    accelerated; an accelerated stride that does not fit the video is redrawn among those that do
    (a video shorter than the 2x clip gives original clips only)."""
    if n_frames < clip_len:
        raise ValueError(f"video {video or '?'} has {n_frames} frames, fewer than the PRP clip length {clip_len}")
    label = int(rng.integers(2))
    stride = 1
    if label == ACCELERATED:
        fits = [s for s in ACCELERATED_STRIDES if (clip_len - 1) * s + 1 <= n_frames]
        if fits:
            stride = int(fits[rng.integers(len(fits))])
        else:
            label = ORIGINAL
    span = (clip_len - 1) * stride + 1
    start = int(rng.integers(n_frames - span + 1))
    return PrpDraw(label, stride, clip_indices(start, clip_len, stride))


@dataclass(frozen=True)
class LossWeights:
    vcr: float = 0.6
    ffp: float = 0.4
    prp: float = 1.0


def luss_loss(recon: torch.Tensor, clip: torch.Tensor, frame_pred: torch.Tensor, frame: torch.Tensor,
              logits: torch.Tensor, labels: torch.Tensor, weights: LossWeights) -> dict[str, torch.Tensor]:
    """Eq. 7 in fp32. recon, clip: ``b c T h w``; frame_pred, frame: ``b c h w``; logits ``b 2``;
    labels ``b`` (0/1). Returns the terms ``loss``, ``vcr``, ``ffp``, ``prp`` (the stepper's input)."""
    vcr = F.mse_loss(recon.float(), clip.float())
    ffp = F.mse_loss(frame_pred.float(), frame.float())
    prp = F.cross_entropy(logits.float(), labels.long())
    loss = weights.vcr * vcr + weights.ffp * ffp + weights.prp * prp
    return {"loss": loss, "vcr": vcr, "ffp": ffp, "prp": prp}
