"""Benchmark: stage 4's MGFN training loop versus a plain reference loop, same data, CPU.

    python -m benchmarks.bench_anomaly                   # paper-size MGFN, 2048-d features
    python -m benchmarks.bench_anomaly --preset tiny --dim 64 --epochs 5

Builds a fake feature set (UCF-Crime-like clip counts) once, then runs each variant in
its own process, so that peak RSS (ru_maxrss) belongs to that variant alone:

- reference: the loop written the obvious way, as the public MGFN/RTFM code does it (its
  model computed as the public code computes it, :func:`plain_forward`: Conv1d layout): a
  Dataset whose __getitem__ reads the .npy, resamples it to 32 segments with a per-video
  Python loop in float64 and appends the magnitude, on every access; default-collate
  DataLoaders (shuffle=True) zipped together; evaluation re-reading each video from disk;
  per-frame ground truth built frame by frame.
- stage: the stage's own training code: its MGFNTask (features checked and resampled once
  at load time into one float32 tensor per class, batches gathered by index, fused Adam)
  stepped through ``task.batches(epoch)`` + ``task.train_step(batch, stepper)`` with the
  one loop's Stepper (aux_code.fit), validation by ``task.validate`` (cached float32
  features under inference_mode); only the timing loop is the benchmark's.
- stage_bf16: the same with ``precision: bf16`` (MGFN forward under bf16 autocast,
  loss in fp32); fast where the CPU has AVX512-BF16 / AMX.

Before those, one training step of each is alternated in this process (``--step-repeats``,
medians, with the load average): the model's own cost, independent of the machine's load.

Both use the same model parameters (aux_code.models.mgfn), loss, optimiser, initial weights,
validation split and test set. Reported: one-time setup, train epoch time (median over
epochs) and its data side (getting the batches ready), validation time, peak RSS and the
test frame AUC after the last epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _common(args: argparse.Namespace):
    import torch

    from aux_code.features import read_manifest

    torch.set_num_threads(args.threads)
    info = read_manifest(args.features)
    return torch, info


def _model(args: argparse.Namespace):
    import torch

    from anomaly_detection.train import build_optimizer
    from aux_code.models.mgfn import build_mgfn

    torch.manual_seed(0)  # same initial weights in every variant
    model = build_mgfn(preset=args.preset, feature_dim=args.dim)
    if args.child == "reference":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)  # the public code's
    else:
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=5e-4)  # the stage's (fused)
    return model, optimizer


# --------------------------------------------------------------------------- reference


def plain_forward(model, video):
    """MGFN's forward as the public code computes it: (N, C, T) layout, F.conv1d for every
    convolution, einsum attention, the Focus kernel as a grouped conv, on ``model``'s own
    parameters. The stage's model computes the same function token-major with matrix products
    (aux_code.models.mgfn; tests/test_mgfn.py checks the two agree)."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange

    from aux_code.models.mgfn import Glance, select_topk_segments

    def cln(norm, x):
        mean = x.mean(dim=1, keepdim=True)
        std = x.var(dim=1, unbiased=False, keepdim=True).sqrt()
        return (x - mean) / (std + norm.eps) * norm.g + norm.b

    def conv(c, x):
        return F.conv1d(x, c.weight, c.bias, padding=c.padding, groups=c.groups)

    def glance(g, x):
        q, k, v = conv(g.to_qkv, cln(g.norm, x)).chunk(3, dim=1)
        q, k, v = (rearrange(t, "n (h d) t -> n h t d", h=g.heads) for t in (q, k, v))
        attn = torch.einsum("nhid,nhjd->nhij", q * g.scale, k).softmax(dim=-1)
        return conv(g.to_out, rearrange(torch.einsum("nhij,nhjd->nhid", attn, v), "n h t d -> n (h d) t"))

    def focus(f, x):
        v = rearrange(conv(f.to_v, f.norm(x)), "n (d h) t -> (n d) h t", h=f.heads)
        return conv(f.to_out, rearrange(conv(f.rel_pos, v), "(n d) h t -> n (d h) t", n=x.shape[0]))

    def ff(block, x):
        norm, up, gelu, dropout, down = block.net
        return conv(down, dropout(gelu(conv(up, cln(norm, x)))))

    video = rearrange(video, "b t c -> b 1 t c") if video.ndim == 3 else video
    b = video.shape[0]
    x = rearrange(video, "b n t c -> (b n) c t")
    x = conv(model.to_tokens, x[:, : model.feature_dim]) + model.magnitude_ratio * conv(model.to_mag, x[:, model.feature_dim :])
    for i, stage in enumerate(model.stages):
        for shortcut, mixer, feed in stage.blocks:
            x = conv(shortcut, x) + x
            x = (glance(mixer, x) if isinstance(mixer, Glance) else focus(mixer, x)) + x
            x = ff(feed, x) + x
        if i < len(model.transitions):
            norm, project = model.transitions[i]
            x = conv(project, cln(norm, x))
    head = model.head_norm(rearrange(x, "bn c t -> bn t c"))
    scores = torch.sigmoid(rearrange(model.fc(head), "bn t 1 -> bn t"))
    return select_topk_segments(rearrange(head, "(b n) t c -> b n t c", b=b), rearrange(scores, "(b n) t -> b n t", b=b),
                                k=model.k, magnitude_dropout=model.magnitude_dropout, training=model.training)


