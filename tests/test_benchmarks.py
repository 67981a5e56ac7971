"""The console entry points and the benchmarks/ folder: quick checks that they resolve and start.

The benchmarks are run by hand (docs/benchmarks.md); here each one imports, every name it
imports from the project exists (also the imports inside functions, which only a run would
reach), and ``--help`` exits 0.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("aux_code", "anonymization_training", "privacy_training", "feature_extraction", "anomaly_detection",
                    "scripts", "benchmarks")
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_console_entry_points_resolve_to_callables():
    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) == {"tedspad-anonymize", "tedspad-privacy", "tedspad-extract", "tedspad-anomaly", "tedspad-reproduce"}
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        func = getattr(importlib.import_module(module), attr)
        assert callable(func), f"{name} -> {target} is not callable"


def test_benchmarks_are_not_installed():
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("benchmarks") for pattern in include)
    assert not any((ROOT / "scripts" / f"{name}.py").exists() for name in BENCHMARKS)


def test_benchmark_list():
    assert {"bench_anomaly", "bench_anonymization", "bench_extraction", "bench_privacy", "ft_input_ablation"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_and_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    # Every project name the script imports, at the top or inside a function, still exists.
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT_PACKAGES:
            imported = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(imported, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"benchmarks/{name}.py imports {alias.name} from {node.module}, which has no such name")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_benchmark_runs_as_module_from_the_repo_root():
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_anomaly", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout


def test_docs_name_the_new_commands():
    stale = ("scripts/bench_", "scripts.bench_", "scripts.ft_input_ablation", "scripts/ft_input_ablation",
             "scripts.param_counts", "scripts/param_counts")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for old in stale:
            assert old not in text, f"{path.relative_to(ROOT)} still names {old}"


# --------------------------------------------------------------------------- the timed code paths, at toy size


def test_bench_anomaly_stage_variant_steps_the_mgfn_task(tmp_path):
    import argparse

    import torch

    from anomaly_detection.fake_features import make_fake_feature_set
    from benchmarks.bench_anomaly import run_stage

    make_fake_feature_set(tmp_path / "f", feature_dim=16, train=(6, 6), test=(2, 2), clips=(8, 12), shift=2.0, seed=0)
    args = argparse.Namespace(child="stage", features=str(tmp_path / "f"), preset="tiny", dim=16, batch=2, epochs=1,
                              threads=torch.get_num_threads(), val_fraction=0.34)
    out = run_stage(args)
    assert len(out["train_s"]) == len(out["eval_s"]) == 1 and 0.0 <= out["test_auc"] <= 1.0


def test_bench_anonymization_stage_iteration_runs_both_steps():
    from benchmarks.bench_anonymization import worker

    row = worker("synthetic", "stage", steps=1, warmup=0, batch=2, amp="auto")
    assert row["precision"] == "fp32" and row["step_s_median"] > 0  # auto is fp32 on the CPU


def test_bench_privacy_steps_the_target_task(tiny_world):
    from benchmarks.bench_privacy import CASES, bench_case

    row = bench_case("default", CASES["default"], vispr_root=tiny_world / "VISPR", repeats=1, paper_images=4)
    assert row["images"] > 0 and row["train_epoch_s"] > 0


@pytest.mark.parametrize("clip_input", ["rgb", "difference"])
def test_ft_input_ablation_sets_the_utility_input(tiny_world, tmp_path, clip_input):
    from anonymization_training.train import fresh_utility
    from benchmarks.ft_input_ablation import ablation_config

    cfg = ablation_config(ROOT / "configs/synthetic/anonymization/utility_pretrain.yaml", clip_input, runs=tmp_path,
                          overrides=[f"paths.ucf101={tiny_world / 'UCF101'}"])
    assert cfg.task == "utility_pretrain" and cfg.model.utility_clip_input == clip_input
    model, spec = fresh_utility(cfg, 4)
    assert model.clip_input == clip_input and spec["clip_input"] == clip_input  # the stored spec rebuilds it
