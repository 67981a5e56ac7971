"""Benchmark: LUSS-AE's training step, its test scoring throughput, and scoring memory against video length.

    python -m benchmarks.bench_luss                                          # embedded default: tiny, 8 x 48 x 64
    python -m benchmarks.bench_luss --preset paper --clip-len 16 --size 256 256 --batch 2 --steps 2 --frames 40

The step is the stage's own (anomaly_detection.luss.train: LussTask.train_step on batches of its
Windows sampler, through the one loop's Stepper), on random grey frames; scoring is
aux_code.luss_scoring.score_video on a random video streamed from a generator. Memory: the peak
resident set of a fresh process that scores ``--frames`` frames and of one that scores four
times as many (streamed scoring keeps it flat: only the per-frame scores grow with length).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch


def _video(n: int, size: tuple[int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.random(size, dtype=np.float32) * 2 - 1


def time_steps(*, preset: str, clip_len: int, size: tuple[int, int], batch: int, steps: int, warmup: int) -> dict:
    from anomaly_detection.luss.train import LussTask, Windows
    from aux_code.fit import Stepper
    from aux_code.losses.luss import LossWeights
    from aux_code.models.luss_ae import build_luss_ae
    from aux_code.precision import Precision

    torch.manual_seed(0)
    n = max(6 * clip_len, 2 * clip_len + 8)
    frames = np.random.default_rng(0).integers(0, 256, (n, *size), dtype=np.uint8)
    starts = [(0, s) for s in np.random.default_rng(1).integers(0, n - clip_len, batch * (steps + warmup))]
    model = build_luss_ae(preset=preset, clip_len=clip_len)
    task = SimpleNamespace(model=model, precision=Precision("fp32", torch.device("cpu")),
                           weights=LossWeights(0.6, 0.4, 1.0), optimizer=torch.optim.Adam(model.parameters(), lr=1e-4))
    task._terms = lambda b: LussTask._terms(task, b)
    stepper = Stepper(task.precision, stage="bench")
    seconds = []
    for i, b in enumerate(Windows([frames], ["bench"], starts, clip_len, batch, [0], torch.device("cpu"))):
        t0 = time.perf_counter()
        LussTask.train_step(task, b, stepper)
        if i >= warmup:
            seconds.append(time.perf_counter() - t0)
    s = statistics.median(seconds)
    return {"parameters": sum(p.numel() for p in model.parameters()), "step_s": s, "clips_per_s": batch / s,
            "timed_steps": len(seconds)}


def time_scoring(*, preset: str, clip_len: int, size: tuple[int, int], frames: int, batch: int) -> dict:
    from aux_code.luss_scoring import score_video
    from aux_code.models.luss_ae import build_luss_ae

    torch.manual_seed(0)
    model = build_luss_ae(preset=preset, clip_len=clip_len)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = score_video(model, _video(frames, size), clip_len=clip_len, batch_size=batch)
        s = time.perf_counter() - t0
    assert len(out["prp"]) == frames
    return {"frames": frames, "seconds": s, "frames_per_s": frames / s}


def _score_rss(args: tuple) -> int:
    preset, clip_len, size, frames, batch = args
    torch.set_num_threads(1)
    time_scoring(preset=preset, clip_len=clip_len, size=size, frames=frames, batch=batch)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux -> MiB


def peak_rss(*, preset: str, clip_len: int, size: tuple[int, int], frames: int, batch: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for n in (frames, 4 * frames):
        with ctx.Pool(1) as pool:  # a fresh process each, so one's peak does not hide the other's
            out[n] = pool.apply(_score_rss, ((preset, clip_len, size, n, batch),))
    return {"peak_rss_mb": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_luss", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=[48, 64], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--frames", type=int, default=120, help="test video length for scoring (and x4 for memory)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    size = (a.size[0], a.size[1])
    result = {"preset": a.preset, "clip_len": a.clip_len, "size": list(size), "batch": a.batch, "threads": a.threads,
              "train": time_steps(preset=a.preset, clip_len=a.clip_len, size=size, batch=a.batch, steps=a.steps,
                                  warmup=a.warmup),
              "score": time_scoring(preset=a.preset, clip_len=a.clip_len, size=size, frames=a.frames, batch=a.batch)}
    result.update(peak_rss(preset=a.preset, clip_len=a.clip_len, size=size, frames=a.frames, batch=a.batch))
    print(json.dumps(result, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
