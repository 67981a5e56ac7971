"""Issue 14's diagnosis of the stage-1 minimax runs: what fA does to the images, epoch by epoch.

``python -m scripts.stage1_diagnosis --runs <paths.runs> --out <folder> tedspad_select tedspad_ens ...``
reads each named stage-1 run (``<runs>/anonymization/<name>/``: metrics.jsonl, results.json and
grids/epoch_NNN.png) and writes

- ``diagnosis.md``: per run, one row per validation epoch: action top-1 (fT on fA's clips), the
  budget model's validation accuracy (NT-Xent agreement, or attribute accuracy for a supervised
  budget), the fresh attacker's validation cMAP (a model fA never trained against; chance in the
  header), SSIM and PSNR of fA's output to its input; the selected epoch is marked;
- ``diagnosis.png``: per run, the image grid of its selected epoch (originals over fA's outputs),
  stacked with the run name above each.

A run without the fresh-attacker probe (``fresh_attacker.enabled: false``) has empty attacker,
SSIM and PSNR columns. Nothing is trained here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aux_code.checkpoint import atomic_write_text
from aux_code.runtime import read_metrics

# (metrics key without "val_", column label, format): fractions are shown as percentages.
COLUMNS = (("action_top1", "action top-1", "{:.1%}"), ("budget_acc", "budget acc.", "{:.1%}"),
           ("attacker_cmap", "fresh attacker cMAP", "{:.1%}"), ("output_ssim", "SSIM", "{:.3f}"), ("output_psnr", "PSNR dB", "{:.2f}"))


class DiagnosisError(RuntimeError):
    pass


def run_rows(run_dir: Path) -> tuple[list[dict], int, float | None]:
    """(validation records, selected epoch, attacker chance) of one stage-1 run."""
    results_path, metrics_path = run_dir / "results.json", run_dir / "metrics.jsonl"
    for p in (results_path, metrics_path):
        if not p.is_file():
            raise DiagnosisError(f"{run_dir}: no {p.name}; is it a finished stage-1 run?")
    results = json.loads(results_path.read_text())
    selected = int(results["selection"]["epoch"])
    rows = [r for r in read_metrics(metrics_path) if r.get("phase") == "epoch" and "val_action_top1" in r]
    chance = next((r["val_attacker_chance"] for r in rows if "val_attacker_chance" in r), None)
    return rows, selected, chance


def _cell(record: dict, key: str, fmt: str) -> str:
    value = record.get(f"val_{key}")
    return "" if value is None else fmt.format(value).rstrip("%")


def table(name: str, rows: Sequence[dict], selected: int, chance: float | None) -> str:
    head = f"#### {name} (selected epoch {selected}" + (f"; attacker chance {chance * 100:.1f}" if chance is not None else "") + ")\n\n"
    lines = ["| epoch | " + " | ".join(label for _, label, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        mark = " (selected)" if int(r["step"]) == selected else ""
        lines.append(f"| {int(r['step'])}{mark} | " + " | ".join(_cell(r, k, s) for k, _, s in COLUMNS) + " |")
    return head + "\n".join(lines) + "\n"


def grid_figure(run_dirs: Sequence[Path], selected: Sequence[int], out: Path) -> Path | None:
    """The selected epoch's grid of each run, stacked and titled; None when no run has grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    for d, e in zip(run_dirs, selected):
        path = d / "grids" / f"epoch_{e:03d}.png"
        if path.is_file():
            images.append((d.name, plt.imread(path)))
    if not images:
        return None
    h, w = images[0][1].shape[:2]
    fig, axes = plt.subplots(len(images), 1, figsize=(w / 100, len(images) * (h / 100 + 0.3)), squeeze=False)
    for ax, (name, img) in zip(axes[:, 0], images):
        ax.imshow(np.asarray(img))
        ax.set_title(f"{name}: originals (top) over fA's outputs (bottom)", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="paths.runs of the runs (their stage-1 folders are under anonymization/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for diagnosis.md and diagnosis.png")
    parser.add_argument("names", nargs="+", help="stage-1 run names (e.g. tedspad tedspad_select tedspad_ens)")
    args = parser.parse_args(argv)
    run_dirs = [args.runs / "anonymization" / n for n in args.names]
    try:
        parts, chosen = [], []
        for d in run_dirs:
            rows, selected, chance = run_rows(d)
            parts.append(table(d.name, rows, selected, chance))
            chosen.append(selected)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "diagnosis.md", "\n".join(parts))
        figure = grid_figure(run_dirs, chosen, args.out / "diagnosis.png")
    except (DiagnosisError, OSError, KeyError, ValueError) as e:
        print(f"stage1_diagnosis: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'diagnosis.md'}" + (f" and {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
