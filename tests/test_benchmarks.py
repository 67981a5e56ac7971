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
