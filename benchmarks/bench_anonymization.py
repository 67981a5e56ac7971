"""Benchmark of one minimax iteration (Step 1 + Step 2) of stage 1, against a plain reference loop.

    python -m benchmarks.bench_anonymization [--sizes synthetic,paper] [--steps 5] [--paper-batch 1]

Two implementations of the same iteration (TeD-SPAD: CE + 0.1 * triplet, NT-Xent budget):

* ``stage``: the stage's own steps, ``anonymizer_step`` then ``adversary_step`` of
  anonymization_training.steps (what MinimaxTask.train_step calls), with the one loop's Stepper
  (aux_code.fit) under ``--amp``'s precision (anchor/positive/negative concatenated into one fA
  and one fT pass; frozen models skip their parameter gradients; Step 2 runs fA without a graph;
  losses vectorised);
* ``reference``: the loop written the obvious way: three separate fA and fT passes per batch,
  Step 1 back-propagates into every model and then discards their gradients, Step 2 keeps fA's
  graph and detaches, triplet and NT-Xent computed row by row in Python.

Sizes: ``synthetic`` = the embedded default (UNet width 8, i3d_r50_tiny, resnet_tiny; 8 clips of
8x32x32, 32 images of 32x32); ``paper`` = UNet (17.27 M), I3D-R50, ResNet-50 budget at
16x224x224 (batch ``--paper-batch`` clips and twice as many images; batch 8 on a GPU, a
reduced batch on CPU, stated in the output). Each (size, implementation) runs in its own
process so the peak memory is its own: peak RSS on CPU (and the RSS after importing torch,
before building anything, to subtract), torch.cuda.max_memory_allocated on
CUDA. Times are medians over ``--steps`` iterations after ``--warmup``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent

SIZES = {
    "synthetic": {"anonymizer": "unet", "anonymizer_width": 8, "utility": "i3d_r50_tiny", "budget": "resnet_tiny", "frames": 8, "res": 32,
                  "batch": 8, "images": 32, "classes": 10, "emb": (64, 32)},
    "paper": {"anonymizer": "unet", "anonymizer_width": 64, "utility": "i3d_r50", "budget": "resnet50", "frames": 16, "res": 224,
              "batch": 8, "images": 16, "classes": 101, "emb": (512, 128)},
}


def build(size: dict, device: torch.device):
    from anonymization_training.steps import MinimaxModels
    from aux_code.models import build_anonymizer, build_budget, build_embedding_head, build_utility

    torch.manual_seed(0)
    utility = build_utility(name=size["utility"], num_classes=size["classes"])
    models = MinimaxModels(
        anonymizer=build_anonymizer(name=size["anonymizer"], width=size["anonymizer_width"]),
        utility=utility,
        embedding=build_embedding_head(in_dim=utility.feature_dim, hidden_dim=size["emb"][0], out_dim=size["emb"][1]),
        budget=build_budget(name=size["budget"]),
    )
    for m in models.as_dict().values():
        m.to(device)
    return models


def batches(size: dict, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    b, t, r, n = size["batch"], size["frames"], size["res"], size["images"]
    clip = lambda: torch.rand(b, 3, t, r, r, generator=g).to(device)  # noqa: E731
    action = {"clip": clip(), "positive": clip(), "negative": clip(),
              "label": torch.randint(0, size["classes"], (b,), generator=g).to(device)}
    images = {"view1": torch.rand(n, 3, r, r, generator=g).to(device), "view2": torch.rand(n, 3, r, r, generator=g).to(device)}
    return action, images


# --------------------------------------------------------------------------- the reference loop


def _ref_triplet(a, p, n, margin):
    rows = [torch.clamp(torch.dist(a[i], p[i]) - torch.dist(a[i], n[i]) + margin, min=0.0) for i in range(a.shape[0])]
    return torch.stack(rows).mean()


def _ref_nt_xent(z1, z2, t):
    z = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)])
    n2 = z.shape[0]
    losses = []
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        sims = torch.stack([z[i] @ z[j] / t for j in range(n2) if j != i])
        target = pos if pos < i else pos - 1
        losses.append(-(sims[target] - torch.logsumexp(sims, dim=0)))
    return torch.stack(losses).sum() / n2


def _ref_anon(fa, clip):
    from einops import rearrange

    b = clip.shape[0]
    frames = rearrange(clip, "b c t h w -> (b t) c h w")
    return rearrange(fa(frames), "(b t) c h w -> b c t h w", b=b)


def _ref_lt(models, a, p, n, labels):
    logits, fa_ = models.utility(a)
    _, fp = models.utility(p)
    _, fn = models.utility(n)
    ce = F.cross_entropy(logits, labels)
    return ce + 0.1 * _ref_triplet(models.embedding(fa_), models.embedding(fp), models.embedding(fn), 1.0)


def reference_iteration(models, opts, action, images, action2, images2):
    opt_a, opt_t, opt_b = opts
    # Step 1: fT, fB in eval; gradients flow everywhere and are thrown away afterwards.
    models.anonymizer.train()
    models.utility.eval(); models.embedding.eval(); models.budget.eval()  # noqa: E702
    a, p, n = (_ref_anon(models.anonymizer, action[k]) for k in ("clip", "positive", "negative"))
    l_t = _ref_lt(models, a, p, n, action["label"])
    l_b = _ref_nt_xent(models.budget(models.anonymizer(images["view1"])), models.budget(models.anonymizer(images["view2"])), 0.1)
    for o in opts:
        o.zero_grad()
    (0.7 * l_t - 1.0 * l_b).backward()
    opt_a.step()
    for o in opts:
        o.zero_grad()
    # Step 2: fA's outputs computed with a graph, then detached.
    models.anonymizer.eval()
    models.utility.train(); models.embedding.train(); models.budget.train()  # noqa: E702
    a, p, n = (_ref_anon(models.anonymizer, action2[k]).detach() for k in ("clip", "positive", "negative"))
    v1, v2 = models.anonymizer(images2["view1"]).detach(), models.anonymizer(images2["view2"]).detach()
    l_t = _ref_lt(models, a, p, n, action2["label"])
    l_t.backward()
    opt_t.step()
    l_b = _ref_nt_xent(models.budget(v1), models.budget(v2), 0.1)
    l_b.backward()
    opt_b.step()
    for o in opts:
        o.zero_grad()


def stage_iteration(models, opts, action, images, action2, images2, stepper, *, micro_batch=None):
    from anonymization_training.steps import LossWeights, adversary_step, anonymizer_step

    w = LossWeights(method="tedspad", omega=0.1, margin=1.0, temperature=0.1, w_t=0.7, w_b=1.0)
    stepper.step += 1
    anonymizer_step(models, opts[0], action, images, weights=w, stepper=stepper, micro_batch=micro_batch)
    adversary_step(models, opts[1], opts[2], action2, images2, weights=w, stepper=stepper, micro_batch=micro_batch)


# --------------------------------------------------------------------------- worker / driver


def worker(size_name: str, impl: str, steps: int, warmup: int, batch: int | None, amp: str, res: int | None = None,
           micro_batch: int | None = None, recompute: list[str] = ()) -> dict:
    from aux_code.fit import Stepper
    from aux_code.precision import Precision

    base_rss = _rss_mib()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = dict(SIZES[size_name])
    if batch is not None:
        size["batch"], size["images"] = batch, 2 * batch
    if res is not None:
        size["res"] = res
    models = build(size, device)
    if recompute:
        from anonymization_training.train import recompute_models

        recompute_models(models, list(recompute))
    lr = 1e-5
    opts = (torch.optim.Adam(models.anonymizer.parameters(), lr=lr),
            torch.optim.Adam([*models.utility.parameters(), *models.embedding.parameters()], lr=lr),
            torch.optim.Adam(models.budget.parameters(), lr=lr))
    precision = Precision("fp32" if amp == "off" else amp, device)
    stepper = Stepper(precision, stage="bench")
    action, images = batches(size, device, 1)
    action2, images2 = batches(size, device, 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if impl == "stage":
            stage_iteration(models, opts, action, images, action2, images2, stepper, micro_batch=micro_batch)
        else:
            reference_iteration(models, opts, action, images, action2, images2)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"size": size_name, "impl": impl, "device": str(device), "precision": precision.name if impl == "stage" else "fp32",
            "clips": size["batch"], "images": size["images"], "frames": size["frames"], "res": size["res"],
            "step_s_median": statistics.median(times), "step_s_all": times,
            "micro_batch": micro_batch, "recompute": list(recompute),
            "peak_mib": peak, "rss_after_import_mib": base_rss, "peak_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS"}


def worker_command(size: str, impl: str, *, amp: str, steps: int, warmup: int, batch: int | None = None,
                   res: int | None = None, micro_batch: int | None = None, recompute: Sequence[str] = ()) -> list[str]:
    """The command line of one worker process (its own peak memory): ``size`` / ``impl`` as in SIZES
    and the implementations; batch / res None keep the size's own; micro_batch / recompute are the
    stage's optim.micro_batch / optim.recompute."""
    cmd = [sys.executable, "-m", "benchmarks.bench_anonymization", "--worker", size, impl, "--amp", amp,
           "--steps", str(steps), "--warmup", str(warmup)]
    cmd += ["--batch", str(batch)] if batch is not None else []
    cmd += ["--res", str(res)] if res is not None else []
    cmd += ["--micro-batch", str(micro_batch)] if micro_batch else []
    return cmd + (["--recompute", ",".join(recompute)] if recompute else [])


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="synthetic,paper")
    parser.add_argument("--impls", default="stage,reference")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--paper-steps", type=int, default=1, help="timed steps at paper size (CPU: about a minute each)")
    parser.add_argument("--paper-batch", type=int, default=None, help="clips per step at paper size (default: 8 on CUDA, 1 on CPU)")
    parser.add_argument("--paper-res", type=int, default=224, help="input side at paper size (224; lower it only to fit a CPU's time)")
    parser.add_argument("--amp", default="auto", help="stage precision (aux_code.precision: auto | fp32 | bf16 | fp16; 'off' = fp32); auto is fp32 on CPU")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--res", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, default=None, help="stage: optim.micro_batch (clips per pass)")
    parser.add_argument("--recompute", default="", help="stage: optim.recompute, comma-separated (anonymizer,utility,budget)")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory of one paper-size stage iteration per memory setting, at --memory-res sides and "
                             "--paper-batch clips (default 8, the paper's), fitted to a line in side^2 and extrapolated to 224")
    parser.add_argument("--memory-res", default="32,48", help="--memory: input sides measured")
    args = parser.parse_args(argv)
    recompute = [r for r in args.recompute.split(",") if r]
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps, args.warmup, args.batch, args.amp, args.res,
                                args.micro_batch, recompute)))
        return 0
    if args.memory:
        return memory_table(args)
    cuda = torch.cuda.is_available()
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}")
    rows = []
    for size in args.sizes.split(","):
        for impl in args.impls.split(","):
            if size == "paper":
                cmd = worker_command(size, impl, amp=args.amp, steps=args.paper_steps, warmup=1 if cuda else 0,
                                     batch=args.paper_batch or (8 if cuda else 1), res=args.paper_res)
            else:
                cmd = worker_command(size, impl, amp=args.amp, steps=args.steps, warmup=args.warmup)
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{size}/{impl} failed:\n{out.stderr[-2000:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['size']:9s} {row['impl']:9s} {row['device']:5s} {row['precision']:4s} clips {row['clips']} x "
                  f"{row['frames']}x{row['res']}x{row['res']}, images {row['images']}: "
                  f"{row['step_s_median'] * 1000:9.1f} ms / iteration (Step 1 + Step 2), peak {row['peak_mib']:8.0f} MiB "
                  f"({row['peak_kind']}; {row['rss_after_import_mib']:.0f} MiB after import)", flush=True)
    for size in args.sizes.split(","):
        got = {r["impl"]: r for r in rows if r["size"] == size}
        if {"stage", "reference"} <= got.keys():
            print(f"{size}: stage is {got['reference']['step_s_median'] / got['stage']['step_s_median']:.2f}x the reference's speed")
    return 0


