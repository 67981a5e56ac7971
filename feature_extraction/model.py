"""Stage 3's model: fT(fA(clips)) -> pooled features, eager or as one compiled inductor graph.

Apart from the pipeline so that it imports without PyAV (a GPU machine may lack it; the GPU
check, benchmarks/gpu_check.py, runs this model there alone).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from aux_code.models import anonymize_clip
from aux_code.precision import Precision

__all__ = ["COMPILE_MIN_GFLOP", "FeatureModel", "clip_gflop", "resolve_compile"]

# Below this many GFLOP per clip the inductor compile (20-55 s on the 2-core benchmark CPU) costs
# more than it saves on any run of the embedded default; I3D-R50 at 16x224x224 costs 32.8.
COMPILE_MIN_GFLOP = 5.0


def clip_gflop(anonymizer: nn.Module, utility: nn.Module, clip_shape: Sequence[int], *, probe: int = 64) -> float:
    """fA + fT forward cost of one clip (C, T, r, r) in GFLOP (2 per multiply-add of every convolution and linear layer).

    Counted by forward hooks on one real forward at ``probe`` pixels (or r, when smaller) and
    scaled by (r / probe)^2: both models are convolutional, so their cost grows with the pixel
    count (I3D-R50 at 224 from a 64-pixel probe: 32.1 against 32.8 counted at 224). Neither
    torch's FlopCounterMode nor meta tensors: either imports torch._dynamo, about 5 s, which the
    embedded default (a few seconds of extraction in all) would pay for nothing.
    """
    c, t, r = clip_shape[0], clip_shape[1], clip_shape[-1]
    side = min(probe, r)
    total = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            per_output = module.weight[0].numel() if isinstance(module, nn.modules.conv._ConvNd) else module.in_features
            total += 2 * output.numel() * per_output

    hooks = [m.register_forward_hook(count) for model in (anonymizer, utility) for m in model.modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was = anonymizer.training, utility.training
    try:
        anonymizer.eval()
        utility.eval()
        device = next(iter(utility.parameters())).device
        with torch.inference_mode():
            utility(anonymize_clip(anonymizer, torch.zeros(1, c, t, side, side, device=device)))
    finally:
        for h in hooks:
            h.remove()
        anonymizer.train(was[0])
        utility.train(was[1])
    return total / 1e9 * (r / side) ** 2


def resolve_compile(mode: str, device: torch.device, gflop: float | None) -> bool:
    """Whether :class:`FeatureModel` compiles: ``extract.compile`` = 'on', 'off' or 'auto'.

    'auto' compiles on the CPU only, and only a model of at least :data:`COMPILE_MIN_GFLOP` per
    clip: there inductor's frozen graph (BN folded into oneDNN convolutions with prepacked
    weights, ReLU and residual adds fused) runs I3D-R50 at about twice eager speed. On CUDA
    'auto' stays eager until a GPU run has measured the compiled path (scripts/gpu_check.sh).
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"extract.compile must be 'auto', 'on' or 'off', got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return device.type == "cpu" and gflop is not None and gflop >= COMPILE_MIN_GFLOP


class FeatureModel:
    """fT(fA(x))'s pooled feature for a batch of prepared clips: (B, C, T, r, r) -> (B, D) float32 numpy.

    Channels-last layouts are used on CUDA only: on the 2-core benchmark CPU they made no
    measurable difference to eager I3D-R50 (0.62 vs 0.68 s per clip at batch 1, 0.70 vs 0.63
    at batch 4, one thread), so the CPU path keeps the plain layout.

    ``compile=True`` traces fA and fT into one inductor graph with frozen weights (the
    parameters become constants, so BatchNorm folds into the convolutions). The graph has one
    fixed input shape, so a batch runs through it in chunks of ``chunk`` clips (the last one
    zero-padded): any batch size, the last short batch included, reuses the one compiled
    graph instead of compiling another. On the CPU one clip per call was as fast per clip as
    four (0.50 vs 0.54 s for I3D-R50, one thread), hence ``chunk=1`` there. The first call
    compiles; :attr:`compile_seconds` is what it took.
    """

    def __init__(self, anonymizer: nn.Module, utility: nn.Module, *, device: torch.device, precision: str = "auto",
                 channels_last: bool = True, frames_per_pass: int | None = None, compile: bool = False,
                 chunk: int | None = None, eager_fallback: bool = False) -> None:
        self.device = device
        self.precision = Precision(precision, device)
        self.frames_per_pass = frames_per_pass
        self.channels_last = channels_last and device.type == "cuda"
        self.anonymizer = anonymizer.eval().to(device)
        self.utility = utility.eval().to(device)
        if self.channels_last:
            self.anonymizer = self.anonymizer.to(memory_format=torch.channels_last)
            self.utility = self.utility.to(memory_format=torch.channels_last_3d)
        self.chunk = chunk or (1 if device.type == "cpu" else 8)
        self.compile_seconds: float | None = None
        # extract.compile=auto chose compiling for the user, so a machine where inductor cannot
        # build (no C++ compiler, say) falls back to eager with a message instead of stopping.
        self.eager_fallback = eager_fallback
        self._compiled = torch.compile(self._features, dynamic=False) if compile else None

    @property
    def path(self) -> str:
        """Which computation ran, for results.json: e.g. 'inductor fp32 (frozen), 1 clip per call' or 'eager fp32'."""
        kind = f"inductor {self.precision.name} (frozen), {self.chunk} clip(s) per call" if self._compiled else f"eager {self.precision.name}"
        return kind + (", channels-last" if self.channels_last else "")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            x = anonymize_clip(self.anonymizer, x, frames_per_pass=self.frames_per_pass)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            _, feature = self.utility(x)
        return feature.float()

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        if self._compiled is None:
            with torch.inference_mode():
                return self._features(clips.to(self.device, non_blocking=True)).cpu().numpy()
        # no_grad, not inference_mode: dynamo guards on whether an input is an inference tensor,
        # and a padded chunk made under inference_mode would be one while the caller's clips are
        # not, so the second shape-identical call recompiled (unfrozen). Inputs made under
        # inference_mode elsewhere are cloned into ordinary tensors for the same reason.
        import torch._inductor.config as inductor_config

        with torch.no_grad():
            x = clips.to(self.device, non_blocking=True)
            if x.is_inference():
                x = x.clone()
            # Freezing is read when the graph is compiled, outside what torch.compile(options=...)
            # patches: set around every call rather than process-wide.
            try:
                with inductor_config.patch(freezing=True):
                    out = [self._compiled_chunk(part) for part in x.split(self.chunk)]
            except Exception as e:
                if not (self.eager_fallback and self.compile_seconds is None):
                    raise
                print(f"extraction: compiling the model failed ({type(e).__name__}: {str(e)[:300]}); running it eager "
                      "(extract.compile=off skips the attempt)", flush=True)
                self._compiled = None
                return self(clips)
        return torch.cat(out).cpu().numpy()

    def _compiled_chunk(self, part: torch.Tensor) -> torch.Tensor:
        n = part.shape[0]
        if n < self.chunk:
            part = torch.cat([part, part.new_zeros((self.chunk - n, *part.shape[1:]))])
        if self.compile_seconds is None:
            started = time.perf_counter()
            feature = self._compiled(part)
            self.compile_seconds = time.perf_counter() - started
        else:
            feature = self._compiled(part)
        return feature[:n]
