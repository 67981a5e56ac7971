"""Giorgi et al.'s Table 1 (and Fig. 10) with the two-stream detector on the synthetic UCF-Crime analogue.

``python -m scripts.two_stream_table1 [--seeds 0] [--variants ...] [--dpae NAME=RUN ...] [--config FILE]
[key=value ...]`` trains, per variant and seed, ``python -m two_stream_detection`` (a run folder
holding results.json is reused as it is; all runs share one frame / flow cache under paths.runs)
and writes ``<paths.results>/two_stream/table1.md`` (FL-AUC (%) with its 95% interval over whole
test videos, pooled over seeds, and VL-F1 (%) as the mean over seeds, next to the paper's values)
and ``table1_summary.json``.

Table 1's rows: 2S-bag (the base config), 2S-no-bag, 2S-bag-no-hm (no hard mining), 2S-bag-ha
(hard anomalies only: soft frames left out of training), 1S-bag, 1S-no-bag, 1S-bag-ha. The paper
does not say how the non-ha rows use soft frames beyond s.3.4.4 (neither fully normal nor fully
anomalous); they run with the base config's ``labels.soft_frames`` (default 'soft': target 0.5),
``--base-soft positive`` runs the other reading.

Fig. 10 (``--dpae``): the base detector on frames reconstructed by given DP-AE runs, each
``NAME=RUN`` a DP-AE run folder under paths.runs holding encoder.pt and decoder.pt (e.g.
``--dpae no_dp=dpae/no_dp_adam --dpae dp_adagrad=dpae/dp_adagrad``), beside raw frames; written as ``fig10.md``
(FL-AUC, VL-F1 and the pair's epsilon). The pairs must have been trained at the detector's
data.input_size. Extra key=value overrides go to every run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from aux_code.config import PROJECT_ROOT, load_config
from two_stream_detection.config import TwoStreamConfig

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "two_stream" / "default.yaml"
VARIANTS: dict[str, list[str]] = {
    "2S-bag": [],
    "2S-no-bag": ["bag.enabled=false"],
    "2S-bag-no-hm": ["mining.enabled=false"],
    "2S-bag-ha": ["labels.soft_frames=exclude"],
    "1S-bag": ["model.streams=1"],
    "1S-no-bag": ["model.streams=1", "bag.enabled=false"],
    "1S-bag-ha": ["model.streams=1", "labels.soft_frames=exclude"],
}
PAPER = {  # Table 1 (real UCF-Crime): FL-AUC %, VL-F1 %
    "2S-bag": (82.6, 66.7), "2S-no-bag": (77.6, 61.5), "2S-bag-no-hm": (80.2, 64.0), "2S-bag-ha": (83.7, 91.0),
    "1S-bag": (78.6, 74.1), "1S-no-bag": (75.3, 58.3), "1S-bag-ha": (81.5, 87.5),
}
CACHE = "two_stream/cache"


def variant_args(variant: str, base_soft: str | None) -> list[str]:
    args = list(VARIANTS[variant])
    if base_soft is not None and not any(a.startswith("labels.soft_frames=") for a in args):
        args.append(f"labels.soft_frames={base_soft}")
    return args


def run_one(config: Path, name: str, args: list[str], extra: list[str]) -> tuple[dict, Path]:
    """results.json of run ``name`` (trained unless its folder already holds one) and its folder."""
    from two_stream_detection.__main__ import main as stage_main

    argv = [f"run.name={name}", f"data.cache_dir={CACHE}", *args, *extra]
    cfg = load_config(TwoStreamConfig, config, argv, check_paths=False)
    run_dir = Path(cfg.paths.runs) / "two_stream" / name
    results = run_dir / "results.json"
    if results.is_file():
        print(f"[two_stream_table1] reusing {results}", flush=True)
    else:
        print("+ python -m two_stream_detection --config " + str(config) + " " + " ".join(argv), flush=True)
        status = stage_main(["--config", str(config), *argv])
        if status != 0:
            raise SystemExit(f"run {name} failed with status {status}")
    return json.loads(results.read_text()), run_dir


def summarize(runs: Sequence[tuple[dict, Path]], *, resamples: int = 1000) -> dict:
    """FL-AUC pooled over the seeds' runs (frame_metric_ci over whole test videos) and VL-F1's mean."""
    from aux_code.stats import frame_metric_ci
    from two_stream_detection.task import load_scores

    labels, per_seed, names0 = None, [], None
    for _, run_dir in runs:
        names, y, x = load_scores(run_dir / "test_scores.npz")
        if names0 is not None and names != names0:
            raise SystemExit(f"{run_dir}: its test videos differ from the other seeds' runs")
        names0, labels = names, y
        per_seed.append(x)
    ci = frame_metric_ci(labels, per_seed, metric="auc", resamples=resamples, seed=0)
    f1 = [float(r["test"]["vl_f1"]) for r, _ in runs]
    return {"fl_auc": ci.estimate, "fl_auc_ci": [ci.low, ci.high], "vl_f1": float(np.mean(f1)), "vl_f1_per_seed": f1,
            "fl_auc_per_seed": [float(r["test"]["fl_auc"]) for r, _ in runs],
            "selected_epochs": [int(r["selection"]["epoch"]) for r, _ in runs]}


def _cell(s: dict) -> tuple[str, str]:
    lo, hi = s["fl_auc_ci"]
    return f"{100 * s['fl_auc']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]", f"{100 * s['vl_f1']:.1f}"


def table1_markdown(rows: dict[str, dict], seeds: Sequence[int]) -> str:
    lines = [f"Two-stream detector on the synthetic UCF-Crime analogue, seeds {list(seeds)}: FL-AUC (%) [95% CI over test "
             "videos] and VL-F1 (%, mean over seeds); the paper's Table 1 (real UCF-Crime) beside.", "",
             "| model | FL-AUC (synthetic) | VL-F1 (synthetic) | FL-AUC (paper) | VL-F1 (paper) |",
             "|---|---|---|---|---|"]
    for v, s in rows.items():
        auc, f1 = _cell(s)
        pa, pf = PAPER[v]
        lines.append(f"| {v} | {auc} | {f1} | {pa:.1f} | {pf:.1f} |")
    return "\n".join(lines) + "\n"


def fig10_markdown(rows: dict[str, dict], seeds: Sequence[int]) -> str:
    lines = [f"2S-bag on raw and DP-AE-reconstructed frames (the paper's Fig. 10), seeds {list(seeds)}.", "",
             "| frames | DP-AE run | optimizer | epsilon | FL-AUC (%) [95% CI] | VL-F1 (%) |", "|---|---|---|---|---|---|"]
    for name, s in rows.items():
        auc, f1 = _cell(s)
        eps = s.get("epsilon")
        eps_s = "-" if name == "raw" else ("inf (no DP)" if eps is None else f"{eps:.3g}")
        lines.append(f"| {name} | {s.get('dpae_run', '-')} | {s.get('optimizer', '-')} | {eps_s} | {auc} | {f1} |")
    return "\n".join(lines) + "\n"


def _dpae_privacy(runs_root: Path, run: str) -> dict:
    """The DP-AE run's privacy block (optimizer, epsilon) from its results.json, when it has one."""
    path = runs_root / run / "results.json"
    if not path.is_file():
        return {}
    p = json.loads(path.read_text()).get("privacy", {})
    return {"optimizer": p.get("optimizer"), "epsilon": p.get("epsilon")}


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(prog="python -m scripts.two_stream_table1", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--base-soft", choices=["soft", "exclude", "positive"], default=None,
                   help="labels.soft_frames of the non-ha rows (default: the config's)")
    p.add_argument("--dpae", action="append", default=[], metavar="NAME=RUN",
                   help="Fig. 10, repeatable: a DP-AE run folder (under paths.runs) whose reconstructions the base detector sees")
    p.add_argument("--no-table1", action="store_true", help="only the Fig. 10 rows (with --dpae)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("overrides", nargs="*", help="key=value passed to every run")
    a = p.parse_args(argv)
    pairs = []
    for item in a.dpae:
        name, sep, run = item.partition("=")
        if not sep or not name or not run or name == "raw":
            p.error(f"--dpae {item!r}: expected NAME=RUN (NAME not 'raw'), e.g. dp_adagrad=dpae/dp_adagrad")
        pairs.append((name, run.rstrip("/")))
    cfg = load_config(TwoStreamConfig, a.config, a.overrides, check_paths=False)
    resamples = cfg.eval.resamples
    out = Path(cfg.paths.results) / "two_stream"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"seeds": a.seeds, "overrides": a.overrides, "config": str(a.config), "table1": {}, "fig10": {}}
    if not a.no_table1:
        for v in a.variants:
            runs = [run_one(a.config, f"table1_{v}_s{s}", [*variant_args(v, a.base_soft), f"run.seed={s}"], a.overrides)
                    for s in a.seeds]
            summary["table1"][v] = summarize(runs, resamples=resamples)
        table = table1_markdown(summary["table1"], a.seeds)
        (out / "table1.md").write_text(table)
        print(table)
        print(f"written {out / 'table1.md'}")
    if pairs:
        raw = [run_one(a.config, f"table1_2S-bag_s{s}", [*variant_args("2S-bag", a.base_soft), f"run.seed={s}"], a.overrides)
               for s in a.seeds]
        summary["fig10"]["raw"] = summarize(raw, resamples=resamples)
        for name, run in pairs:
            dpae = ["anonymizer.method=dpae", f"anonymizer.encoder={run}/encoder.pt", f"anonymizer.decoder={run}/decoder.pt"]
            runs = [run_one(a.config, f"fig10_{name}_s{s}", [*variant_args("2S-bag", a.base_soft), *dpae, f"run.seed={s}"],
                            a.overrides) for s in a.seeds]
            summary["fig10"][name] = {**summarize(runs, resamples=resamples), "dpae_run": run,
                                      **_dpae_privacy(Path(cfg.paths.runs), run)}
        fig = fig10_markdown(summary["fig10"], a.seeds)
        (out / "fig10.md").write_text(fig)
        print(fig)
        print(f"written {out / 'fig10.md'}")
    (out / "table1_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
