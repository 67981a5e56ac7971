"""One precision policy for every stage: the ``precision`` config key.

``auto`` is bf16 autocast on a CUDA device that has it, fp16 autocast (with a gradient scaler
in training) on one that does not, and exact fp32 on the CPU; ``fp32`` never autocasts;
``bf16`` autocasts on any device (on a CPU with native bf16, AVX512-BF16 / AMX, it is MGFN's
CPU speed-up; elsewhere it is slower); ``fp16`` needs CUDA. Losses are computed in fp32
under every policy by the code that uses this.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from aux_code.config import ConfigError

PrecisionMode = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION_HELP = (
    "Autocast policy: 'auto' = bf16 on CUDA where supported, else fp16 (gradient-scaled in training), fp32 on "
    "CPU; 'fp32' = none; 'bf16' = bf16 autocast on any device (a CPU speed-up only with native bf16, "
    "AVX512-BF16 / AMX); 'fp16' = CUDA only."
)


def validate_precision(mode: str, device: str) -> None:
    """Config-time check of ``precision`` against ``run.device`` (fp16 needs CUDA), before any work."""
    if mode not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision = {mode!r} must be one of auto, fp32, bf16, fp16")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if mode == "fp16" and not cuda:
        raise ConfigError(f"precision = 'fp16' needs a CUDA device; run.device = {device!r} runs on the CPU (use fp32 or bf16)")


class Precision:
    """Autocast context and gradient scalers for one ``precision`` mode on one device."""

    def __init__(self, mode: str, device: torch.device) -> None:
        validate_precision(mode, device.type)
        self.dtype: torch.dtype | None = None
        if mode == "bf16":
            self.dtype = torch.bfloat16
        elif mode == "fp16":
            self.dtype = torch.float16
        elif mode == "auto" and device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.device_type = device.type

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 (one per optimiser: their scales evolve separately), else None."""
        return torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
