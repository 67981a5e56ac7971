"""I3D-ResNet-50: the utility model fT of TeD-SPAD, plus key converters for public weights.

Input clips are RGB float in [0, 1], (B, 3, T, H, W). The model normalises them itself with
mean 0.45 and std 0.225 on every channel: pytorch-resnet3d feeds 0..255 frames with
mean 114.75 / std 57.375 (the same numbers), and pytorchvideo's i3d_r50 uses 0.45 / 0.225.

Architecture (ResNet-50 inflated to 3D, as in the Caffe2 video-nonlocal-net baseline that
pytorch-resnet3d ports): stem conv (5, 7, 7), spatial max-pool, a temporal max-pool (2, 1, 1)
after layer1, bottlenecks [3, 4, 6, 3] whose first conv is (3, 1, 1) or (1, 1, 1) in the
pattern below, 3x3 spatial conv carrying the stride, global average pool to
``feature_dim`` (2048 at full size), dropout 0.5, linear classifier.

Two stems, same weights (shapes are identical, strides differ):

- ``"resnet3d"`` (default, REFERENCE.md s.2, pytorch-resnet3d): conv stride (2, 2, 2) with
  padding (2, 3, 3), then max-pool kernel (2, 3, 3) stride (2, 2, 2) without padding.
  16 frames leave 2 time steps at layer2..4.
- ``"pytorchvideo"``: conv stride (1, 2, 2), max-pool kernel (1, 3, 3) stride (1, 2, 2)
  padding (0, 1, 1), as in pytorchvideo's ``i3d_r50`` (trained on 8-frame clips).

Our state-dict names (``stem.conv``, ``layer2.0.conv_a``, ``layer2.0.proj_bn``, ``fc``) are
mapped from the public layouts by :func:`resnet3d_to_ours` and :func:`pytorchvideo_to_ours`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "I3DResNet",
    "I3D_R50_TEMPORAL_KERNELS",
    "resnet3d_to_ours",
    "ours_to_resnet3d",
    "pytorchvideo_to_ours",
    "ours_to_pytorchvideo",
]

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)

# Temporal kernel of each bottleneck's first conv, per stage, in the public I3D-R50
# (pytorch-resnet3d temp_conv [1,1,1], [1,0,1,0], [1,0,1,0,1,0], [0,1,0];
# pytorchvideo stage_conv_a_kernel_size (3,1,1), [(3,1,1),(1,1,1)], ..., [(1,1,1),(3,1,1)]).
I3D_R50_TEMPORAL_KERNELS: tuple[tuple[int, ...], ...] = (
    (3, 3, 3),
    (3, 1, 3, 1),
    (3, 1, 3, 1, 3, 1),
    (1, 3, 1),
)

Stem = Literal["resnet3d", "pytorchvideo"]
ClipInput = Literal["rgb", "difference", "rgb_difference"]
CLIP_INPUTS: tuple[str, ...] = ("rgb", "difference", "rgb_difference")
RGB_DIFFERENCE_FRAME_SCALE = 0.1


class Bottleneck3d(nn.Module):
    """(B, C_in, T, H, W) -> (B, 4 * inner, T, H / s, W / s).

    conv_a (k_t, 1, 1) -> conv_b (1, 3, 3) with spatial stride s -> conv_c (1, 1, 1), each
    followed by BN; ReLU after the first two and after the residual sum. ``proj_*`` is the
    1x1 shortcut used when the shape changes.
    """

    def __init__(self, in_channels: int, inner: int, *, temporal_kernel: int, spatial_stride: int):
        super().__init__()
        if temporal_kernel % 2 != 1:
            raise ValueError(f"Bottleneck3d: temporal_kernel must be odd, got {temporal_kernel}")
        out = 4 * inner
        self.conv_a = nn.Conv3d(in_channels, inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.bn_a = nn.BatchNorm3d(inner)
        self.conv_b = nn.Conv3d(inner, inner, (1, 3, 3), stride=(1, spatial_stride, spatial_stride), padding=(0, 1, 1), bias=False)
        self.bn_b = nn.BatchNorm3d(inner)
        self.conv_c = nn.Conv3d(inner, out, 1, bias=False)
        self.bn_c = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        if in_channels != out or spatial_stride != 1:
            self.proj_conv = nn.Conv3d(in_channels, out, 1, stride=(1, spatial_stride, spatial_stride), bias=False)
            self.proj_bn = nn.BatchNorm3d(out)
        else:
            self.proj_conv = None
            self.proj_bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj_conv is None else self.proj_bn(self.proj_conv(x))
        y = self.relu(self.bn_a(self.conv_a(x)))
        y = self.relu(self.bn_b(self.conv_b(y)))
        y = self.bn_c(self.conv_c(y))
        return self.relu(y + shortcut)


class _Stem(nn.Module):
    """conv (5, 7, 7) + BN + ReLU + max-pool: (B, C, T, H, W) -> (B, width, T', H/4, W/4), C = in_channels."""

    def __init__(self, width: int, variant: Stem, in_channels: int = 3):
        super().__init__()
        if variant == "resnet3d":
            conv_stride, pool_kernel, pool_stride, pool_pad = (2, 2, 2), (2, 3, 3), (2, 2, 2), (0, 0, 0)
        elif variant == "pytorchvideo":
            conv_stride, pool_kernel, pool_stride, pool_pad = (1, 2, 2), (1, 3, 3), (1, 2, 2), (0, 1, 1)
        else:
            raise ValueError(f"I3DResNet: stem must be 'resnet3d' or 'pytorchvideo', got {variant!r}")
        self.conv = nn.Conv3d(in_channels, width, (5, 7, 7), stride=conv_stride, padding=(2, 3, 3), bias=False)
        self.bn = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d(pool_kernel, stride=pool_stride, padding=pool_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


class I3DResNet(nn.Module):
    """I3D-ResNet: (B, 3, T, H, W) RGB in [0, 1] -> (logits (B, num_classes), feature (B, feature_dim)).

    ``width`` is the stem width (64 at full size); stage ``i`` has inner width
    ``width * 2**i`` and output ``4 * width * 2**i``, so ``feature_dim = 32 * width``.
    ``blocks`` is the number of bottlenecks per stage ([3, 4, 6, 3] for ResNet-50); the
    temporal kernels follow :data:`I3D_R50_TEMPORAL_KERNELS`, cut or cycled to ``blocks``.
    The feature is the global average after layer4 (before dropout); logits are
    ``fc(dropout(feature))``.

    ``clip_input="difference"`` feeds the stem frame differences (frame t minus frame t-1,
    zero for the first frame) instead of the normalised frames. The paper's fT is RGB with
    Kinetics weights; the synthetic world's tiny fT is trained from scratch on a few hundred
    clips, where an RGB stem learns the scenes and people first and motion hardly at all
    (docs/benchmarks.md, "Synthetic fT"). ``clip_input="rgb_difference"`` feeds both, stacked
    on channels (B, 6, T, H, W): the differences carry the motion the tiny fT learns from,
    the frames keep appearance, so a still image (no difference at all) still gets a feature
    of its own, as it does from the paper's RGB fT (Table 1's feature probe needs that).
    """

    def __init__(
        self,
        *,
        num_classes: int = 400,
        width: int = 64,
        blocks: Sequence[int] = (3, 4, 6, 3),
        temporal_kernels: Sequence[Sequence[int]] | None = None,
        stem: Stem = "resnet3d",
        dropout: float = 0.5,
        clip_input: ClipInput = "rgb",
    ):
        super().__init__()
        if clip_input not in CLIP_INPUTS:
            raise ValueError(f"I3DResNet: clip_input must be one of {', '.join(CLIP_INPUTS)}, got {clip_input!r}")
        self.clip_input = clip_input
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"I3DResNet: blocks must be 4 positive counts, got {tuple(blocks)}")
        kernels = temporal_kernels or I3D_R50_TEMPORAL_KERNELS
        if len(kernels) != 4:
            raise ValueError(f"I3DResNet: temporal_kernels must give 4 stages, got {len(kernels)}")
        self.num_classes = num_classes
        self.width = width
        self.blocks = tuple(blocks)
        self.stem_variant = stem
        self.feature_dim = 32 * width
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1, 1), persistent=False)

        self.stem = _Stem(width, stem, in_channels=6 if clip_input == "rgb_difference" else 3)
        in_ch = width
        stages = []
        for i, (n, ks) in enumerate(zip(self.blocks, kernels, strict=True)):
            inner = width * 2**i
            layer = []
            for j in range(n):
                layer.append(
                    Bottleneck3d(
                        in_ch,
                        inner,
                        temporal_kernel=ks[j % len(ks)],
                        spatial_stride=2 if (i > 0 and j == 0) else 1,
                    )
                )
                in_ch = 4 * inner
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # Halves time once more; the public I3D-R50 does this after layer1.
        self.temporal_pool = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()

    @property
    def min_frames(self) -> int:
        """Fewest input frames that leave at least one time step after the temporal pools."""
        return 7 if self.stem_variant == "resnet3d" else 2

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [0, 1] -> layer4 map (B, feature_dim, T', H', W')."""
        if clip.dim() != 5 or clip.shape[1] != 3:
            raise ValueError(f"I3DResNet expects clips (B, 3, T, H, W), got shape {tuple(clip.shape)}")
        if clip.shape[2] < self.min_frames:
            raise ValueError(
                f"I3DResNet (stem {self.stem_variant!r}) needs at least {self.min_frames} frames, got {clip.shape[2]}"
            )
        # Differences along T, a zero first step keeps T: (B, 3, T, H, W).
        if self.clip_input == "rgb":
            x = (clip - self.mean) / self.std
        elif self.clip_input == "difference":
            x = torch.diff(clip, dim=2, prepend=clip[:, :, :1]) / self.std
        else:
            # The frames enter at a tenth of their scale: at full scale the stem fitted people
            # and places first (12% validation top-1 after 20 epochs, the differences alone 48%
            # after 10), while a tenth still gives every still picture a feature of its own.
            frames = RGB_DIFFERENCE_FRAME_SCALE * (clip - self.mean) / self.std
            differences = torch.diff(clip, dim=2, prepend=clip[:, :, :1]) / self.std
            x = torch.cat([frames, differences], dim=1)  # (B, 6, T, H, W)
        x = self.stem(x)
        x = self.temporal_pool(self.layer1(x))
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [0, 1] -> (logits (B, num_classes), feature (B, feature_dim))."""
        feature = self.feature_map(clip).mean(dim=(2, 3, 4))
        return self.fc(self.dropout(feature)), feature


# --------------------------------------------------------------------------- key layouts

_RESNET3D_CONV = {"1": "a", "2": "b", "3": "c"}
_OURS_CONV = {v: k for k, v in _RESNET3D_CONV.items()}


def resnet3d_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorch-resnet3d ``i3d_r50_kinetics.pth`` names -> ours.

    ``conv1``/``bn1`` -> ``stem.conv``/``stem.bn``; ``layerL.B.convK``/``bnK`` (K = 1, 2, 3)
    -> ``layerL.B.conv_a/b/c``, ``bn_a/b/c``; ``layerL.B.downsample.0/1`` ->
    ``layerL.B.proj_conv``/``proj_bn``; ``fc`` stays. Keys that match nothing are passed
    through unchanged so that the strict loader reports them as unexpected.
    """
    out = {}
    for key, value in state_dict.items():
        new = key
        if m := re.fullmatch(r"conv1\.weight", key):
            new = "stem.conv.weight"
        elif m := re.fullmatch(r"bn1\.(\w+)", key):
            new = f"stem.bn.{m[1]}"
        elif m := re.fullmatch(r"(layer\d\.\d+)\.(conv|bn)([123])\.(\w+)", key):
            new = f"{m[1]}.{m[2]}_{_RESNET3D_CONV[m[3]]}.{m[4]}"
        elif m := re.fullmatch(r"(layer\d\.\d+)\.downsample\.([01])\.(\w+)", key):
            new = f"{m[1]}.{'proj_conv' if m[2] == '0' else 'proj_bn'}.{m[3]}"
        out[new] = value
    return out


def ours_to_resnet3d(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`resnet3d_to_ours` (exports our I3D-R50 in pytorch-resnet3d names)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        if key == "stem.conv.weight":
            new = "conv1.weight"
        elif m := re.fullmatch(r"stem\.bn\.(\w+)", key):
            new = f"bn1.{m[1]}"
        elif m := re.fullmatch(r"(layer\d\.\d+)\.(conv|bn)_([abc])\.(\w+)", key):
            new = f"{m[1]}.{m[2]}{_OURS_CONV[m[3]]}.{m[4]}"
        elif m := re.fullmatch(r"(layer\d\.\d+)\.proj_(conv|bn)\.(\w+)", key):
            new = f"{m[1]}.downsample.{0 if m[2] == 'conv' else 1}.{m[3]}"
        out[new] = value
    return out


# pytorchvideo's Net.blocks: 0 stem, 1 stage1, 2 the temporal pool, 3..5 stages 2..4, 6 head.
_PTV_STAGE_BLOCK = {1: 1, 2: 3, 3: 4, 4: 5}
_PTV_BLOCK_STAGE = {v: k for k, v in _PTV_STAGE_BLOCK.items()}
_PTV_HEAD_BLOCK = 6


def pytorchvideo_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorchvideo ``i3d_r50`` names (``blocks.N...``) -> ours.

    ``blocks.0.conv``/``norm`` -> ``stem.conv``/``bn``;
    ``blocks.{1,3,4,5}.res_blocks.B.branch2.conv_x``/``norm_x`` -> ``layer{1..4}.B.conv_x``/``bn_x``;
    ``...branch1_conv``/``branch1_norm`` -> ``proj_conv``/``proj_bn``; ``blocks.6.proj`` -> ``fc``.
    """
    out = {}
    for key, value in state_dict.items():
        new = key
        if key == "blocks.0.conv.weight":
            new = "stem.conv.weight"
        elif m := re.fullmatch(r"blocks\.0\.norm\.(\w+)", key):
            new = f"stem.bn.{m[1]}"
        elif (m := re.fullmatch(r"blocks\.(\d+)\.res_blocks\.(\d+)\.(.+)", key)) and int(m[1]) in _PTV_BLOCK_STAGE:
            prefix = f"layer{_PTV_BLOCK_STAGE[int(m[1])]}.{m[2]}"
            rest = m[3]
            if r := re.fullmatch(r"branch2\.(conv|norm)_([abc])\.(\w+)", rest):
                new = f"{prefix}.{'conv' if r[1] == 'conv' else 'bn'}_{r[2]}.{r[3]}"
            elif r := re.fullmatch(r"branch1_(conv|norm)\.(\w+)", rest):
                new = f"{prefix}.proj_{'conv' if r[1] == 'conv' else 'bn'}.{r[2]}"
        elif m := re.fullmatch(rf"blocks\.{_PTV_HEAD_BLOCK}\.proj\.(weight|bias)", key):
            new = f"fc.{m[1]}"
        out[new] = value
    return out


def ours_to_pytorchvideo(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pytorchvideo_to_ours`."""
    out = {}
    for key, value in state_dict.items():
        new = key
        if key == "stem.conv.weight":
            new = "blocks.0.conv.weight"
        elif m := re.fullmatch(r"stem\.bn\.(\w+)", key):
            new = f"blocks.0.norm.{m[1]}"
        elif m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)_([abc])\.(\w+)", key):
            kind = "conv" if m[3] == "conv" else "norm"
            new = f"blocks.{_PTV_STAGE_BLOCK[int(m[1])]}.res_blocks.{m[2]}.branch2.{kind}_{m[4]}.{m[5]}"
        elif m := re.fullmatch(r"layer(\d)\.(\d+)\.proj_(conv|bn)\.(\w+)", key):
            kind = "conv" if m[3] == "conv" else "norm"
            new = f"blocks.{_PTV_STAGE_BLOCK[int(m[1])]}.res_blocks.{m[2]}.branch1_{kind}.{m[4]}"
        elif m := re.fullmatch(r"fc\.(weight|bias)", key):
            new = f"blocks.{_PTV_HEAD_BLOCK}.proj.{m[1]}"
        out[new] = value
    return out