def steps(args: argparse.Namespace) -> dict:
    """One training step (forward, loss, backward, Adam) on the same batch, the public code's
    formulation and the stage's model alternated in this process: same threads, same load."""
    import torch

    from anomaly_detection.train import build_optimizer
    from aux_code.losses.mgfn import mgfn_loss
    from aux_code.models.mgfn import MGFN, build_mgfn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"reference": build_mgfn(preset=args.preset, feature_dim=args.dim).train()}
    models["stage"] = build_mgfn(preset=args.preset, feature_dim=args.dim).train()
    models["stage"].load_state_dict(models["reference"].state_dict())
    forwards = {"reference": plain_forward, "stage": MGFN.forward}
    optims = {"reference": torch.optim.Adam(models["reference"].parameters(), lr=1e-3, weight_decay=5e-4),
              "stage": build_optimizer(models["stage"], lr=1e-3, weight_decay=5e-4)}
    torch.manual_seed(1)
    x = torch.rand(2 * args.batch, 32, args.dim + 1)
    labels = torch.cat([torch.zeros(args.batch), torch.ones(args.batch)])

    def step(variant: str) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        out = forwards[variant](models[variant], x)
        loss, _ = mgfn_loss(scores=out.scores, video_scores=out.video_scores, labels=labels, topk_features=out.topk_features)
        optims[variant].zero_grad()
        loss.backward()
        optims[variant].step()
        return time.perf_counter() - started, time.process_time() - cpu

    for variant in models:
        step(variant)  # warm-up
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step("stage")
    gflop = counter.get_total_flops() / 1e9
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in models}
    loads = [os.getloadavg()[0]]
    for _ in range(args.step_repeats):
        for variant in models:
            times[variant].append(step(variant))
        loads.append(os.getloadavg()[0])
    med = {v: statistics.median(w for w, _ in t) for v, t in times.items()}
    # CPU seconds (process time): what the step costs the core, less sensitive than wall time to other jobs
    med_cpu = {v: statistics.median(c for _, c in t) for v, t in times.items()}
    return {"threads": args.threads, "batch": f"{args.batch}+{args.batch}", "gflop_per_step": round(gflop, 1),
            "step_s": {v: round(t, 3) for v, t in med.items()}, "step_cpu_s": {v: round(t, 3) for v, t in med_cpu.items()},
            "gflops_per_cpu_s": {v: round(gflop / t, 1) for v, t in med_cpu.items()},
            "speedup": round(med["reference"] / med["stage"], 2), "cpu_speedup": round(med_cpu["reference"] / med_cpu["stage"], 2),
            "runs": {v: [[round(w, 3), round(c, 3)] for w, c in ts] for v, ts in times.items()},
            "load_average": [round(a, 2) for a in loads]}