MEMORY_SETTINGS = [  # (optim.micro_batch, optim.recompute)
    (None, []), (None, ["anonymizer"]), (None, ["anonymizer", "utility", "budget"]), (1, []), (1, ["anonymizer", "utility", "budget"]),
]


def _memory_worker(args, batch: int, side: int, micro: int | None, recompute: list[str]) -> dict | None:
    cmd = worker_command("paper", "stage", amp=args.amp, steps=1, warmup=0, batch=batch, res=side, micro_batch=micro,
                         recompute=recompute)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"micro_batch {micro} recompute {recompute} at {side} px: failed\n{out.stderr[-1500:]}")
        return None
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def memory_table(args) -> int:
    """Peak memory per (micro_batch, recompute) at paper model size and batch (8 clips, 16 images)
    but small frames, one process each. Activations grow with the pixels (side^2); weights, Adam's
    moments and the runtime do not: the paper setting (the first) is measured at both sides,
    which gives that fixed part, and each other setting at the first side gives its per-pixel
    cost; the 224 px figure is fixed + per_pixel * 224^2."""
    batch = args.paper_batch or 8
    s0, s1 = (int(r) for r in args.memory_res.split(","))
    first = [_memory_worker(args, batch, s, *MEMORY_SETTINGS[0]) for s in (s0, s1)]
    if None in first:
        return 1
    per_pixel = (first[1]["peak_mib"] - first[0]["peak_mib"]) / (s1 ** 2 - s0 ** 2)
    fixed = first[0]["peak_mib"] - per_pixel * s0 ** 2
    rows = [(MEMORY_SETTINGS[0], first[0], per_pixel)]
    for micro, recompute in MEMORY_SETTINGS[1:]:
        row = _memory_worker(args, batch, s0, micro, recompute)
        if row is not None:
            rows.append(((micro, recompute), row, (row["peak_mib"] - fixed) / s0 ** 2))
    print(f"\nfixed part (weights, gradients, Adam, runtime): {fixed:.0f} MiB, from the paper setting at {s0} and {s1} px "
          f"({first[0]['peak_mib']:.0f} and {first[1]['peak_mib']:.0f} MiB)")
    print(f"\n| optim.micro_batch | optim.recompute | peak MiB at {batch} clips x {s0} px | s per iteration | activations, MiB "
          "per 1000 pixels of side^2 | estimated peak at the paper's 8 clips x 224 px, GiB |")
    print("|---|---|---|---|---|---|")
    for (micro, recompute), row, pp in rows:
        print(f"| {micro or 'null'} | {recompute or '[]'} | {row['peak_mib']:.0f} | {row['step_s_median']:.0f} | {pp * 1000:.1f} | "
              f"{(fixed + pp * 224 ** 2) / 1024:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
