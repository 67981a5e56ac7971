from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from aux_code.checkpoint import load_checkpoint, save_checkpoint
from aux_code.config import PathsConfig, TrainRunConfig, opt
from aux_code.training import (
    BestTracker,
    NonFiniteLossError,
    ResumeMismatchError,
    check_finite,
    rng_state,
    set_rng_state,
    start_run,
)


def test_check_finite_names_step_and_terms():
    check_finite(3, {"ce": torch.tensor(1.0), "triplet": 0.5})
    with pytest.raises(NonFiniteLossError, match=r"step 7: ce=1, triplet=nan"):
        check_finite(7, {"ce": torch.tensor(1.0), "triplet": torch.tensor(float("nan"))})


def test_rng_state_roundtrip_through_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    save_checkpoint({"rng": rng_state()}, tmp_path / "s.pt")
    expected = (random.gauss(0, 1), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "s.pt")["rng"])
    assert (random.gauss(0, 1), np.random.rand(), torch.rand(1).item()) == expected


def test_best_tracker_modes():
    hi, lo = BestTracker("max"), BestTracker("min")
    assert [hi.update(v, e) for e, v in enumerate([0.5, 0.7, 0.6])] == [True, True, False]
    assert [lo.update(v, e) for e, v in enumerate([0.5, 0.7, 0.4])] == [True, False, True]
    assert (hi.best, hi.best_epoch, lo.best_epoch) == (0.7, 1, 2)


@dataclass
class TinyStage:
    paths: PathsConfig = opt(PathsConfig(), "paths")
    run: TrainRunConfig = opt(TrainRunConfig(), "run")


def test_start_run_save_and_resume(tmp_path):
    cfg = TinyStage()
    cfg.paths.runs = str(tmp_path)
    cfg.run.name = "r"
    ctx = start_run(cfg, stage="demo", tensorboard=False)
    assert (tmp_path / "demo" / "r" / "config.yaml").is_file()
    assert ctx.resume_or_none() is None
    assert ctx.save({"w": torch.ones(1)}, epoch=1, metric=0.5)
    assert not ctx.save({"w": torch.zeros(1)}, epoch=2, metric=0.4)
    assert load_checkpoint(ctx.run_dir / "best.pt")["epoch"] == 1
    again = start_run(cfg, stage="demo", tensorboard=False)
    state = again.resume_or_none()
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.zeros(1))
    assert again.best.best_epoch == 1


def test_resume_refuses_a_changed_config_but_allows_more_epochs(tmp_path):
    cfg = TinyStage()
    cfg.paths.runs = str(tmp_path)
    cfg.run.name = "r"
    start_run(cfg, stage="demo", tensorboard=False).save({"w": torch.ones(1)}, epoch=1)
    cfg.run.log_every = 99  # how a run logs may change on resume
    start_run(cfg, stage="demo", tensorboard=False).finish()
    cfg.run.seed = 5
    with pytest.raises(ResumeMismatchError, match=r"run\.seed: 0 -> 5.*new run\.name, or run\.resume=false"):
        start_run(cfg, stage="demo", tensorboard=False)
    cfg.run.resume = False  # starting over is allowed
    start_run(cfg, stage="demo", tensorboard=False).finish()
