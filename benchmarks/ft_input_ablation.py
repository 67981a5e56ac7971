"""Why the synthetic world's tiny fT sees frame differences: RGB versus difference input.

    python -m benchmarks.ft_input_ablation                       # both inputs, stage 1's utility_pretrain recipe
    python -m benchmarks.ft_input_ablation --inputs rgb optim.epochs=120 --runs runs/ft_ablation

Runs stage 1's ``utility_pretrain`` task itself (``anonymization_training.run``, i.e. the one
training loop ``aux_code.fit.fit``) once per input, with the config file (default: the embedded
default, configs/synthetic/anonymization/utility_pretrain.yaml: the tiny I3D-R50 from scratch,
stage 1's clips and augmentation, Adam and the schedule section) and the overrides
``model.utility_clip_input=<input>`` plus any ``key=value`` given here (the stage's own
vocabulary; ``python -m anonymization_training --help-config`` lists them). Prints video-level
top-1 on the validation groups (carved from the train list) at every validation, and the
selected epoch's validation and testlist01 top-1 (the stage's results.json).

Runs go to ``--runs`` (``<runs>/anonymization/ft_input_<input>``; a rerun there resumes or
reuses them), or to a temporary folder that is deleted afterwards. One torch thread per run
by default (``--threads``).

On the default world (seed 0) an RGB input learns the people and places of the training
groups first and the motion hardly at all; the difference input learns the actions
(figures in docs/benchmarks.md, "Synthetic fT").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from anonymization_training.config import AnonymizationConfig
from anonymization_training.train import run
from aux_code.checkpoint import load_checkpoint
from aux_code.config import PROJECT_ROOT, load_config
from aux_code.training import LAST

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "anonymization" / "utility_pretrain.yaml"


def ablation_config(config: str | Path, clip_input: str, *, runs: Path, overrides: list[str]) -> AnonymizationConfig:
    """Stage 1's config for one input: the file, then this ablation's keys, then the user's overrides."""
    cfg = load_config(AnonymizationConfig, config, [
        f"paths.runs={runs}", f"run.name=ft_input_{clip_input}", f"model.utility_clip_input={clip_input}", *overrides,
    ])
    if cfg.task != "utility_pretrain":
        raise SystemExit(f"ft_input_ablation: {config} sets task {cfg.task!r}; it needs task utility_pretrain")
    return cfg


def run_one(cfg: AnonymizationConfig) -> dict:
    """The stage's run; returns its results with the per-validation history of its last.pt and the wall time."""
    started = time.perf_counter()
    results = run(cfg)
    seconds = time.perf_counter() - started
    history = load_checkpoint(Path(results["run_dir"]) / LAST, what="ablation run")["history"]
    return {"results": results, "seconds": seconds,
            "val_top1": {h["epoch"]: h["val_top1"] for h in history if "val_top1" in h}}


def table(rows: dict[str, dict]) -> str:
    epochs = sorted({e for r in rows.values() for e in r["val_top1"]})
    head = "| input | " + " | ".join(f"epoch {e}" for e in epochs) + " | selected: val / testlist01 top-1 | time |"
    lines = [head, "|" + "---|" * (len(epochs) + 3)]
    for clip_input, r in rows.items():
        res = r["results"]
        cells = [f"{100 * r['val_top1'][e]:.1f}" if e in r["val_top1"] else "" for e in epochs]
        selected = f"epoch {res['selection']['epoch']}: {100 * res['selected']['top1']:.1f} / {100 * res['test_top1']:.1f}"
        lines.append(f"| {clip_input} | " + " | ".join(cells) + f" | {selected} | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Cells: validation video top-1 (%) per evaluated epoch.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="stage-1 config overrides applied to every run")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="stage-1 config file (task utility_pretrain)")
    p.add_argument("--inputs", nargs="+", default=["rgb", "difference"], choices=["rgb", "difference", "rgb_difference"])
    p.add_argument("--root", default=None, help="UCF101-layout root (paths.ucf101; default: configs/paths.yaml's)")
    p.add_argument("--runs", default=None, help="keep the runs under this paths.runs (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = ([f"paths.ucf101={args.root}"] if args.root else []) + list(args.overrides)
    with tempfile.TemporaryDirectory(prefix="ft_input_ablation_") as tmp:
        runs = Path(args.runs).resolve() if args.runs else Path(tmp)
        rows = {}
        for clip_input in args.inputs:
            cfg = ablation_config(args.config, clip_input, runs=runs, overrides=overrides)
            rows[clip_input] = run_one(cfg)
    print(f"\nfT input ablation: {args.config} {' '.join(overrides)} (stage 1's utility_pretrain through fit)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