def run_reference(args: argparse.Namespace) -> dict:
    """The obvious loop. Deliberately plain: this is the baseline, not code to reuse."""
    torch, info = _common(args)
    from sklearn.metrics import roc_auc_score

    from anomaly_detection.data import stratified_split
    from aux_code.losses.mgfn import mgfn_loss

    feature_dir = Path(args.features)
    train = [v for v in info.videos.values() if v.split == "train"]
    val_names = set(stratified_split([v.name for v in train], [v.label for v in train], args.val_fraction, 0))
    fit = [v for v in train if v.name not in val_names]
    val = sorted((v for v in train if v.name in val_names), key=lambda v: v.name)
    test = sorted((v for v in info.videos.values() if v.split == "test"), key=lambda v: v.name)

    def process_feat64(feat, length=32):
        new_feat = np.zeros((length, feat.shape[1]))  # float64, as np.zeros gives
        r = np.linspace(0, len(feat), length + 1, dtype=int)
        for i in range(length):
            if r[i] != r[i + 1]:
                new_feat[i, :] = np.mean(feat[r[i] : r[i + 1], :], 0)
            else:
                new_feat[i, :] = feat[r[i], :]
        return new_feat

    class Videos(torch.utils.data.Dataset):
        def __init__(self, entries):
            self.entries = sorted(entries, key=lambda v: v.name)

        def __len__(self):
            return len(self.entries)

        def __getitem__(self, i):
            v = self.entries[i]
            feats = np.array(np.load(feature_dir / v.file), dtype=np.float64)
            feats = process_feat64(feats, 32)
            mag = np.linalg.norm(feats, axis=1)[:, np.newaxis]
            feats = np.concatenate((feats, mag), axis=1)
            return torch.from_numpy(feats).float(), float(v.label)

    g = torch.Generator().manual_seed(0)
    nloader = torch.utils.data.DataLoader(Videos([v for v in fit if v.label == 0]), batch_size=args.batch, shuffle=True, drop_last=True, generator=g)
    aloader = torch.utils.data.DataLoader(Videos([v for v in fit if v.label == 1]), batch_size=args.batch, shuffle=True, drop_last=True, generator=g)
    model, optimizer = _model(args)

    def score(v):
        feats = torch.from_numpy(np.array(np.load(feature_dir / v.file), dtype=np.float64)).float()
        mag = torch.norm(feats, dim=1, keepdim=True)
        x = torch.cat((feats, mag), dim=1).unsqueeze(0)
        out = plain_forward(model, x)
        return out.scores[0].numpy(), float(out.video_scores[0])

    train_times, eval_times, data_times = [], [], []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        batches = iter(zip(nloader, aloader))
        data_time = 0.0
        while True:
            t_data = time.perf_counter()
            try:
                (ninput, nlabel), (ainput, alabel) = next(batches)
            except StopIteration:
                break
            data_time += time.perf_counter() - t_data
            x = torch.cat((ninput, ainput), 0)
            labels = torch.cat((nlabel, alabel), 0).float()
            out = plain_forward(model, x)
            loss, _ = mgfn_loss(scores=out.scores, video_scores=out.video_scores, labels=labels, topk_features=out.topk_features)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_times.append(time.perf_counter() - t0)
        data_times.append(data_time)
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            video_scores = [score(v)[1] for v in val]
        roc_auc_score([v.label for v in val], video_scores)
        eval_times.append(time.perf_counter() - t0)

    model.eval()
    preds, gts = [], []
    with torch.no_grad():
        for v in test:
            clip_scores, _ = score(v)
            preds.extend(np.repeat(clip_scores, info.clip_len * info.skip).tolist())
            n = v.num_clips * info.clip_len * info.skip
            gts.extend(1 if any(s <= f < e for s, e in v.intervals) else 0 for f in range(n))
    return {"setup_s": 0.0, "train_s": train_times, "data_s": data_times, "eval_s": eval_times, "test_auc": float(roc_auc_score(gts, preds))}


# --------------------------------------------------------------------------- stage


