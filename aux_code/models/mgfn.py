"""MGFN (Chen et al., AAAI 2023): magnitude-contrastive glance-and-focus network.

Layouts: a video is (B, T, D + 1) segment features whose last channel is the feature L2
magnitude (see :func:`append_magnitude`), or (B, ncrops, T, D + 1) for 10-crop features.
Inside the network a sequence is (N, C, T) with N = B * ncrops, because every block is a
1-D convolution over time.

10-crop policy, as MGFN's code does it: the crops are flattened into the batch for the
backbone; per-segment scores and feature magnitudes are then averaged over the crops, the
top-k segments are chosen on the crop-averaged magnitudes, and the selected features are
kept per crop (the magnitude-contrastive loss sees every crop).

Deliberate details that reproduce the public code (and its parameter count, 28,652,773 at
the paper size):

- Glance normalises its input with the channel LayerNorm; Focus with BatchNorm1d.
- Focus splits the value channels as ``(dim_head heads)`` (head index fastest) and runs a
  grouped Conv1d(heads, heads, 5, groups=heads) over time, so all dim_head channels of one
  head share one 5-tap kernel and one bias: heads * 6 parameters per block.
- The head's LayerNorm is torch's standard LayerNorm over the last axis (eps inside the
  square root), unlike the channel LayerNorm of the blocks.
- Top-k magnitudes are the L2 norms of the head features *after* that LayerNorm, which is
  what the public code feeds to its selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from aux_code.segments import append_magnitude

__all__ = [
    "MGFN",
    "MGFNOutput",
    "MGFN_PRESETS",
    "append_magnitude",
    "build_mgfn",
    "count_parameters",
    "select_topk_segments",
]

BlockType = Literal["glance", "focus"]

MGFN_PRESETS: dict[str, dict] = {
    # The published configuration (UCF-Crime / XD-Violence with 2048-d I3D features).
    "paper": {"dims": (64, 128, 1024), "depths": (3, 3, 2), "block_types": ("glance", "focus", "focus"), "dim_head": 64},
    # About 78k parameters at feature_dim 64: CPU tests and the synthetic world.
    "tiny": {"dims": (16, 32, 64), "depths": (1, 1, 1), "block_types": ("glance", "focus", "focus"), "dim_head": 16},
}


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of (N, C, T): (x - mean) / (std + eps) * g + b.

    eps is added to the standard deviation, not the variance, as in MGFN's code.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        std = x.var(dim=1, unbiased=False, keepdim=True).sqrt()
        return (x - mean) / (std + self.eps) * self.g + self.b


class FeedForward(nn.Module):
    """(N, C, T) -> (N, C, T): channel LayerNorm, 1x1 conv to mult*C, GELU, 1x1 conv back."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ChannelLayerNorm(dim),
            nn.Conv1d(dim, dim * mult, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv1d(dim * mult, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Glance(nn.Module):
    """Full softmax self-attention over time. (N, C, T) -> (N, C, T)."""

    def __init__(self, dim: int, *, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.norm = ChannelLayerNorm(dim)
        self.to_qkv = nn.Conv1d(dim, inner * 3, 1, bias=False)
        self.to_out = nn.Conv1d(inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (rearrange(t, "n (h d) t -> n h t d", h=self.heads) for t in (q, k, v))
        attn = torch.einsum("nhid,nhjd->nhij", q * self.scale, k).softmax(dim=-1)
        out = torch.einsum("nhij,nhjd->nhid", attn, v)
        return self.to_out(rearrange(out, "n h t d -> n (h d) t"))


class Focus(nn.Module):
    """Local temporal aggregation without attention weights. (N, C, T) -> (N, C, T)."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, kernel: int = 5) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"Focus: kernel must be odd to keep the length T, got {kernel}")
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.BatchNorm1d(dim)
        self.to_v = nn.Conv1d(dim, inner, 1, bias=False)
        # One kernel per head, shared by that head's dim_head channels (see module docstring).
        self.rel_pos = nn.Conv1d(heads, heads, kernel, padding=kernel // 2, groups=heads)
        self.to_out = nn.Conv1d(inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        v = self.to_v(self.norm(x))
        v = rearrange(v, "n (d h) t -> (n d) h t", h=self.heads)
        out = self.rel_pos(v)
        out = rearrange(out, "(n d) h t -> n (d h) t", n=n)
        return self.to_out(out)


class Stage(nn.Module):
    """``depth`` blocks of: shortcut conv, Glance/Focus, feed-forward, each residual."""

    def __init__(self, dim: int, *, depth: int, block_type: BlockType, dim_head: int, ff_mult: int, focus_kernel: int, dropout: float) -> None:
        super().__init__()
        if dim % dim_head != 0:
            raise ValueError(f"MGFN stage: dim {dim} is not a multiple of dim_head {dim_head}")
        heads = dim // dim_head
        blocks = []
        for _ in range(depth):
            if block_type == "glance":
                mixer: nn.Module = Glance(dim, heads=heads, dim_head=dim_head)
            elif block_type == "focus":
                mixer = Focus(dim, heads=heads, dim_head=dim_head, kernel=focus_kernel)
            else:
                raise ValueError(f"MGFN stage: block type {block_type!r} unknown; expected 'glance' or 'focus'")
            blocks.append(
                nn.ModuleList([nn.Conv1d(dim, dim, 3, padding=1), mixer, FeedForward(dim, mult=ff_mult, dropout=dropout)])
            )
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for shortcut, mixer, ff in self.blocks:
            x = shortcut(x) + x
            x = mixer(x) + x
            x = ff(x) + x
        return x


class MGFNOutput(NamedTuple):
    """What one MGFN forward returns (a NamedTuple so DDP and tracing see plain tensors).

    scores: (B, T) per-segment anomaly scores in [0, 1], averaged over crops.
    magnitudes: (B, T) L2 norms of the head features, averaged over crops (no dropout).
    topk_indices: (B, k) segments chosen by (dropout-masked, in training) magnitude.
    video_scores: (B,) mean of ``scores`` at topk_indices.
    topk_features: (B, ncrops, k, C) head features of the chosen segments, per crop.
    """

    scores: torch.Tensor
    magnitudes: torch.Tensor
    topk_indices: torch.Tensor
    video_scores: torch.Tensor
    topk_features: torch.Tensor


class MGFN(nn.Module):
    """MGFN over segment features with an appended magnitude channel.

    Input (B, T, feature_dim + 1) or (B, ncrops, T, feature_dim + 1); returns
    :class:`MGFNOutput`. T is 32 in training (after :func:`process_feat`) and the full
    number of clips at test time; k is capped at T for videos shorter than k clips.
    """

    def __init__(
        self,
        *,
        feature_dim: int = 2048,
        dims: Sequence[int] = (64, 128, 1024),
        depths: Sequence[int] = (3, 3, 2),
        block_types: Sequence[BlockType] = ("glance", "focus", "focus"),
        dim_head: int = 64,
        ff_mult: int = 4,
        focus_kernel: int = 5,
        magnitude_ratio: float = 0.1,
        k: int = 3,
        magnitude_dropout: float = 0.7,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims, depths, block_types = tuple(dims), tuple(depths), tuple(t.lower() for t in block_types)
        if not (len(dims) == len(depths) == len(block_types)) or not dims:
            raise ValueError(
                f"MGFN: dims {dims}, depths {depths} and block_types {block_types} must be non-empty and of equal length"
            )
        if k < 1:
            raise ValueError(f"MGFN: k must be >= 1, got {k}")
        self.feature_dim = feature_dim
        self.k = k
        self.magnitude_ratio = magnitude_ratio
        self.magnitude_dropout = magnitude_dropout
        self.to_tokens = nn.Conv1d(feature_dim, dims[0], 3, padding=1)
        self.to_mag = nn.Conv1d(1, dims[0], 3, padding=1)
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, (dim, depth, block_type) in enumerate(zip(dims, depths, block_types)):
            self.stages.append(
                Stage(dim, depth=depth, block_type=block_type, dim_head=dim_head, ff_mult=ff_mult, focus_kernel=focus_kernel, dropout=dropout)
            )
            if i + 1 < len(dims):
                self.transitions.append(nn.Sequential(ChannelLayerNorm(dim), nn.Conv1d(dim, dims[i + 1], 1)))
        self.head_norm = nn.LayerNorm(dims[-1])
        self.fc = nn.Linear(dims[-1], 1)

    def forward(self, video: torch.Tensor) -> MGFNOutput:
        if video.ndim == 3:
            video = rearrange(video, "b t c -> b 1 t c")
        if video.ndim != 4 or video.shape[-1] != self.feature_dim + 1:
            raise ValueError(
                f"MGFN: expected input (B, T, {self.feature_dim + 1}) or (B, ncrops, T, {self.feature_dim + 1}) "
                f"(features plus the magnitude channel), got {tuple(video.shape)}"
            )
        b, ncrops, t = video.shape[:3]
        if t == 0:
            raise ValueError("MGFN: the input has T = 0 segments; expected at least one")
        x = rearrange(video, "b n t c -> (b n) c t")
        feats, magnitude = x[:, : self.feature_dim], x[:, self.feature_dim :]
        x = self.to_tokens(feats) + self.magnitude_ratio * self.to_mag(magnitude)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        head = self.head_norm(rearrange(x, "bn c t -> bn t c"))
        seg_scores = torch.sigmoid(rearrange(self.fc(head), "bn t 1 -> bn t"))

        head = rearrange(head, "(b n) t c -> b n t c", b=b)
        seg_scores = rearrange(seg_scores, "(b n) t -> b n t", b=b)
        return select_topk_segments(
            head, seg_scores, k=self.k, magnitude_dropout=self.magnitude_dropout, training=self.training
        )


def select_topk_segments(
    features: torch.Tensor,
    scores: torch.Tensor,
    *,
    k: int,
    magnitude_dropout: float,
    training: bool,
) -> MGFNOutput:
    """MGFN's magnitude selection over per-crop head features and scores.

    features: (B, ncrops, T, C); scores: (B, ncrops, T). Scores and magnitudes (L2 norm
    over C) are averaged over crops; the k largest crop-averaged magnitudes are chosen
    (capped at T); the chosen features are gathered from every crop.
    """
    if features.ndim != 4 or scores.shape != features.shape[:3]:
        raise ValueError(
            f"select_topk_segments: expected features (B, ncrops, T, C) and scores (B, ncrops, T), "
            f"got {tuple(features.shape)} and {tuple(scores.shape)}"
        )
    b, ncrops, t, c = features.shape
    mean_scores = reduce(scores, "b n t -> b t", "mean")
    magnitudes = reduce(torch.linalg.vector_norm(features, dim=-1), "b n t -> b t", "mean")
    k = min(k, t)
    # The 0 or 1/(1-p) mask makes top-k skip random segments in training, so the video
    # score is not always built from the same few; F.dropout is the identity in eval.
    keep = F.dropout(torch.ones_like(magnitudes), p=magnitude_dropout, training=training)
    topk_indices = torch.topk(magnitudes.detach() * keep, k, dim=1).indices
    video_scores = torch.gather(mean_scores, 1, topk_indices).mean(dim=1)
    index = rearrange(topk_indices, "b k -> b 1 k 1").expand(b, ncrops, k, c)
    topk_features = torch.gather(features, 2, index)
    return MGFNOutput(mean_scores, magnitudes, topk_indices, video_scores, topk_features)


def build_mgfn(*, preset: Literal["paper", "tiny"] = "paper", feature_dim: int = 2048, **overrides: object) -> MGFN:
    """MGFN from a named size preset; ``overrides`` replace any MGFN keyword (k, dims, ...)."""
    if preset not in MGFN_PRESETS:
        raise ValueError(f"build_mgfn: preset {preset!r} unknown; expected one of {sorted(MGFN_PRESETS)}")
    kwargs = {**MGFN_PRESETS[preset], **overrides}
    return MGFN(feature_dim=feature_dim, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in module.parameters())
