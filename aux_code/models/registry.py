"""Build models by name with keyword arguments, optionally loading local weights.

Stages call these with values from their config (``name``, sizes, ``weights`` path); the
tiny variants keep the same code path with small widths for CPU tests and the synthetic
world. A ``weights`` path is read with ``weights_only=True`` and must fit exactly (see
:mod:`aux_code.models.weights`); classifier heads are only re-initialised with an explicit
``reset_head=True``. Relative ``weights`` paths are the caller's to resolve (the config
resolves them against ``paths.weights``).

=============  ========================================================================
kind           names
=============  ========================================================================
anonymizer     ``unet`` (width 64, 17.27 M), ``unet_tiny`` (width 4), ``bq`` (blur + quantize,
               16 levels, 16 parameters), ``identity``
utility        ``i3d_r50``, ``i3d_r50_tiny`` (width 8, blocks 2-2-2-2, pytorchvideo stem,
               frame-difference input), ``i3d_inception``, ``i3d_inception_tiny``
               (width_mult 1/16)
budget         ``resnet50``, ``resnet_tiny`` (width 8, layers 1-1-1-1)
target         ``resnet50``, ``resnet_tiny``; other architectures for stage 2's attackers:
               ``mobilenet_v3_small`` (torchvision), ``mobilenet_tiny`` (depthwise separable)
=============  ========================================================================
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from aux_code.models.anonymizer import BlurQuantizeAnonymizer, IdentityAnonymizer, UNetAnonymizer
from aux_code.models.heads import EmbeddingHead
from aux_code.models.i3d_inception import InceptionI3D
from aux_code.models.i3d_resnet import I3DResNet
from aux_code.models.mobilenet import MobileNetV3Target, SeparableCNN
from aux_code.models.resnet2d import BudgetModel, TargetModel
from aux_code.models.weights import (
    detect_utility_layout,
    load_anonymizer_weights,
    load_budget_weights,
    load_target_weights,
    load_utility_state_dict,
    read_state_dict,
)

__all__ = [
    "ANONYMIZERS",
    "UTILITIES",
    "BUDGETS",
    "TARGETS",
    "available_models",
    "build_anonymizer",
    "build_utility",
    "build_budget",
    "build_target",
    "build_embedding_head",
]

# name -> (class, default constructor arguments)
ANONYMIZERS: dict[str, tuple[type, dict[str, Any]]] = {
    "unet": (UNetAnonymizer, {"width": 64}),
    "unet_tiny": (UNetAnonymizer, {"width": 4}),
    "bq": (BlurQuantizeAnonymizer, {"levels": 16}),
    "identity": (IdentityAnonymizer, {}),
}
UTILITIES: dict[str, tuple[type, dict[str, Any]]] = {
    "i3d_r50": (I3DResNet, {"width": 64, "blocks": (3, 4, 6, 3)}),
    "i3d_r50_tiny": (I3DResNet, {"width": 8, "blocks": (2, 2, 2, 2), "stem": "pytorchvideo", "clip_input": "difference"}),
    "i3d_inception": (InceptionI3D, {"width_mult": 1.0}),
    "i3d_inception_tiny": (InceptionI3D, {"width_mult": 1.0 / 16}),
}
BUDGETS: dict[str, tuple[type, dict[str, Any]]] = {
    "resnet50": (BudgetModel, {"width": 64, "layers": (3, 4, 6, 3)}),
    "resnet_tiny": (BudgetModel, {"width": 8, "layers": (1, 1, 1, 1)}),
}
TARGETS: dict[str, tuple[type, dict[str, Any]]] = {
    "resnet50": (TargetModel, {"width": 64, "layers": (3, 4, 6, 3)}),
    "resnet_tiny": (TargetModel, {"width": 8, "layers": (1, 1, 1, 1)}),
    # Stage 2's other-architecture attackers (aux_code.models.mobilenet).
    "mobilenet_v3_small": (MobileNetV3Target, {}),
    "mobilenet_tiny": (SeparableCNN, {"width": 16, "stem_stride": 1, "strides": (2, 1, 2, 1, 2, 1), "multipliers": (1, 2, 2, 4, 4, 8)}),
}
_KINDS = {"anonymizer": ANONYMIZERS, "utility": UTILITIES, "budget": BUDGETS, "target": TARGETS}


def available_models(kind: str) -> list[str]:
    """Names accepted by ``build_<kind>`` (kind: anonymizer, utility, budget, target)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {sorted(_KINDS)}")
    return sorted(_KINDS[kind])