def run_stage(args: argparse.Namespace) -> dict:
    """The stage's own code: its MGFNTask (built from an AnomalyConfig), its Stepper, timed epoch by epoch."""
    torch, info = _common(args)
    from types import SimpleNamespace

    from anomaly_detection.config import AnomalyConfig, headline_metric
    from anomaly_detection.data import load_anomaly_data
    from anomaly_detection.evaluate import frame_arrays, score_videos
    from anomaly_detection.train import MGFNTask
    from aux_code.config import load_config
    from aux_code.fit import Stepper
    from aux_code.metrics import frame_auc
    from aux_code.precision import Precision
    from aux_code.runtime import DistInfo

    precision_mode = "bf16" if args.child == "stage_bf16" else "fp32"
    # The stage's defaults (Adam lr 1e-3, weight decay 5e-4, seed 0, the paper's loss) plus the benchmark's sizes.
    cfg = load_config(AnomalyConfig, None, [
        f"model.preset={args.preset}", f"model.feature_dim={args.dim}", f"optim.batch_per_class={args.batch}",
        f"precision={precision_mode}",
    ], check_paths=False)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    data = load_anomaly_data(args.features, feature_dim=args.dim, num_segments=cfg.data.num_segments,
                             validation_fraction=args.val_fraction, seed=0, cache_eval=cfg.data.cache_eval)
    setup = time.perf_counter() - t0
    precision = Precision(precision_mode, device)
    # The task needs only the distributed layout of a run context while it trains and validates.
    ctx = SimpleNamespace(dist=DistInfo.single(device))
    task = MGFNTask(cfg, data, headline_metric(cfg.eval.metric, data.info.dataset), ctx, precision)
    reference_init, _ = _model(args)
    task.model.load_state_dict(reference_init.state_dict())  # same initial weights in every variant
    stepper = Stepper(precision, stage="bench")
    train_times, eval_times, data_times = [], [], []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for i, batch in enumerate(task.batches(epoch)):
            stepper.step = i + 1
            task.train_step(batch, stepper)
        train_times.append(time.perf_counter() - t0)
        # The data side of an epoch alone (plan the epoch, gather every batch), timed apart.
        t0 = time.perf_counter()
        for ni, ai in task.batches(epoch):
            torch.cat([data.train.normal[torch.from_numpy(ni)], data.train.abnormal[torch.from_numpy(ai)]])
        data_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        task.validate(epoch + 1)
        eval_times.append(time.perf_counter() - t0)
    scores = score_videos(task.model, data, data.test, device=device, precision=precision)
    auc = frame_auc(*frame_arrays(data.test, scores.clip, data.clip_span))
    return {"setup_s": setup, "train_s": train_times, "data_s": data_times, "eval_s": eval_times, "test_auc": auc}


# --------------------------------------------------------------------------- driver


