"""Training a model on fewer bytes without changing what it computes: activation recomputation.

``recomputed(module, x)`` (or a :class:`Recomputed` module) runs ``module(x)`` under ``torch.utils.checkpoint`` (non-reentrant):
the module's intermediate activations are dropped after the forward pass and computed again
in the backward pass, so the memory they held is free while the rest of the graph (the models
downstream) runs. Gradients are those of the plain call; the price is one more forward.

BatchNorm in train mode would see the recomputation as a second batch and move its running
statistics twice. The recomputation therefore runs under :func:`batchnorm_statistics_kept`,
which puts every BatchNorm buffer (running mean / var, batches tracked) back as it was, so a
recomputed model ends the step in exactly the state the plain one does.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


@contextlib.contextmanager
def batchnorm_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Run the block, then restore every BatchNorm buffer of ``module`` to its value on entry."""
    saved = [(m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None}) for m in _batchnorms(module)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, value in buffers.items():
                    getattr(m, k).copy_(value)


def recomputed(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``module(*inputs)`` whose activations are recomputed in the backward pass, not stored.

    Outside grad mode (validation, Step 2's frozen fA) there is nothing to store: a plain call."""
    if not torch.is_grad_enabled():
        return module(*inputs)
    return checkpoint(module, *inputs, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), batchnorm_statistics_kept(module)))


class Recomputed(nn.Module):
    """``module`` whose calls are :func:`recomputed`. Wrap before DistributedDataParallel (the
    recomputation then calls the inner module, never DDP's forward again). It holds the same
    parameters; save and load the inner module, not this wrapper."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return recomputed(self.module, *inputs)
