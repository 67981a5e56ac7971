"""Print the parameter counts of the full-size models (docs/weights.md quotes this output).

    python -m benchmarks.param_counts
"""

from __future__ import annotations

import argparse

from torch import nn

from aux_code.models import build_anonymizer, build_budget, build_embedding_head, build_target, build_utility


def count(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def rows() -> list[tuple[str, str, int, int]]:
    models = [
        ("fA", "UNet anonymizer (width 64)", build_anonymizer(name="unet")),
        ("fT", "I3D-ResNet-50, 400 classes", build_utility(name="i3d_r50", num_classes=400)),
        ("fT", "I3D-ResNet-50, 101 classes (UCF101)", build_utility(name="i3d_r50", num_classes=101)),
        ("fT", "InceptionV1 I3D, 400 classes", build_utility(name="i3d_inception", num_classes=400)),
        ("fT head", "embedding MLP 2048-512-128", build_embedding_head(in_dim=2048)),
        ("fB", "ResNet-50 without fc + projector 2048-2048-128", build_budget(name="resnet50")),
        ("fB'", "ResNet-50, fc 2048 -> 7", build_target(name="resnet50", num_classes=7)),
    ]
    return [(role, what, *count(m)) for role, what, m in models]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    print(f"{'model':8s} {'description':50s} {'parameters':>12s} {'trainable':>12s}")
    for role, what, total, trainable in rows():
        print(f"{role:8s} {what:50s} {total:>12,d} {trainable:>12,d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
