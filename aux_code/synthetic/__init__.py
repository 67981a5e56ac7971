"""The synthetic world: a seeded generator of all five datasets in their real on-disk formats."""

from __future__ import annotations

from .generate import DATASET_DIRS, WorldExistsError, format_summary, generate_world
from .plan import ACTION_CLASSES, WorldPlan, plan_world
from .sizes import PRESETS, WorldSize, world_size

__all__ = [
    "ACTION_CLASSES", "DATASET_DIRS", "PRESETS", "WorldExistsError", "WorldPlan", "WorldSize", "format_summary",
    "generate_world", "plan_world", "world_size",
]
