"""Test-suite policy (slow and GPU tests are skipped by default, each with its reason) and the
fixtures shared by the stage tests: one tiny synthetic world per session, paths files pointing
at it, and stage 1's three init runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.tiny import ANONYMIZATION_CONFIGS, ANONYMIZATION_FAST, INIT_TASKS, anonymization_paths, write_paths_file


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    # Two cores: more intra-op threads only add contention between tests.
    torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow on 2 CPU cores; run with --runslow (or -m slow)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


# --------------------------------------------------------------------------- the tiny world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny synthetic world (seed 0, with its preview), generated once per session.

    Shared by every test: treat it as read-only. A test that changes, breaks or regenerates
    files takes ``tiny_world_copy`` (or copies the one dataset it breaks into its tmp_path).
    """
    from aux_code.synthetic import generate_world

    out = tmp_path_factory.mktemp("tiny_world")
    generate_world(out, size="tiny", seed=0, workers=1, log=None)
    return out


@pytest.fixture()
def tiny_world_copy(tiny_world, tmp_path) -> Path:
    """A private copy of the tiny world (about 2 MB) for a test that may modify it."""
    return Path(shutil.copytree(tiny_world, tmp_path / "world"))


@pytest.fixture(scope="session")
def make_paths(tiny_world) -> Callable[[Path], Path]:
    """``make_paths(root)`` writes ``root/paths.yaml`` (every dataset root at the tiny world;
    weights, runs and results under ``root``) and returns its path, for $TEDSPAD_PATHS."""
    return lambda root: write_paths_file(Path(root), tiny_world)


# --------------------------------------------------------------------------- stage 1


@pytest.fixture(scope="session")
def init_runs(tiny_world, tmp_path_factory) -> Path:
    """The runs root holding stage 1's three init runs (utility, identity, budget) of the tiny
    world with the quick settings (1 epoch of 2 steps), made once per session."""
    from anonymization_training.__main__ import main

    runs = tmp_path_factory.mktemp("anon_runs")
    for config, _, _ in INIT_TASKS:
        rc = main(["--config", str(ANONYMIZATION_CONFIGS / f"{config}.yaml"), *anonymization_paths(tiny_world, runs),
                   *ANONYMIZATION_FAST])
        assert rc == 0, config
    return runs
