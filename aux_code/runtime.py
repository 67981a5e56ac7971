"""What every stage does at start-up: device, seeds, (optional) distributed init, logging.

The same code runs as one CPU process, one GPU process, or N processes under torchrun:
rank and world size come from the environment torchrun sets, never from arguments.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from aux_code.config import ConfigError, opt, path_under


def select_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' gives cuda:<local_rank> when CUDA is available, else CPU."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"run.device = {preference!r} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int, *, rank: int = 0, deterministic: bool = False) -> int:
    """Seed python, numpy and torch with ``seed + rank``; optionally force deterministic kernels.

    Returns the seed used, so DataLoader generators can derive theirs from it.
    """
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if deterministic:
        # cuBLAS needs this set before its first use for deterministic matmuls.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return s


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive numpy/python seeds from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def single(cls, device: torch.device) -> "DistInfo":
        """One process on ``device`` (no torchrun)."""
        return cls(rank=0, world_size=1, local_rank=0, device=device)


def init_runtime(device: str = "auto") -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_runtime() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return value


def broadcast_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Rank 0's metrics on every rank (identity in a single process).

    A validation every rank computes on the same data gives the same numbers only up to
    kernel nondeterminism; the best epoch, the lr plateau and early stopping must be decided
    on one set of numbers, or the ranks would keep different checkpoints and schedules."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return metrics
    box = [dict(metrics)]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- data parallel training
#
# One rule for every data-parallel training (stages 1 and 2): a batch size in a config is the
# *global* batch, all ranks together. Every rank builds the same global batches (same seeds,
# whatever the world size) and keeps its contiguous shard of each (rank_rows), so a run under
# torchrun sees the data a single process sees, and a checkpoint resumes under another world
# size. Each rank's loss is its share of the global loss: the mean of the per-rank losses is the
# global loss, and DistributedDataParallel's gradient average is then the gradient of the
# global loss. Terms that couple the samples of a batch (NT-Xent's negatives: gather_rows;
# BatchNorm's statistics: CrossRankBatchNorm / SyncBatchNorm) see the whole global batch.


@dataclass
class DDPSection:
    """Data-parallel training under torchrun (docs/multi_gpu.md); a single process ignores it."""

    sync_batchnorm: bool = opt(
        True,
        "Under torchrun, BatchNorm layers of the trained models use the statistics of the global batch (all ranks "
        "together: torch's SyncBatchNorm on CUDA, aux_code.runtime.CrossRankBatchNorm on CPU), so a batch means "
        "the same at every world size; false: each rank normalises its own shard (faster, but a per-rank batch of "
        "optim.batch_size / world size changes what BatchNorm sees). Batch sizes are always global: the per-rank "
        "batch is batch / world size, which must divide.",
    )


def per_rank_batch(global_batch: int, world_size: int, *, key: str) -> int:
    """The per-rank share of the global batch config key ``key``; raises when it does not divide."""
    if global_batch % world_size:
        raise ConfigError(
            f"{key} = {global_batch} is the global batch (all ranks together) and must be divisible by the world size "
            f"{world_size} (torchrun --nproc_per_node x --nnodes): each rank trains on {key} / world size items; "
            f"choose e.g. {key} = {max(world_size, global_batch // world_size * world_size)}"
        )
    return global_batch // world_size


Rows = TypeVar("Rows", list, torch.Tensor)


def rank_rows(batch: Rows, rank: int, world_size: int) -> Rows:
    """Rank ``rank``'s contiguous shard of one global batch (a list or a tensor's first dimension).

    Shards differ in size by at most one (equal when the size divides) and, concatenated in rank
    order, give the batch back: the order gather_rows restores."""
    n = len(batch)
    return batch[rank * n // world_size : (rank + 1) * n // world_size]


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 with the gradient of the sum of every rank's loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        torch.distributed.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
        counts = [int(s) for s in sizes]
        # all_gather needs equal shapes: pad every shard to the longest, cut the padding after.
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank = counts, rank
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank computed a loss on the gathered rows; this rank's rows get the sum of those
        # losses' gradients (DDP then divides by the world size, as for any per-rank loss).
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(n_r, ...) on rank r -> (sum of n_r, ...) on every rank, in rank order, differentiable.

    The inverse of rank_rows: a batch-coupled loss (NT-Xent) computed on the gathered rows is the
    single-process loss of the global batch. Identity in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input (N, C, ...)) whose training statistics are those of the global batch.

    The per-channel sum and count, then the sum of squared deviations from the global mean, are
    all-reduced over ranks (differentiably), so forward, backward and the running statistics
    (unbiased variance of the global batch, as BatchNorm keeps) are the single-process ones of
    the concatenated batch. torch's SyncBatchNorm does the same on CUDA only; this one runs on
    any backend (the CPU tests use gloo). Eval mode, or a single process, is plain BatchNorm.
    Same parameters and buffers as BatchNorm, so checkpoints load either way."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"CrossRankBatchNorm expects (N, C, ...) input, got shape {tuple(input.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                  and torch.distributed.get_world_size() > 1)
        if not synced:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 at least
        local = xf.numel() // xf.shape[1]
        stats = _AllReduceSum.apply(torch.cat([xf.sum(dims), xf.new_tensor([float(local)])]))
        count = stats[-1]
        mean = stats[:-1] / count
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        if int(count.item()) < 2:
            raise ValueError(f"CrossRankBatchNorm: a global batch of {int(count.item())} value(s) per channel; BatchNorm needs 2")
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(count)
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm layer replaced by one that normalises over the global batch
    (SyncBatchNorm on CUDA, CrossRankBatchNorm elsewhere), weights and buffers kept, in place
    where the model itself is no BatchNorm. Parameters are the same tensors (optimisers built
    on the model keep working)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (CrossRankBatchNorm, nn.SyncBatchNorm)):
        out = CrossRankBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def data_parallel(model: nn.Module, dist: DistInfo, *, sync_bn: bool) -> nn.Module:
    """The module a data-parallel training step calls: ``model`` itself in a single process, else
    DistributedDataParallel around it (BatchNorm synchronised first when ``sync_bn``).

    Call it after every parameter is final (DDP broadcasts rank 0's parameters and buffers at
    construction, so ranks whose global RNG drew another init start from rank 0's) and keep
    calling the unwrapped ``model`` wherever it is frozen or evaluated: a DDP wrapper then
    all-reduces gradients only in the steps that update its model. BatchNorm layers must be
    converted in place (the model's own children): pass a model that is not itself a BatchNorm."""
    if not dist.distributed or not any(p.requires_grad for p in model.parameters()):
        return model  # a parameter-free model (the identity anonymizer) has nothing to synchronise
    if sync_bn:
        converted = sync_batchnorm(model, dist.device)
        if converted is not model:
            raise ValueError(f"data_parallel: {type(model).__name__} is itself a BatchNorm layer; wrap a container of it")
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def check_batches(world_size: int, batches: Sequence[tuple[str, int]]) -> None:
    """per_rank_batch for every (config key, global batch); raises on the first that does not divide."""
    for key, value in batches:
        per_rank_batch(value, world_size, key=key)


class MetricLogger:
    """Scalars to a JSONL file (one object per line) and TensorBoard; rank 0 only.

    JSONL is the record a script reads back; TensorBoard is for looking.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            drop_partial_last_line(self.path)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log(self, step: int, metrics: dict[str, Any], *, phase: str = "train") -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "phase": phase, "step": step}
        for k, v in metrics.items():
            record[k] = float(v) if isinstance(v, (torch.Tensor, np.floating, np.integer)) else v
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("time", "phase", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{phase}/{k}", v, step)

    def image(self, tag: str, image_chw: torch.Tensor, step: int) -> None:
        """An image (C, H, W) in [0, 1] to TensorBoard."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image_chw.clamp(0, 1), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def drop_partial_last_line(path: Path) -> None:
    """Cut a JSONL file back to its last newline: a write cut off by a kill or a full disk leaves a
    partial record, which the next append would fuse with its own line into one unreadable line."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: str | Path) -> list[dict]:
    """Read a metrics.jsonl file back."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_dir_for(runs_root: str | Path, stage: str, name: str) -> Path:
    """<runs_root>/<stage>/<name>; a run.name that would leave <runs_root>/<stage> is a ConfigError."""
    return path_under(Path(runs_root) / stage, name, what="run.name")
