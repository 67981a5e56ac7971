"""Giorgi et al.'s frame-level detector (JoWUA 2022, s.3.4): RGB ResNet + flow ResNet + bag of objects.

Each stream is a :class:`~aux_code.models.resnet2d.ResNet2d` trunk (global average pooled, no
classifier): ``backbone="resnet50"`` is the paper's ResNet-50 (2048-d features; ImageNet weights
from a local torchvision file, :func:`load_imagenet`), ``backbone="tiny"`` a narrow one-block-per-
stage ResNet trained from scratch on the synthetic world. The flow stream reads the 3-channel
image of a flow field (aux_code.two_stream.flow_to_image). Both features and the bag-of-objects
vector go to :class:`aux_code.two_stream.TwoStreamHead` (joint fusion, one sigmoid unit).
``streams=1`` is the paper's one-stream (1S) variant, ``bag_dim=0`` its no-bag variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from aux_code.models.resnet2d import ResNet2d
from aux_code.two_stream import COCO_CLASSES, TwoStreamHead

__all__ = ["TwoStreamDetector", "build_two_stream", "load_imagenet", "BACKBONES"]

# name -> (width, blocks per stage); feature dim = 32 * width.
BACKBONES: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet50": (64, (3, 4, 6, 3)),
    "tiny": (8, (1, 1, 1, 1)),
}


def _trunk(backbone: str) -> ResNet2d:
    if backbone not in BACKBONES:
        raise ValueError(f"two-stream backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    width, layers = BACKBONES[backbone]
    return ResNet2d(num_classes=None, width=width, layers=layers)


class TwoStreamDetector(nn.Module):
    """(rgb (N, 3, H, W), flow image (N, 3, H, W) or None, bag (N, B) or None), all in [0, 1] except
    the bag's counts -> anomaly logits (N,)."""

    def __init__(self, *, backbone: Literal["tiny", "resnet50"] = "tiny", streams: int = 2,
                 bag_dim: int = COCO_CLASSES, hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        if streams not in (1, 2):
            raise ValueError(f"two-stream detector: streams must be 1 or 2, got {streams}")
        if bag_dim < 0:
            raise ValueError(f"two-stream detector: bag_dim must be >= 0, got {bag_dim}")
        self.streams = streams
        self.bag_dim = bag_dim
        self.rgb = _trunk(backbone)
        self.flow = _trunk(backbone) if streams == 2 else None
        dim = self.rgb.feature_dim
        self.head = TwoStreamHead(rgb_dim=dim, flow_dim=dim if streams == 2 else 0, bag_dim=bag_dim,
                                  hidden=hidden, dropout=dropout)

    def trunks(self) -> list[ResNet2d]:
        return [self.rgb] + ([self.flow] if self.flow is not None else [])

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor | None = None, bag: torch.Tensor | None = None) -> torch.Tensor:
        f_rgb = self.rgb.features(rgb)
        f_flow = self.flow.features(flow) if self.flow is not None else None
        return self.head.logits(f_rgb, f_flow, bag if self.bag_dim else None)


def build_two_stream(**spec) -> TwoStreamDetector:
    """The stored-model builder (aux_code.models.stored kind ``two_stream``)."""
    return TwoStreamDetector(**spec)


def load_imagenet(model: TwoStreamDetector, path: str | Path) -> list[str]:
    """Load a local torchvision-format ImageNet ResNet file into every trunk (its ``fc`` is dropped);
    returns one load summary per trunk."""
    from aux_code.models.weights import load_target_weights

    return [load_target_weights(trunk, path, reset_head=True).summary() for trunk in model.trunks()]
