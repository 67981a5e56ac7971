"""2D ResNets for privacy: the budget model fB (training) and the target model fB' (evaluation).

Images are RGB float in [0, 1], (N, 3, H, W). By default the models normalise with the
ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) inside, as torchvision
and VISSL's SimCLR ResNet-50 expect; ``input_norm="none"`` feeds [0, 1] unchanged, which is
what the TF SimCLR checkpoints converted by simclr-converter were trained on.

:class:`ResNet2d` is torchvision's ResNet v1.5 (stride on the 3x3 conv) with torchvision's
parameter names, written with a ``width`` argument so that one code path serves the full
ResNet-50 (``width=64, layers=(3, 4, 6, 3)``: same keys, shapes and outputs as
``torchvision.models.resnet50``, checked in tests/test_models.py) and tiny CPU variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNet2d", "BudgetModel", "TargetModel", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
InputNorm = Literal["imagenet", "none"]


class Bottleneck2d(nn.Module):
    """torchvision Bottleneck: (N, C_in, H, W) -> (N, 4 * planes, H / s, W / s)."""

    def __init__(self, in_channels: int, planes: int, *, stride: int):
        super().__init__()
        out = 4 * planes
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or in_channels != out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet2d(nn.Module):
    """(N, 3, H, W) in [0, 1] -> logits (N, num_classes), or features (N, feature_dim) when ``num_classes`` is None.

    ``feature_dim = 32 * width`` (2048 for ResNet-50). Parameter names match torchvision
    (``conv1``, ``bn1``, ``layerL.B.convK``, ``downsample.0/1``, ``fc``); with
    ``num_classes=None`` there is no ``fc`` at all. ``input_norm``: ``"imagenet"`` or
    ``"none"`` (see the module docstring).
    """

    def __init__(
        self,
        *,
        num_classes: int | None = 1000,
        width: int = 64,
        layers: Sequence[int] = (3, 4, 6, 3),
        input_norm: InputNorm = "imagenet",
    ):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ResNet2d: layers must be 4 positive counts, got {tuple(layers)}")
        if input_norm not in ("imagenet", "none"):
            raise ValueError(f"ResNet2d: input_norm must be 'imagenet' or 'none', got {input_norm!r}")
        self.input_norm = input_norm
        self.width = width
        self.layers = tuple(layers)
        self.feature_dim = 32 * width
        self.num_classes = num_classes
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if input_norm == "imagenet" else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = width
        for i, n in enumerate(self.layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck2d(in_ch, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = 4 * planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes is not None else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> globally average-pooled (N, feature_dim)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ResNet2d expects images (N, 3, H, W), got shape {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.features(images)
        return feature if self.fc is None else self.fc(feature)


class BudgetModel(nn.Module):
    """fB: ResNet backbone without fc + projection MLP, L2-normalised.

    (N, 3, H, W) in [0, 1] -> (N, proj_dim) unit vectors for NT-Xent. Projection:
    Linear(feature_dim, hidden) - ReLU - Linear(hidden, proj_dim); ``hidden`` defaults to
    ``feature_dim`` (2048 -> 2048 -> 128 at full size).
    """

    def __init__(
        self,
        *,
        width: int = 64,
        layers: Sequence[int] = (3, 4, 6, 3),
        hidden_dim: int | None = None,
        proj_dim: int = 128,
        input_norm: InputNorm = "imagenet",
    ):
        super().__init__()
        self.backbone = ResNet2d(num_classes=None, width=width, layers=layers, input_norm=input_norm)
        self.feature_dim = self.backbone.feature_dim
        hidden = hidden_dim or self.feature_dim
        self.proj_dim = proj_dim
        self.projector = nn.Sequential(nn.Linear(self.feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, proj_dim), unit L2 norm."""
        return F.normalize(self.projector(self.backbone(images)), dim=1)


class TargetModel(ResNet2d):
    """fB': ResNet-50 with ``fc = Linear(2048, num_classes)`` (7 VISPR attributes): (N, 3, H, W) -> logits (N, 7).

    Multi-label: train with BCE-with-logits, score with sigmoid. Same names as torchvision.
    """

    def __init__(
        self,
        *,
        num_classes: int = 7,
        width: int = 64,
        layers: Sequence[int] = (3, 4, 6, 3),
        input_norm: InputNorm = "imagenet",
    ):
        super().__init__(num_classes=num_classes, width=width, layers=layers, input_norm=input_norm)