def child(args: argparse.Namespace) -> None:
    result = (run_reference if args.child == "reference" else run_stage)(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print("BENCH " + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_anomaly"), help="where the fake feature set is written")
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"], help="MGFN size")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension")
    p.add_argument("--train", type=int, default=56, help="training videos per class (validation is taken from these)")
    p.add_argument("--test", type=int, default=16, help="test videos per class")
    p.add_argument("--clips", type=int, nargs=2, default=(60, 300), help="clip count range per video")
    p.add_argument("--val-fraction", type=float, default=0.15, help="validation fraction per class")
    p.add_argument("--batch", type=int, default=16, help="videos per class per step")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads in each variant")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each variant; the fastest is reported")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--variants", default="reference,stage,stage_bf16",
                   help="comma list of reference, stage, stage_bf16 (stage_bf16 is slow without native bf16: AVX2-only CPUs)")
    p.add_argument("--steps-only", action="store_true",
                   help="only the in-process comparison of one training step, reference and stage alternated")
    p.add_argument("--step-repeats", type=int, default=5, help="alternated training steps per variant (in-process comparison)")
    p.add_argument("--child", choices=["reference", "stage", "stage_bf16"], help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return

    step_figures = steps(args)
    print(f"one training step, {args.preset} MGFN, batch {step_figures['batch']}, {args.threads} threads, median of "
          f"{args.step_repeats} alternated, {step_figures['gflop_per_step']} GFLOP: reference {step_figures['step_s']['reference']} s "
          f"({step_figures['step_cpu_s']['reference']} CPU s, {step_figures['gflops_per_cpu_s']['reference']} GFLOP per CPU s), "
          f"stage {step_figures['step_s']['stage']} s ({step_figures['step_cpu_s']['stage']} CPU s, "
          f"{step_figures['gflops_per_cpu_s']['stage']}): {step_figures['speedup']}x wall, {step_figures['cpu_speedup']}x CPU; "
          f"load {step_figures['load_average']}", flush=True)
    if args.steps_only:
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "steps": step_figures}, indent=1, default=str) + "\n")
        return

    from anomaly_detection.fake_features import make_fake_feature_set

    features = Path(args.out) / f"features_d{args.dim}_n{args.train}_{args.test}_c{args.clips[0]}-{args.clips[1]}"
    if not (features / "manifest.json").is_file():
        make_fake_feature_set(
            features, feature_dim=args.dim, train=(args.train, args.train), test=(args.test, args.test),
            clips=tuple(args.clips), shift=0.5, seed=0,
        )
    shared = [
        "--preset", args.preset, "--dim", str(args.dim), "--val-fraction", str(args.val_fraction), "--batch", str(args.batch),
        "--epochs", str(args.epochs), "--threads", str(args.threads), "--features", str(features),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    runs: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    if "reference" not in runs:
        raise SystemExit("bench_anomaly: --variants must include reference (the speed-ups are against it)")
    # Interleaved repeats, best one kept per variant: on a shared machine the minimum is the
    # figure least disturbed by other processes.
    for _ in range(args.repeats):
        for variant in runs:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_anomaly", "--child", variant, *shared],
                cwd=ROOT, env=env, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise SystemExit(f"bench_anomaly: the {variant} variant failed:\n{proc.stderr[-4000:]}")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH "))
            f = json.loads(line[len("BENCH "):])
            f.update(
                train_epoch_s=statistics.median(f["train_s"]),
                data_epoch_s=statistics.median(f["data_s"]),
                val_s=statistics.median(f["eval_s"]),
            )
            f["epoch_s"] = f["train_epoch_s"] + f["val_s"]
            runs[variant].append(f)
    figures = {variant: min(results, key=lambda f: f["epoch_s"]) for variant, results in runs.items()}

    rows = [
        f"| {variant} | {f['setup_s']:.2f} | {f['train_epoch_s']:.2f} | {f['data_epoch_s']:.3f} | {f['val_s']:.2f} | "
        f"{f['epoch_s']:.2f} | {f['peak_rss_mb']:.0f} | {100 * f['test_auc']:.2f} |"
        for variant, f in figures.items()
    ]
    ref = figures["reference"]
    speed = {
        variant: {
            "train_epoch": ref["train_epoch_s"] / f["train_epoch_s"],
            "epoch_with_val": ref["epoch_s"] / f["epoch_s"],
            "data_per_epoch": ref["data_epoch_s"] / max(f["data_epoch_s"], 1e-9),
        }
        for variant, f in figures.items() if variant != "reference"
    }
    print(f"MGFN preset {args.preset}, D={args.dim}, {args.train}+{args.train} train videos (val {args.val_fraction:.0%} of each), "
          f"{args.test}+{args.test} test, {args.clips[0]}-{args.clips[1]} clips/video, batch {args.batch}+{args.batch}, "
          f"{args.epochs} epochs, {args.threads} threads, best of {args.repeats} runs")
    print("| variant | setup s | train epoch s (median) | of which data s | validation s | epoch + val s | peak RSS MB | test frame AUC % |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for variant, sp in speed.items():
        print(f"speed-up (reference / {variant}): train epoch {sp['train_epoch']:.2f}x, epoch + validation "
              f"{sp['epoch_with_val']:.2f}x, data side of an epoch {sp['data_per_epoch']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "figures": figures, "all_runs": runs, "speedup": speed,
                                               "steps": step_figures}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
