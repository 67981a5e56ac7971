"""Models of the pipeline: anonymizer fA, utility fT (+ embedding head), budget fB, target fB'.

Build them by name through :mod:`aux_code.models.registry`; load public or own weights
through :mod:`aux_code.models.weights`. Every model takes RGB float input in [0, 1] and
applies its own normalisation. MGFN lives in :mod:`aux_code.models.mgfn`.
"""

from __future__ import annotations

from aux_code.models.anonymizer import BlurQuantizeAnonymizer, IdentityAnonymizer, UNetAnonymizer, anonymize_clip
from aux_code.models.heads import EmbeddingHead
from aux_code.models.i3d_inception import InceptionI3D
from aux_code.models.i3d_resnet import I3DResNet
from aux_code.models.registry import (
    available_models,
    build_anonymizer,
    build_budget,
    build_embedding_head,
    build_target,
    build_utility,
)
from aux_code.models.resnet2d import BudgetModel, ResNet2d, TargetModel
from aux_code.models.weights import (
    LoadReport,
    load_anonymizer_weights,
    load_budget_weights,
    load_target_weights,
    load_utility_weights,
)

__all__ = [
    "BlurQuantizeAnonymizer",
    "IdentityAnonymizer",
    "UNetAnonymizer",
    "anonymize_clip",
    "EmbeddingHead",
    "InceptionI3D",
    "I3DResNet",
    "BudgetModel",
    "ResNet2d",
    "TargetModel",
    "available_models",
    "build_anonymizer",
    "build_utility",
    "build_budget",
    "build_target",
    "build_embedding_head",
    "LoadReport",
    "load_anonymizer_weights",
    "load_utility_weights",
    "load_budget_weights",
    "load_target_weights",
]
