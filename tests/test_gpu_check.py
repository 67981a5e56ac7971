"""scripts/gpu_check.sh on a machine without CUDA: a dry run that skips every GPU item with its
reason, still collects the gpu-marked tests, writes its JSON and Markdown, and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the real check runs instead")
def test_dry_run_through_the_shell_script(tmp_path):
    env = dict(os.environ, GPU_CHECK_NO_INSTALL="1", PYTHON=str(Path(os.sys.executable)), OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    items = report["items"]
    assert list(items) == list(gpu_check.ITEMS) and report["dry_run"] is True
    assert items["env"]["status"] == "ok" and items["env"]["cuda_available"] is False
    assert set(items["env"]["packages"]) == set(gpu_check.PACKAGES.values())
    # The gpu tests are collected (so a GPU box runs them), not run.
    tests = items["gpu_tests"]
    assert tests["status"] == "skipped" and "collected only" in tests["reason"]
    assert tests["collected"] >= 5 and all("tests/test_gpu.py::" in t for t in tests["tests"])
    for name in ("extraction", "minimax", "mgfn", "dali"):
        assert items[name]["status"] == "skipped" and "no CUDA device" in items[name]["reason"], items[name]
    table = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert table[0].startswith("# GPU check") and "dry run" in table[2]
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| item")]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == list(gpu_check.ITEMS)
    assert all(" skipped " in r for r in rows if not r.startswith(("| env", "| gpu_tests")))


def test_gpu_tests_are_skipped_on_cpu_with_their_reason():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    done = subprocess.run([os.sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "needs a CUDA device; none is visible" in done.stdout
    assert " passed" not in done.stdout and "5 skipped" in done.stdout


def test_missing_packages_are_named(monkeypatch):
    monkeypatch.setattr(gpu_check, "_present", lambda module: module != "av")
    assert gpu_check.missing("av", "einops") == ["av (PyAV)"]
    assert gpu_check.item_dali(True, Path(".")) == {"status": "skipped", "reason": "needs av (PyAV)"}
    assert gpu_check.packages()["av (PyAV)"] is False


def test_minimax_item_runs_the_shipped_paper_memory_setting():
    micro, recompute = gpu_check.paper_memory_setting()
    # what the shipped paper config needs to fit one 80 GB GPU (configs/anonymization/tedspad.yaml)
    assert (micro, recompute) == (None, ["anonymizer", "utility", "budget"])
    cmd = gpu_check.minimax_command()
    assert cmd[cmd.index("--batch") + 1] == "8" and cmd[cmd.index("--res") + 1] == "224"
    assert ("--recompute" in cmd) == bool(recompute) and ("--micro-batch" in cmd) == bool(micro)
    if recompute:
        assert cmd[cmd.index("--recompute") + 1].split(",") == recompute
