"""Privacy-preserving unsupervised detection: LUSS-AE trained and tested on anonymized video, per method.

``python -m scripts.luss_anonymized --summary results/reproduce/synthetic/summary.json
[--dataset shanghaitech_unsupervised] [--seeds 0 1 2] [--methods raw blur ...] [key=value ...]``

For every method of a finished reproduce run (its ``summary.json``), LUSS-AE is trained on the
anonymized normal videos of one unsupervised analogue and scored on its anonymized test videos,
through the same anonymizer the reproduce run used in stage 3 (its extraction step's
``anonymizer.*`` overrides, so a learned fA is the very checkpoint stage 2 judged). The table
sets the stage-2 privacy of that method (paper-protocol cMAP and the worst case over attackers,
each with its bootstrap CI from the summary) beside the LUSS-AE micro frame AUC (mean and 95%
t-interval over training seeds) and the paired change against raw (same seed, same split).
``paths.runs`` must be the reproduce run's (learned anonymizers resolve under it). Writes
``<paths.results>/luss/anonymized_<dataset>.md`` and ``.json`` (names and run names carry a digest of
overrides that change numbers, as in scripts.luss_table1).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from anomaly_detection.luss.config import DATASETS, LussConfig
from aux_code.config import PROJECT_ROOT, load_config
from scripts.luss_table1 import interval, overrides_tag, run_luss, split_overrides


def anonymizer_overrides(summary: dict, method: str) -> list[str]:
    """The ``anonymizer.*`` overrides of ``method``'s extraction step in a reproduce summary."""
    steps = [k for k in summary["steps"] if k.startswith("extraction/") and k.split("/", 1)[1].split("-", 1)[-1] == method]
    if len(steps) != 1:
        raise SystemExit(f"summary: expected one extraction step of method {method!r}, found {steps or 'none'}")
    command = summary["steps"][steps[0]].get("command")
    if not command:
        raise SystemExit(f"summary: step {steps[0]} records no command")
    return [a for a in shlex.split(command) if a.startswith("anonymizer.")]


def cell(ci: dict | None, scale: float = 100.0) -> str:
    if not ci:
        return "n/a"
    return f"{scale * ci['estimate']:.2f} [{scale * ci['low']:.2f}, {scale * ci['high']:.2f}]"


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(prog="python -m scripts.luss_anonymized", description=__doc__.split("\n")[0])
    p.add_argument("--summary", type=Path, required=True, help="a finished reproduce run's summary.json")
    p.add_argument("--dataset", default="shanghaitech_unsupervised", choices=DATASETS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=None, help="methods of the summary (default: all; raw first)")
    p.add_argument("--config-dir", type=Path, default=PROJECT_ROOT / "configs" / "synthetic" / "luss")
    p.add_argument("overrides", nargs="*", help="key=value passed to every run")
    options, overrides = split_overrides(argv)
    a = p.parse_args(options)
    a.overrides = overrides
    summary = json.loads(a.summary.read_text())
    points = summary["points"]
    methods = a.methods or sorted(points, key=lambda m: (m != "raw", m))
    unknown = [m for m in methods if m not in points]
    if unknown:
        raise SystemExit(f"methods {unknown} are not in {a.summary} (it has {sorted(points)})")
    if "raw" not in methods:
        methods = ["raw", *methods]  # the paired change needs the raw runs
    config = a.config_dir / f"{a.dataset}.yaml"
    out: dict = {"dataset": a.dataset, "seeds": a.seeds, "summary": str(a.summary), "overrides": a.overrides,
                 "methods": {}}
    for m in methods:
        anonymizer = anonymizer_overrides(summary, m)
        aucs = []
        for s in a.seeds:
            r = run_luss(config, f"anon_{a.dataset}_{m}_s{s}{overrides_tag(a.overrides)}", [f"run.seed={s}", *anonymizer, *a.overrides],
                         driver="luss_anonymized")
            aucs.append(100 * r["test"]["frame_auc_micro"])
        point = points[m]
        worst = point.get("worst_case") or {}
        out["methods"][m] = {
            "label": point.get("label", m), "anonymizer": anonymizer, "luss_micro_auc": aucs,
            "cmap_ci": point.get("cmap_ci"), "worst_case_cmap_ci": worst.get("cmap_ci"),
            "worst_case_attacker": worst.get("attacker"), "mgfn_auc_ci": point.get("anomaly_ci"),
        }
    raw = out["methods"]["raw"]["luss_micro_auc"]
    lines = ["| method | privacy cMAP (%, target model from scratch) | worst-case cMAP (%) | LUSS-AE micro AUC (%) "
             "| change vs raw, paired (points) | MGFN AUC (%, UCF-Crime analogue) |", "|---|---|---|---|---|---|"]
    for m, r in out["methods"].items():
        mean, lo, hi = interval(r["luss_micro_auc"])
        d = [x - y for x, y in zip(r["luss_micro_auc"], raw)]
        dm, dlo, dhi = interval(d)
        r["luss_ci95"], r["change_vs_raw"] = [mean, lo, hi], [dm, dlo, dhi]
        change = "0 (reference)" if m == "raw" else f"{dm:+.2f} [{dlo:+.2f}, {dhi:+.2f}]"
        attacker = f" ({r['worst_case_attacker']})" if r["worst_case_attacker"] else ""
        lines.append(f"| {r['label']} | {cell(r['cmap_ci'])} | {cell(r['worst_case_cmap_ci'])}{attacker} | "
                     f"{mean:.2f} [{lo:.2f}, {hi:.2f}] | {change} | {cell(r['mgfn_auc_ci'])} |")
    table = "\n".join(lines)
    head = (f"LUSS-AE on the anonymized {a.dataset} analogue, seeds {a.seeds} (mean [95% t-interval over seeds]); "
            f"privacy and MGFN columns from {a.summary} (bootstrap CIs)")
    print(head + "\n" + table)
    cfg = load_config(LussConfig, config, a.overrides, check_paths=False)
    dest = Path(cfg.paths.results) / "luss"
    dest.mkdir(parents=True, exist_ok=True)
    stem = f"anonymized_{a.dataset}{overrides_tag(a.overrides)}"
    (dest / f"{stem}.md").write_text(head + "\n\n" + table + "\n")
    (dest / f"{stem}.json").write_text(json.dumps(out, indent=1))
    print(f"written {dest / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
