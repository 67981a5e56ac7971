"""MobileNet-style target models: stage 2's "other architecture" attacker (Wu et al.'s two-fold protocol).

The paper's target model fB' is a ResNet (7x7 stride-2 stem, max pooling, bottleneck residual
blocks). An attacker of another family asks whether an anonymizer only broke features that
ResNets read. These are depthwise-separable networks without residual connections or max
pooling:

- :class:`SeparableCNN` (MobileNet v1, Howard et al. 2017; the defaults are v1's 13 blocks): a
  3x3 stem, then blocks of depthwise 3x3 + BN + ReLU6 and pointwise 1x1 + BN + ReLU6, global
  average pooling and a linear head. The registry's ``mobilenet_tiny`` (width 16, 6 blocks)
  keeps the stem at full resolution, so at the synthetic world's 32 px it sees details the
  ResNet stem (stride 2 and max pooling: 8x8 after two layers) pools away at once.
- :class:`MobileNetV3Target`: torchvision's MobileNetV3-Small (inverted residuals, squeeze-
  excitation, hard-swish), randomly initialised (no weights are downloaded), for real data.

Both: RGB float in [0, 1], (N, 3, H, W) -> logits (N, num_classes), normalised inside with the
ImageNet mean and std like the ResNets (aux_code.models.resnet2d).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from aux_code.models.resnet2d import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SeparableCNN", "MobileNetV3Target"]


def _separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """(N, c_in, H, W) -> (N, c_out, H / stride, W / stride): depthwise 3x3, then pointwise 1x1, each BN + ReLU6."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU6(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class _Normalised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images (N, 3, H, W), got shape {tuple(images.shape)}")
        return (images - self.mean) / self.std


class SeparableCNN(_Normalised):
    """MobileNet v1 layout: stem conv3x3 (stride ``stem_stride``) to ``width`` channels, then one separable
    block per entry of ``strides`` / ``multipliers`` (output channels ``width * multiplier``), global
    average pooling, ``fc = Linear(width * multipliers[-1], num_classes)``."""

    def __init__(
        self,
        *,
        num_classes: int = 7,
        width: int = 32,
        stem_stride: int = 2,
        strides: Sequence[int] = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1),
        multipliers: Sequence[int] = (2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32),
    ) -> None:
        super().__init__()
        if len(strides) != len(multipliers) or not strides:
            raise ValueError(f"SeparableCNN: strides {tuple(strides)} and multipliers {tuple(multipliers)} must be "
                             "non-empty and of one length")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU6(inplace=True))
        blocks, c = [], width
        for s, m in zip(strides, multipliers):
            blocks.append(_separable(c, width * m, s))
            c = width * m
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.normalise(images)))
        return self.fc(x.mean(dim=(2, 3)))


class MobileNetV3Target(_Normalised):
    """torchvision ``mobilenet_v3_small(num_classes=num_classes, width_mult=width_mult)``, random init."""

    def __init__(self, *, num_classes: int = 7, width_mult: float = 1.0) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_small

        self.net = mobilenet_v3_small(weights=None, num_classes=num_classes, width_mult=width_mult)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(images))
