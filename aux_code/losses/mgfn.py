"""MGFN training loss: top-k BCE + smoothness + sparsity + magnitude contrast.

Forms and defaults follow MGFN's public training code (REFERENCE.md section 3):

- bce: mean binary cross-entropy of the top-k video scores against the video labels.
- smoothness: 8e-4 * sum over every video and t of (s[t+1] - s[t])^2.
- sparsity: 8e-3 * ||s||_2, the L2 norm of all segment scores of one class flattened.
  ``sparsity_target="abnormal"`` is the RTFM lineage MGFN builds on (RTFM's code applies
  it to the abnormal half); ``"normal"`` is what MGFN's public train.py does (it indexes
  the first, normal, half of the batch). Both are exposed; which one the paper meant is
  ambiguous in the sources.
- magnitude contrast (MGFN's ContrastiveLoss): each selected segment is summarised by the
  L1 norm of its head feature, so a video crop gives a k-vector. Then
    separation = mean over pairs (abnormal row i, normal row i) of max(margin - d, 0)^2,
    compact_c  = mean over pairs (row i, row i + R//2) of class c of d^2,
  with d the Euclidean distance between the k-vectors and rows ordered crop-major
  ((ncrops B) flattening, as MGFN's per-crop concatenation). Weighted 1e-3 * 1e-3 for the
  separation and 1e-3 for each compact term, as MGFN's ``0.001 * (0.001 * con + con_a + con_n)``.

Deviation, documented: torch's ``pairwise_distance`` adds 1e-6 to the difference before
the norm; the distances here are exact. The effect on the loss is below 1e-5 relative.
When a class has an odd number R of rows, MGFN's slicing pairs mismatched shapes and
fails; here the R//2 pairs are used and the last row is left out (no pair, zero term
when R < 2).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["mgfn_loss", "smoothness_term", "sparsity_term", "magnitude_contrast_terms"]

SparsityTarget = Literal["abnormal", "normal"]


def smoothness_term(scores: torch.Tensor) -> torch.Tensor:
    """Unweighted sum over videos and t of (s[t+1] - s[t])^2; scores (B, T) -> scalar."""
    return (scores[:, 1:] - scores[:, :-1]).pow(2).sum()


def sparsity_term(scores: torch.Tensor) -> torch.Tensor:
    """Unweighted L2 norm of all the given segment scores flattened; (B', T) -> scalar."""
    return torch.linalg.vector_norm(rearrange(scores, "b t -> (b t)"), ord=2)


def _rows(l1: torch.Tensor) -> torch.Tensor:
    """(B', ncrops, k) L1 norms -> (ncrops * B', k) rows, crop-major as MGFN concatenates."""
    return rearrange(l1, "b n k -> (n b) k")


def _compact(rows: torch.Tensor) -> torch.Tensor:
    half = rows.shape[0] // 2
    if half == 0:
        return rows.sum() * 0.0  # keeps the graph and the dtype/device
    diff = rows[half : 2 * half] - rows[:half]
    return diff.pow(2).sum(dim=1).mean()


def magnitude_contrast_terms(
    normal_features: torch.Tensor, abnormal_features: torch.Tensor, *, margin: float = 200.0
) -> dict[str, torch.Tensor]:
    """Unweighted separation / compact_normal / compact_abnormal terms.

    normal_features, abnormal_features: (B', ncrops, k, C) top-k head features of the normal
    and the abnormal videos; MGFN pairs them row by row, so B' must match.
    """
    if normal_features.shape != abnormal_features.shape:
        raise ValueError(
            "magnitude contrast: normal and abnormal top-k features must have the same shape "
            f"(MGFN pairs them video by video), got {tuple(normal_features.shape)} and "
            f"{tuple(abnormal_features.shape)}; use equal normal/abnormal batch sizes with drop_last"
        )
    normal = _rows(normal_features.abs().sum(dim=-1))
    abnormal = _rows(abnormal_features.abs().sum(dim=-1))
    if normal.shape[0] == 0:
        zero = normal_features.sum() * 0.0
        return {"separation": zero, "compact_normal": zero, "compact_abnormal": zero}
    distance = torch.linalg.vector_norm(abnormal - normal, ord=2, dim=1)
    separation = torch.clamp(margin - distance, min=0.0).pow(2).mean()
    return {"separation": separation, "compact_normal": _compact(normal), "compact_abnormal": _compact(abnormal)}


def mgfn_loss(
    *,
    scores: torch.Tensor,
    video_scores: torch.Tensor,
    labels: torch.Tensor,
    topk_features: torch.Tensor,
    smoothness_weight: float = 8e-4,
    sparsity_weight: float = 8e-3,
    sparsity_target: SparsityTarget = "abnormal",
    margin: float = 200.0,
    separation_weight: float = 1e-3 * 1e-3,
    compact_weight: float = 1e-3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total MGFN loss and its weighted terms (the terms sum to the total).

    scores: (B, T) segment scores; video_scores: (B,) top-k means; labels: (B,) 0 normal /
    1 abnormal, in any order; topk_features: (B, ncrops, k, C). These are the fields of
    :class:`aux_code.models.mgfn.MGFNOutput`.
    Returns (total, {"bce", "smoothness", "sparsity", "separation", "compact_normal",
    "compact_abnormal"}).
    """
    if scores.ndim != 2 or video_scores.shape != (scores.shape[0],) or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"mgfn_loss: expected scores (B, T), video_scores (B,), labels (B,); got {tuple(scores.shape)}, "
            f"{tuple(video_scores.shape)}, {tuple(labels.shape)}"
        )
    if topk_features.ndim != 4 or topk_features.shape[0] != scores.shape[0]:
        raise ValueError(f"mgfn_loss: expected topk_features (B, ncrops, k, C) with B={scores.shape[0]}, got {tuple(topk_features.shape)}")
    if sparsity_target not in ("abnormal", "normal"):
        raise ValueError(f"mgfn_loss: sparsity_target {sparsity_target!r} unknown; expected 'abnormal' or 'normal'")
    target = labels.to(video_scores.dtype)
    if not bool(((target == 0) | (target == 1)).all()):
        raise ValueError(f"mgfn_loss: labels must be 0 (normal) or 1 (abnormal), got {labels.tolist()}")
    is_abnormal = target == 1

    # binary_cross_entropy refuses to run under CUDA autocast (it is unsafe in float16), so
    # it is computed in float32 with autocast off whatever precision the model ran in.
    with torch.autocast(device_type=video_scores.device.type, enabled=False):
        bce = F.binary_cross_entropy(video_scores.float(), target.float())
    smoothness = smoothness_weight * smoothness_term(scores)
    chosen = is_abnormal if sparsity_target == "abnormal" else ~is_abnormal
    sparsity = sparsity_weight * sparsity_term(scores[chosen])
    contrast = magnitude_contrast_terms(topk_features[~is_abnormal], topk_features[is_abnormal], margin=margin)
    terms = {
        "bce": bce,
        "smoothness": smoothness,
        "sparsity": sparsity,
        "separation": separation_weight * contrast["separation"],
        "compact_normal": compact_weight * contrast["compact_normal"],
        "compact_abnormal": compact_weight * contrast["compact_abnormal"],
    }
    total = torch.stack(list(terms.values())).sum()
    return total, terms
