"""LUSS-AE's Table 1 row (and the VCR-only baseline of Table 2) on the synthetic analogues, over seeds.

``python -m scripts.luss_table1 [--seeds 0 1 2] [--datasets ped2 avenue shanghaitech_unsupervised]
[--config-dir configs/synthetic/luss] [key=value ...]`` trains, per dataset and seed, LUSS-AE
(VCR + FFP + PRP, the paper's alphas) and the VCR-only baseline (loss.ffp=0 loss.prp=0,
eval.alphas=[1,0,0]) through ``python -m anomaly_detection.luss`` (a run folder holding results.json is reused as it is),
run names carry a digest of any overrides that change numbers, so a rerun with other overrides trains new runs;
then prints micro frame AUC (%) per dataset: mean over seeds with a 95% t-interval, and writes
``<paths.results>/luss/table1.md`` and ``table1_summary.json``. ``--variants luss vcr vcr_ffp vcr_prp``
adds Table 2's other rows (VCR+FFP, VCR+PRP: the missing task's loss weight and alpha set to 0;
written as ``table_<variants>.md``). Extra key=value overrides go to every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from anomaly_detection.luss.__main__ import main as luss_main
from aux_code.checkpoint import load_checkpoint
from aux_code.config import PROJECT_ROOT, experiment_hash, load_config
from aux_code.fit import dataset_files
from aux_code.training import LAST
from anomaly_detection.luss.config import LussConfig
from aux_code.luss_scoring import PAPER_ALPHAS

DATASETS = ("ped2", "avenue", "shanghaitech_unsupervised")
VARIANTS = {  # overrides per variant; "{a1}" etc. are the dataset's paper alphas (Table 2's rows)
    "luss": [],
    "vcr": ["loss.ffp=0", "loss.prp=0", "eval.alphas=[1,0,0]"],
    "vcr_ffp": ["loss.prp=0", "eval.alphas=[{a1},{a2},0]"],
    "vcr_prp": ["loss.ffp=0", "eval.alphas=[{a1},0,{a3}]"],
}
LABELS = {"luss": "LUSS-AE (VCR+FFP+PRP)", "vcr": "VCR only", "vcr_ffp": "VCR+FFP", "vcr_prp": "VCR+PRP"}
PAPER = {  # micro frame AUC (%): Table 1 (LUSS-AE) and Table 2's rows (Ped2: not reported)
    "luss": {"ped2": 98.52, "avenue": 89.04, "shanghaitech_unsupervised": 81.21},
    "vcr": {"ped2": None, "avenue": 82.72, "shanghaitech_unsupervised": 73.11},
    "vcr_ffp": {"ped2": None, "avenue": 87.95, "shanghaitech_unsupervised": 76.35},
    "vcr_prp": {"ped2": None, "avenue": 87.43, "shanghaitech_unsupervised": 79.20},
}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% t-interval (a single value: the interval is the value)."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, m, m
    half = T975.get(len(x) - 1, 1.96) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, m - half, m + half


def run_luss(config: Path, name: str, overrides: list[str], *, driver: str = "luss_table1") -> dict:
    """One ``python -m anomaly_detection.luss`` run named ``name``; a run folder holding results.json is
    reused as it is when it was made with the same settings and the same dataset label files (their
    digests, as aux_code.fit's resume check sees them; delete the folder to train it again; one made
    otherwise is an error, never a silent reuse). Returns its results.json."""
    args = ["--config", str(config), f"run.name={name}", *overrides]
    cfg = load_config(LussConfig, config, args[2:])
    results = Path(cfg.paths.runs) / "luss" / name / "results.json"
    if results.is_file():
        old = json.loads(results.read_text())
        last = results.parent / LAST
        held = load_checkpoint(last, what="LUSS-AE run checkpoint").get("dataset_files") if last.is_file() else None
        if old.get("config_hash") != experiment_hash(cfg) or held != dataset_files(cfg):
            raise SystemExit(f"[{driver}] {results.parent} holds a run of other settings or of other "
                             f"{cfg.data.dataset} label files than paths.{cfg.data.dataset} holds now "
                             f"({getattr(cfg.paths, cfg.data.dataset)}); delete it, or give this run's results "
                             "another paths.runs")
        print(f"[{driver}] reusing {results}", flush=True)
        return old
    status = luss_main(args)
    if status != 0:
        raise SystemExit(f"run {name} failed with status {status}")
    return json.loads(results.read_text())


def split_overrides(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(options, key=value overrides): the overrides may come anywhere, even after a list option such as
    --seeds (whose nargs would otherwise swallow them)."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    return [a for a in args if a.startswith("-") or "=" not in a], [a for a in args if not a.startswith("-") and "=" in a]


def overrides_tag(overrides: list[str]) -> str:
    """'' for no overrides that change numbers (paths.*, run.device), else '_' + a digest of them: runs
    made with other overrides get other names, so a reused run folder is always the one asked for."""
    decisive = sorted(o for o in overrides if not o.startswith(("paths.", "run.device=")))
    return "_" + hashlib.sha1("\n".join(decisive).encode()).hexdigest()[:8] if decisive else ""


def run_one(config: Path, dataset: str, variant: str, seed: int, extra: list[str]) -> dict:
    a1, a2, a3 = PAPER_ALPHAS[dataset]
    variant_args = [x.format(a1=a1, a2=a2, a3=a3) for x in VARIANTS[variant]]
    name = f"table1_{dataset}_{variant}_s{seed}{overrides_tag(extra)}"
    return run_luss(config, name, [f"run.seed={seed}", *variant_args, *extra])


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(prog="python -m scripts.luss_table1", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--variants", nargs="+", default=["luss", "vcr"], choices=list(VARIANTS),
                   help="luss and vcr: Table 1's row and its baseline; vcr_ffp, vcr_prp: Table 2's other rows")
    p.add_argument("--config-dir", type=Path, default=PROJECT_ROOT / "configs" / "synthetic" / "luss")
    p.add_argument("overrides", nargs="*", help="key=value passed to every run")
    options, overrides = split_overrides(argv)
    a = p.parse_args(options)
    a.overrides = overrides
    summary: dict = {"seeds": a.seeds, "overrides": a.overrides, "runs": {}}
    for d in a.datasets:
        for v in a.variants:
            for s in a.seeds:
                r = run_one(a.config_dir / f"{d}.yaml", d, v, s, a.overrides)
                t = r["test"]
                summary["runs"][f"{d}/{v}/{s}"] = {
                    "micro": 100 * t["frame_auc_micro"], "macro": 100 * t["frame_auc_macro"],
                    "per_task_micro": {k: 100 * x["micro_auc"] for k, x in t["per_task"].items()},
                    "selected_epoch": r["selection"]["epoch"],
                }
    lines = ["| method | " + " | ".join(a.datasets) + " |", "|---|" + "---|" * len(a.datasets)]
    summary["table"] = {}
    for v in a.variants:
        cells, paper = [], []
        for d in a.datasets:
            vals = [summary["runs"][f"{d}/{v}/{s}"]["micro"] for s in a.seeds]
            m, lo, hi = interval(vals)
            summary["table"][f"{d}/{v}"] = {"mean": m, "ci95": [lo, hi], "values": vals}
            cells.append(f"{m:.2f} [{lo:.2f}, {hi:.2f}]")
            ref = PAPER[v][d]
            paper.append("n/a" if ref is None else f"{ref:.2f}")
        label = LABELS[v]
        lines.append(f"| {label}, synthetic, mean [95% CI] over seeds {a.seeds} | " + " | ".join(cells) + " |")
        lines.append(f"| {label}, paper (real data) | " + " | ".join(paper) + " |")
    table = "\n".join(lines)
    print("Micro frame AUC (%)\n" + table)
    cfg = load_config(LussConfig, a.config_dir / f"{a.datasets[0]}.yaml", a.overrides, check_paths=False)
    out = Path(cfg.paths.results) / "luss"
    out.mkdir(parents=True, exist_ok=True)
    tag = ("table1" if a.variants == ["luss", "vcr"] else "table_" + "_".join(a.variants)) + overrides_tag(a.overrides)
    (out / f"{tag}.md").write_text("Micro frame AUC (%)\n\n" + table + "\n")
    (out / f"{tag}_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"written {out / (tag + '.md')} and {out / (tag + '_summary.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
