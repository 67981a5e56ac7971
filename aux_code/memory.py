"""Training a model on fewer bytes without changing what it computes: activation recomputation.

``recomputed(module, x)`` runs ``module(x)`` under ``torch.utils.checkpoint`` (non-reentrant):
the module's intermediate activations are dropped after the forward pass and computed again
in the backward pass, so the memory they held is free while the rest of the graph (the models
downstream) runs. Gradients are those of the plain call; the price is one more forward.
:func:`recompute_blocks` applies it to every block of a model, which is what lowers the peak.

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


def _block_types() -> tuple[type[nn.Module], ...]:
    from aux_code.models.anonymizer import DoubleConv
    from aux_code.models.i3d_inception import InceptionBlock
    from aux_code.models.i3d_resnet import Bottleneck3d
    from aux_code.models.resnet2d import Bottleneck2d

    return (DoubleConv, Bottleneck3d, InceptionBlock, Bottleneck2d)


def recompute_blocks(model: nn.Module) -> int:
    """Make every residual / conv block of ``model`` (UNet DoubleConv, I3D and ResNet bottlenecks,
    Inception blocks) recompute its activations in the backward pass; returns how many.

    Per block, not the whole model: recomputing a whole model in one piece brings all of its
    activations back at once in the backward pass, so the peak stays what it was; block by
    block, only the blocks' inputs are stored and one block's internals exist at a time. Each
    block still sees the whole batch, so BatchNorm's statistics are exact. In place, through
    torch's checkpoint_wrapper, whose state-dict hooks keep the parameter names (checkpoints
    load either way). A model without such blocks is left alone (0)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing, checkpoint_wrapper

    kinds = _block_types()
    count = sum(isinstance(m, kinds) for m in model.modules())
    if count:
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_fn=recomputed),
                                       check_fn=lambda m: isinstance(m, kinds))
    return count
