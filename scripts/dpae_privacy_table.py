"""Giorgi et al.'s privacy table on the synthetic world: the DP autoencoder per optimizer and noise multiplier.

``python -m scripts.dpae_privacy_table [--optimizers no_dp_adam dp_sgd dp_adam dp_adagrad] [--noise 0.1 0.5 1.0]
[--config-dir configs/synthetic] [--no-privacy-stage] [key=value ...]`` trains each point with
``python -m anonymization_training.dpae`` (run ``no_dp_adam``, or ``<optimizer>_nm<noise>``; the No-DP
baseline has no noise level) and evaluates it with ``python -m privacy_training`` (run
``dpae_<that name>``); a run folder holding results.json is reused as it is. It then writes
``<paths.results>/dpae/privacy_table.md`` and ``privacy_table.json``: per point epsilon (delta,
RDP accountant, every step taken), SSIM / PSNR / MSE of the reconstructed frames (the DP-AE's
held-out test frames), SSIM / PSNR / MSE and Haar faces on the privacy test images, faces on the
astronaut photograph, the privacy cMAP of a fresh target model, training time and epochs.
Extra key=value overrides go to every DP-AE run (e.g. ``optim.epochs=5``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from anonymization_training.dpae.__main__ import main as dpae_main
from anonymization_training.dpae.config import DPAEStageConfig
from aux_code.checkpoint import atomic_write_json, atomic_write_text
from aux_code.config import PROJECT_ROOT, load_config
from aux_code.runtime import read_metrics

OPTIMIZERS = ("no_dp_adam", "dp_sgd", "dp_adam", "dp_adagrad")
LABELS = {"no_dp_adam": "No-DP Adam", "dp_sgd": "DP-SGD", "dp_adam": "DP-Adam", "dp_adagrad": "DP-Adagrad"}


def run_name(optimizer: str, noise: float | None) -> str:
    """The DP-AE run of one trade-off point (the privacy / extraction runs prefix it with ``dpae_``)."""
    return optimizer if noise is None else f"{optimizer}_nm{noise:g}"


def points(optimizers: Sequence[str], noises: Sequence[float]) -> list[tuple[str, float | None]]:
    """(optimizer, noise multiplier or None) of every point: No-DP once, each DP optimizer at each noise."""
    out: list[tuple[str, float | None]] = []
    for opt in optimizers:
        if opt not in OPTIMIZERS:
            raise SystemExit(f"--optimizers: {opt!r} is not one of {', '.join(OPTIMIZERS)}")
        out.extend([(opt, None)] if opt == "no_dp_adam" else [(opt, float(n)) for n in noises])
    return out


def _reuse_or_run(results: Path, main, argv: list[str], what: str) -> dict:
    if not results.is_file():
        print("+ python -m " + what + " " + " ".join(argv), flush=True)
        rc = main(argv)
        if rc != 0:
            raise SystemExit(f"{what} {' '.join(argv)} exited with status {rc}")
    return json.loads(results.read_text())


def train_point(config_dir: Path, optimizer: str, noise: float | None, extra: list[str]) -> tuple[dict, Path]:
    name = run_name(optimizer, noise)
    config = config_dir / "dpae" / f"{optimizer}.yaml"
    args = [f"run.name={name}", *([] if noise is None else [f"dp.noise_multiplier={noise}"]), *extra]
    cfg = load_config(DPAEStageConfig, config, args, check_paths=False)
    run_dir = Path(cfg.paths.runs) / "dpae" / name
    return _reuse_or_run(run_dir / "results.json", dpae_main, ["--config", str(config), *args], "anonymization_training.dpae"), run_dir


def privacy_point(config_dir: Path, optimizer: str, noise: float | None, runs: Path) -> dict:
    from privacy_training.__main__ import main as privacy_main

    name = run_name(optimizer, noise)
    args = ["--config", str(config_dir / "privacy" / f"dpae_{optimizer}.yaml"), f"anonymizer.encoder=dpae/{name}/encoder.pt",
            f"anonymizer.decoder=dpae/{name}/decoder.pt", f"run.name=dpae_{name}"]
    return _reuse_or_run(runs / "privacy" / f"dpae_{name}" / "results.json", privacy_main, args, "privacy_training")


def row(optimizer: str, noise: float | None, dpae: dict, run_dir: Path, privacy: dict | None) -> dict:
    # One record per epoch (a run killed between logging an epoch and saving it logs that epoch twice).
    epochs = list({r["epoch"]: r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("phase") == "epoch"}.values())
    p = dpae["privacy"]
    out = {"point": run_name(optimizer, noise), "optimizer": LABELS[optimizer], "noise_multiplier": noise,
           "epsilon": p["epsilon"], "delta": p["delta"], "steps": p["steps"], "epochs_trained": len(epochs),
           "selected_epoch": dpae["selection"]["epoch"], "train_time_s": sum(r.get("epoch_time_s", 0.0) for r in epochs),
           "frames": dpae["test"]}
    if privacy is not None:
        lk = privacy.get("leakage") or {}
        faces = lk.get("faces") or {}
        astro = lk.get("astronaut") or {}
        out.update(cmap=privacy["test"]["cmap"], images=lk.get("similarity"),
                   faces_before=(faces.get("before") or {}).get("faces"), faces_after=(faces.get("after") or {}).get("faces"),
                   astronaut_faces_before=astro.get("faces_before"), astronaut_faces_after=astro.get("faces_after"))
    return out


def _f(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(rows: list[dict]) -> str:
    head = ("| optimizer | noise multiplier | epsilon (delta 1e-5) | frames SSIM | frames PSNR (dB) | frames MSE | "
            "images SSIM | images PSNR (dB) | images MSE | faces found (images) | faces found (astronaut) | "
            "privacy cMAP (%) | epochs (selected) | train time (s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        im = r.get("images") or {}
        eps = "inf (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        lines.append(
            f"| {r['optimizer']} | {_f(r['noise_multiplier'], 'g') if r['noise_multiplier'] is not None else '-'} | {eps} | "
            f"{r['frames']['ssim']:.3f} | {r['frames']['psnr']:.2f} | {r['frames']['mse']:.4f} | "
            f"{_f(im.get('ssim'), '.3f')} | {_f(im.get('psnr_db'), '.2f')} | {_f(im.get('mse'), '.4f')} | "
            f"{_f(r.get('faces_after'), 'd')} of {_f(r.get('faces_before'), 'd')} | "
            f"{_f(r.get('astronaut_faces_after'), 'd')} of {_f(r.get('astronaut_faces_before'), 'd')} | "
            f"{_f(None if r.get('cmap') is None else 100 * r['cmap'], '.2f')} | {r['epochs_trained']} ({r['selected_epoch']}) | "
            f"{r['train_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.dpae_privacy_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.5, 1.0])
    parser.add_argument("--config-dir", default=str(PROJECT_ROOT / "configs" / "synthetic"))
    parser.add_argument("--no-privacy-stage", action="store_true", help="only the DP-AE runs (no cMAP, no faces)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra overrides for every DP-AE run")
    args = parser.parse_args(argv)
    config_dir = Path(args.config_dir)
    rows = []
    for optimizer, noise in points(args.optimizers, args.noise):
        dpae, run_dir = train_point(config_dir, optimizer, noise, list(args.overrides))
        privacy = None if args.no_privacy_stage else privacy_point(config_dir, optimizer, noise, run_dir.parent.parent)
        rows.append(row(optimizer, noise, dpae, run_dir, privacy))
    cfg = load_config(DPAEStageConfig, config_dir / "dpae" / "base.yaml", check_paths=False)
    out = Path(cfg.paths.results) / "dpae"
    table = markdown(rows)
    atomic_write_text(out / "privacy_table.md", table)
    atomic_write_json(out / "privacy_table.json", {"rows": rows})
    print(table, end="")
    print(f"written: {out / 'privacy_table.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