def _construct(kind: str, name: str, overrides: dict[str, Any]) -> nn.Module:
    table = _KINDS[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} model {name!r}; choose from {sorted(table)}")
    cls, defaults = table[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise TypeError(f"{kind} model {name!r} ({cls.__name__}) does not take {unknown}; it takes {sorted(accepted)}")
    return cls(**{**defaults, **overrides})


def build_anonymizer(*, name: str = "unet", weights: str | Path | None = None, weights_key: str | None = None, **arch: Any) -> nn.Module:
    """fA by name; ``arch`` overrides the constructor defaults (e.g. ``width=16``).

    ``weights``: a checkpoint written by this project; ``weights_key`` picks the entry of
    a multi-model checkpoint (e.g. ``"anonymizer"``).
    """
    model = _construct("anonymizer", name, arch)
    if weights is not None:
        load_anonymizer_weights(model, weights, key=weights_key)
    return model


def build_utility(
    *,
    name: str = "i3d_r50",
    num_classes: int = 400,
    weights: str | Path | None = None,
    weights_layout: str = "auto",
    weights_key: str | None = None,
    reset_head: bool = False,
    **arch: Any,
) -> nn.Module:
    """fT by name, returning ``(logits, feature)`` from ``(B, 3, T, H, W)`` clips in [0, 1].

    For the I3D-R50 names, ``stem`` defaults to the stem the weights were trained with
    (``"pytorchvideo"`` or ``"resnet3d"``) and RGB input when the weights are a public file;
    a checkpoint of this project keeps the preset's architecture. Pass ``stem=`` to override.
    ``reset_head=True`` re-initialises the classifier when ``num_classes`` differs from the
    checkpoint's (e.g. UCF101's 101 on Kinetics-400 weights).
    """
    arch = {"num_classes": num_classes, **arch}
    sd = where = None
    if weights is not None:
        sd, where = read_state_dict(weights, what="utility weights", key=weights_key)
        if name.startswith("i3d_r50") and "stem" not in arch:
            if weights_layout == "auto":
                _, layout = detect_utility_layout(sd, model_type=I3DResNet, source=where)
            else:
                layout = weights_layout
            if layout in ("resnet3d", "pytorchvideo"):
                # Public files are RGB models with their own stem, whatever the preset's defaults.
                arch["stem"] = layout
                arch.setdefault("clip_input", "rgb")
    model = _construct("utility", name, arch)
    if sd is not None:
        load_utility_state_dict(model, sd, source=where, layout=weights_layout, reset_head=reset_head)
    return model


def build_budget(
    *,
    name: str = "resnet50",
    weights: str | Path | None = None,
    weights_key: str | None = None,
    weights_layout: str = "auto",
    weights_prefix: str | None = None,
    **arch: Any,
) -> BudgetModel:
    """fB by name: (N, 3, H, W) in [0, 1] -> (N, proj_dim) unit vectors.

    ``weights``: our BudgetModel checkpoint, or any torchvision-named ResNet (torchvision,
    SimCLR-converted; backbone only, projector stays at init and is reported).
    """
    model = _construct("budget", name, arch)
    if weights is not None:
        load_budget_weights(model, weights, key=weights_key, prefix=weights_prefix, layout=weights_layout)
    return model


def build_target(
    *,
    name: str = "resnet50",
    num_classes: int = 7,
    weights: str | Path | None = None,
    weights_key: str | None = None,
    weights_prefix: str | None = None,
    reset_head: bool = False,
    **arch: Any,
) -> TargetModel:
    """fB' by name: (N, 3, H, W) in [0, 1] -> logits (N, num_classes)."""
    model = _construct("target", name, {"num_classes": num_classes, **arch})
    if weights is not None:
        load_target_weights(model, weights, key=weights_key, prefix=weights_prefix, reset_head=reset_head)
    return model


def build_embedding_head(*, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> EmbeddingHead:
    """The triplet-loss embedding MLP on top of the utility feature (in_dim = utility.feature_dim)."""
    return EmbeddingHead(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)


# The DP autoencoder's two halves (issue 16; aux_code.models.dpae): separate kinds, so the
# camera side stores and loads only the encoder.
from aux_code.models.dpae import DPAEDecoder, DPAEEncoder  # noqa: E402

DPAE_ENCODERS: dict[str, tuple[type, dict[str, Any]]] = {
    "dpae": (DPAEEncoder, {"width_mult": 1.0}),
    "dpae_tiny": (DPAEEncoder, {"width_mult": 0.125}),
}
DPAE_DECODERS: dict[str, tuple[type, dict[str, Any]]] = {
    "dpae": (DPAEDecoder, {"width_mult": 1.0}),
    "dpae_tiny": (DPAEDecoder, {"width_mult": 0.125}),
}
_KINDS["dpae_encoder"] = DPAE_ENCODERS
_KINDS["dpae_decoder"] = DPAE_DECODERS


def _build_dpae_half(kind: str, name: str, weights: str | Path | None, weights_key: str | None, arch: dict[str, Any]) -> nn.Module:
    model = _construct(kind, name, arch)
    if weights is not None:
        from aux_code.checkpoint import load_state_dict_strict

        sd, where = read_state_dict(weights, what=f"{kind} weights", key=weights_key)
        load_state_dict_strict(model, sd, source=where, expected_layout=f"this project's {kind} ({name})")
    return model


def build_dpae_encoder(*, name: str = "dpae", weights: str | Path | None = None, weights_key: str | None = None,
                       **arch: Any) -> DPAEEncoder:
    """The DP autoencoder's camera-side encoder: (N, 3, H, W) in [0, 1] -> (N, 16, H/8, W/8)."""
    return _build_dpae_half("dpae_encoder", name, weights, weights_key, arch)


def build_dpae_decoder(*, name: str = "dpae", weights: str | Path | None = None, weights_key: str | None = None,
                       **arch: Any) -> DPAEDecoder:
    """The DP autoencoder's server-side decoder: (N, 16, h, w) -> (N, 3, 8h, 8w) in [0, 1]."""
    return _build_dpae_half("dpae_decoder", name, weights, weights_key, arch)
