"""Benchmark: the DP autoencoder's training step with DP (Opacus per-example gradients) against without.

    python -m benchmarks.bench_dpae                                   # embedded default: tiny model, 32x32, batch 50
    python -m benchmarks.bench_dpae --preset paper --size 240 320 --batch 4 --steps 3

Both variants step the stage's own task (anonymization_training.dpae.DPAETask: its Poisson
or shuffled loader, ``train_step`` through the one loop's Stepper) on the same random frames
and the same initial weights, DP-Adam (noise 1.0, clip 1.0) against plain Adam. Reported:
seconds per step (median after ``--warmup`` steps), frames per second, and the DP / no-DP
ratio. With DP a step's batch is a Poisson draw of expected size ``--batch``, so frames per
second is the fairer comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from anonymization_training.dpae import DPAEConfig, DPAETask
from aux_code.fit import Stepper
from aux_code.precision import Precision


def time_variant(*, private: bool, preset: str, size: tuple[int, int], batch: int, steps: int, warmup: int,
                 seed: int = 0) -> dict:
    """Seconds per step and frames per second of ``steps`` timed training steps."""
    n = batch * (steps + warmup)
    frames = np.random.default_rng(seed).integers(0, 256, size=(n * 10 // 7 + 4, *size, 3), dtype=np.uint8)
    cfg = DPAEConfig(model="dpae" if preset == "paper" else "dpae_tiny", private=private, optimizer="adam", lr=1e-3,
                     noise_multiplier=1.0, batch_size=batch, epochs=1, seed=seed)
    torch.manual_seed(seed)
    task = DPAETask(cfg, frames)
    stepper = Stepper(Precision("fp32", torch.device("cpu")), stage="bench")
    seconds, counts = [], []
    for i, b in enumerate(task.batches(0)):
        if i >= steps + warmup:
            break
        x = b[0] if isinstance(b, (list, tuple)) else b
        t0 = time.perf_counter()
        task.train_step(b, stepper)
        if i >= warmup:
            seconds.append(time.perf_counter() - t0)
            counts.append(int(x.shape[0]))
    total = sum(seconds)
    return {"private": private, "steps": len(seconds), "step_s_median": statistics.median(seconds),
            "frames": sum(counts), "frames_per_s": sum(counts) / total if total > 0 else None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_dpae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--size", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=50, help="expected frames per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [time_variant(private=p, preset=args.preset, size=tuple(args.size), batch=args.batch, steps=args.steps,
                         warmup=args.warmup) for p in (False, True)]
    plain, dp = rows
    report = {"preset": args.preset, "size": args.size, "batch": args.batch, "threads": torch.get_num_threads(),
              "no_dp": plain, "dp": dp, "dp_over_no_dp_per_frame": plain["frames_per_s"] / dp["frames_per_s"]}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
