"""Trained models as they travel between stages: state dict plus the builder arguments.

A stage checkpoint stores each of its models under ``ckpt["models"][key]`` as::

    {"kind": "anonymizer" | "utility" | "budget" | "target" | "embedding" | "probe" | "mgfn" | ...,
     "spec": {...keyword arguments of the registry builder, e.g. name, width, num_classes, stem},
     "state_dict": {...}}

so a later stage rebuilds the exact architecture from the file alone, with no guessing of
widths or names, and loads it strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn

from aux_code.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from aux_code.models import registry
from aux_code.models.heads import MLPProbe
from aux_code.models.luss_ae import build_luss_ae
from aux_code.models.mgfn import build_mgfn
from aux_code.models.two_stream import build_two_stream

_BUILDERS = {
    "anonymizer": registry.build_anonymizer,
    "utility": registry.build_utility,
    "budget": registry.build_budget,
    "target": registry.build_target,
    "embedding": registry.build_embedding_head,
    "probe": MLPProbe,
    "mgfn": build_mgfn,
    "dpae_encoder": registry.build_dpae_encoder,  # the camera side
    "dpae_decoder": registry.build_dpae_decoder,  # the server side
    "luss_ae": build_luss_ae,
    "two_stream": build_two_stream,  # the DP-AE paper's frame detector
}


def pack_model(kind: str, spec: Mapping[str, Any], model: nn.Module) -> dict:
    """The plain-data record of one model (see module docstring)."""
    if kind not in _BUILDERS:
        raise ValueError(f"model kind {kind!r} is not one of {', '.join(_BUILDERS)}")
    return {"kind": kind, "spec": dict(spec), "state_dict": model.state_dict()}


def build_packed(record: Mapping[str, Any], *, source: str) -> nn.Module:
    """Rebuild a model from its record and load its weights strictly."""
    try:
        kind, spec, sd = record["kind"], dict(record["spec"]), record["state_dict"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{source} is not a stored model record (expected kind, spec, state_dict)") from None
    model = _BUILDERS[kind](**spec)
    load_state_dict_strict(model, sd, source=source, expected_layout=f"this project's {kind} ({spec.get('name', '')})")
    return model


def load_stored_model(path: str | Path, key: str, *, config_key: str | None = None) -> tuple[nn.Module, dict]:
    """Load model ``key`` of a stage checkpoint; returns (model in eval mode, its spec).

    The error for a checkpoint without that model lists the models it does hold.
    """
    ckpt = load_checkpoint(path, what=f"{key} checkpoint", config_key=config_key)
    models = ckpt.get("models")
    if not isinstance(models, dict) or key not in models:
        held = ", ".join(sorted(models)) if isinstance(models, dict) else "no 'models' entry"
        where = f" ({config_key})" if config_key else ""
        raise CheckpointError(f"checkpoint {path}{where} holds no model '{key}'; it holds: {held}")
    model = build_packed(models[key], source=f"{path}[models][{key}]")
    return model.eval(), dict(models[key]["spec"])
