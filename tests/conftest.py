"""Test-suite policy: slow and GPU tests are skipped by default, each with its reason."""

from __future__ import annotations

import pytest
import torch


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
