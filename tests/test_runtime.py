from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from aux_code.runtime import (
    MetricLogger,
    init_runtime,
    read_metrics,
    seed_everything,
    select_device,
)


def test_seed_everything_reproducible_and_rank_offset():
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3, rank=1)
    assert torch.rand(1).item() != a[2]


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


def test_single_process_runtime(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_runtime("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)


def test_metric_logger_jsonl(tmp_path):
    log = MetricLogger(tmp_path, tensorboard=False)
    log.log(1, {"loss": torch.tensor(0.5), "acc": np.float32(0.25)})
    log.log(2, {"loss": 0.4}, phase="val")
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["phase"]) for r in rows] == [(1, "train"), (2, "val")]
    assert rows[0]["loss"] == 0.5 and rows[0]["acc"] == 0.25
    silent = MetricLogger(tmp_path / "other", enabled=False)
    silent.log(1, {"x": 1})
    assert not (tmp_path / "other").exists()


