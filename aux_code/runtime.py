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
from typing import Any

import numpy as np
import torch

from aux_code.config import path_under


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
