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

Computation: the parameters are the public code's Conv1d modules (same names and shapes, so
its checkpoints load), but the network runs token-major, (N, T, C), and computes every
convolution as one matrix product: a k-tap Conv1d over time is ``linear`` of the k shifted
copies of the sequence stacked on channels (:func:`conv_tokens`), the Focus kernel is k
shifted multiply-adds, Glance is ``scaled_dot_product_attention``. On the AVX2 benchmark CPU
a paper-size training step ran at 47-51 GFLOP per CPU second through Conv1d (oneDNN's 1-D
convolutions and their backward) and at 58-64 as matrix products, whose sgemm runs near the
core's peak (docs/benchmarks.md, stage 4). Each block's ``forward`` still takes and
returns (N, C, T); :meth:`tokens` is the token-major form the network chains. The
straightforward Conv1d/einsum formulation is kept in tests/test_mgfn.py and in
benchmarks/bench_anomaly.py's reference, which check and time the two against each other.
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
    "conv_tokens",
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


def conv_tokens(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` (stride 1, 'same' padding, no groups) applied to token-major (N, T, C_in) -> (N, T, C_out).

    One matrix product: the k time-shifted copies of x stacked on channels, in the order of
    the weight's (C_in, k) trailing axes, against the weight flattened to (C_out, C_in * k).
    """
    k = conv.kernel_size[0]
    if k == 1:
        return F.linear(x, conv.weight[:, :, 0], conv.bias)
    pad = conv.padding[0]
    t = x.shape[1]
    windows = F.pad(x, (0, 0, pad, pad)).unfold(1, k, 1)[:, :t]  # (N, T, C_in, k)
    return F.linear(windows.reshape(*windows.shape[:2], -1), conv.weight.flatten(1), conv.bias)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of (N, C, T): (x - mean) / (std + eps) * g + b.

    eps is added to the standard deviation, not the variance, as in MGFN's code.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
        return (x - mean) / (var.sqrt() + self.eps) * self.g.view(-1) + self.b.view(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x.transpose(1, 2)).transpose(1, 2)


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

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        norm, up, gelu, dropout, down = self.net
        return conv_tokens(dropout(gelu(conv_tokens(norm.tokens(x), up))), down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x.transpose(1, 2)).transpose(1, 2)


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

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        # Channels are (3 heads dim_head): q, k, v, each head-major, as the public code chunks them.
        qkv = conv_tokens(self.norm.tokens(x), self.to_qkv).view(n, t, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, dim_head)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return conv_tokens(out.transpose(1, 2).reshape(n, t, -1), self.to_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x.transpose(1, 2)).transpose(1, 2)


class Focus(nn.Module):
    """Local temporal aggregation without attention weights. (N, C, T) -> (N, C, T)."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, kernel: int = 5) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"Focus: kernel must be odd to keep the length T, got {kernel}")
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.norm = nn.BatchNorm1d(dim)
        self.to_v = nn.Conv1d(dim, inner, 1, bias=False)
        # One kernel per head, shared by that head's dim_head channels (see module docstring).
        self.rel_pos = nn.Conv1d(heads, heads, kernel, padding=kernel // 2, groups=heads)
        self.to_out = nn.Conv1d(inner, dim, 1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        # BatchNorm1d over (N*T, C) pools the same N and T per channel as over (N, C, T).
        v = conv_tokens(self.norm(x.reshape(n * t, c)).view(n, t, c), self.to_v)
        # Value channel d * heads + h belongs to head h: tile the per-head taps over d.
        taps = self.rel_pos.weight[:, 0, :].repeat(self.dim_head, 1)  # (inner, k)
        k = taps.shape[1]
        padded = F.pad(v, (0, 0, k // 2, k // 2))
        out = self.rel_pos.bias.repeat(self.dim_head) + padded[:, :t] * taps[:, 0]
        for j in range(1, k):
            out = out + padded[:, j : j + t] * taps[:, j]
        return conv_tokens(out, self.to_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x.transpose(1, 2)).transpose(1, 2)


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

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        for shortcut, mixer, ff in self.blocks:
            x = conv_tokens(x, shortcut) + x
            x = mixer.tokens(x) + x
            x = ff.tokens(x) + x
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x.transpose(1, 2)).transpose(1, 2)


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
        x = rearrange(video, "b n t c -> (b n) t c")  # token-major: a view, no copy
        feats, magnitude = x[..., : self.feature_dim], x[..., self.feature_dim :]
        x = conv_tokens(feats, self.to_tokens) + self.magnitude_ratio * conv_tokens(magnitude, self.to_mag)
        for i, stage in enumerate(self.stages):
            x = stage.tokens(x)
            if i < len(self.transitions):
                norm, project = self.transitions[i]
                x = conv_tokens(norm.tokens(x), project)
        head = self.head_norm(x)
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
