"""Benchmark: stage 3's extraction versus a reference loop written the obvious way, on CPU.

    python -m benchmarks.bench_extraction                    # every case below
    python -m benchmarks.bench_extraction --cases default    # only the embedded default
    python -m benchmarks.bench_extraction --repeats 2 --json bench.json

Each measurement of the default, full, ceiling and length cases runs in its own process, so its
peak RSS (ru_maxrss) belongs to it alone; variants are interleaved and the best of ``--repeats``
is kept (the machine is shared). The fullsize case alternates both variants in one process and
reports medians with the load average, so its ratio holds under other jobs' load.

- reference: the public code's way: decode the whole video into memory (a list of frames,
  then one array), then one clip at a time through the model under no_grad (batch 1,
  contiguous layout), features saved as float64 .npy.
- stage: feature_extraction itself: clips streamed by PyAV in a background thread while the
  model runs, batched across videos, inference_mode, channels-last, float32 .npy, manifest.

Cases:
- default: the embedded default, ``python -m feature_extraction`` on the synthetic UCF-Crime
  analogue (``--data``; clip layout and input size from configs/synthetic/extraction/default.yaml,
  i3d_r50_tiny), the stage's whole run (manifest, lists, results) against the reference over
  the same videos and clips;
- fullsize: one 320x240 H.264 video (``--full-frames``) through the full-size I3D-R50, the
  reference loop and the stage alternated ``--repeats`` times in one process, plus fT alone on
  one clip each way; the stage's model path follows ``--compile`` as extract.compile does (auto:
  inductor on the CPU), compiled once before the timed repeats (``first_call_s`` is that compile
  plus one forward; ``break_even_clips`` the clips after which it has paid for itself). Reports
  the model's GFLOP per clip, the achieved GFLOP/s, the stated and the sgemm-measured peak;
- full: one short 320x240 H.264 video (``--full-frames`` 320: 10 clips) at 16x224x224
  through the full-size I3D-R50 (random weights: speed does not depend on them), the stage
  batching ``--batch`` clips;
- ceiling: fT alone on ready-made batches already on the device (the ceiling), against the
  stage with PyAV and with DALI (GPU reader on H.264 when CUDA is present, else DALI's CPU
  reader on VP9), full-size I3D-R50, ``--ceiling-videos`` videos of 10 clips;
- length: peak RSS for a 320x240 video of 160, 1600 (10x) and 3200 frames, tiny I3D at 224 px
  input, stage batch ``--batch`` for both lengths, to show whether memory grows with video length.

Both variants use the same model weights, transform and clip indexing; the script checks that
their features agree (max abs difference) so the comparison is of equal work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UTILITY_CKPT = "anonymization/utility/best.pt"


# --------------------------------------------------------------------------------- helpers


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _utility(name: str):
    import torch

    from aux_code.models import build_utility

    torch.manual_seed(0)  # same weights in every process
    return build_utility(name=name, num_classes=10).eval()


def _scene_video(path: Path, num_frames: int, height: int = 240, width: int = 320, codec: str = "h264") -> None:
    from aux_code.video import write_video

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)

    def frames():
        for i in range(num_frames):
            r = 128 + 60 * np.sin((x + 3 * i) / 17.0)
            g = 128 + 60 * np.cos((y - 2 * i) / 13.0)
            b = 128 + 60 * np.sin((x + y + i) / 23.0)
            yield np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)

    write_video(path, frames(), codec=codec)


def reference_video(path: Path, model, out_path: Path, *, resolution: int, clip_len: int = 16, skip: int = 2,
                    crop_scale: float = 0.8) -> int:
    """The obvious loop for one video; returns its clip count."""
    import torch

    from aux_code.clips import extraction_starts
    from aux_code.transforms import ClipEval, to_float_clip
    from aux_code.video import iter_frames

    frames = np.stack(list(iter_frames(path)))  # the whole video in memory
    transform = ClipEval(resolution, scale=crop_scale)
    feats = []
    with torch.no_grad():
        for start in extraction_starts(len(frames), clip_len=clip_len, skip=skip):
            clip = transform(to_float_clip(frames[start : start + clip_len * skip : skip]))
            _, feature = model(clip[None])
            feats.append(feature[0].numpy().astype(np.float64))
    np.save(out_path, np.stack(feats))
    return len(feats)


def stage_videos(paths: list[Path], model, out_dir: Path, *, resolution: int, batch_size: int, decoder: str = "pyav",
                 workers: int = 0, device: str = "cpu", feature_model=None) -> int:
    """The stage's clip pipeline on some videos (no dataset around them); returns the clip count.

    ``decoder``: 'pyav' (``workers`` processes, or a background thread when 0) or 'dali' (the
    GPU reader on CUDA, else the CPU reader). A failed video is an error here, never skipped.
    """
    import torch

    from aux_code.datasets import AnomalyVideo
    from aux_code.models import IdentityAnonymizer
    from feature_extraction.pipeline import (
        BoxLookup, ClipSpec, FeatureModel, FeatureWriter, VideoJob, dali_events, extract_stream, pyav_events,
    )

    target = torch.device(device)
    unique = len(set(paths)) == len(paths)  # the same file listed n times: n distinct outputs
    jobs = [VideoJob(i, "test", AnomalyVideo(p, p.stem if unique else f"{p.stem}_{i}", 0, "Normal", ()), fingerprint="bench")
            for i, p in enumerate(paths)]
    spec = ClipSpec(16, 2, resolution, 0.8)
    boxes = BoxLookup(None, None)
    if decoder == "dali":
        def no_fallback(rest):
            raise RuntimeError(f"DALI failed; {len(rest)} videos left (the benchmark does not fall back)")

        events = dali_events(jobs, spec, boxes=boxes, anonymizer=None, device="gpu" if target.type == "cuda" else "cpu",
                             device_id=target.index if target.type == "cuda" else None, batch_size=batch_size,
                             threads=4, prefetch=2, target=target, fallback=no_fallback)
    else:
        events = pyav_events(jobs, spec, boxes=boxes, anonymizer=None, workers=workers, prefetch=4, thread=True)
    fm = feature_model or FeatureModel(IdentityAnonymizer(), model, device=target)
    writer = FeatureWriter(out_dir, jobs, producer="bench", rank=0)
    stats = extract_stream(events, fm, batch_size=batch_size, on_done=writer.done, on_failed=writer.failed)
    if writer.failures:
        raise RuntimeError(writer.failures)
    return stats.clips


def model_only(model, *, resolution: int, batch_size: int, clips: int, device: str) -> int:
    """The ceiling: the same FeatureModel on ready-made batches in the device's memory (no decoding)."""
    import torch

    from aux_code.models import IdentityAnonymizer
    from feature_extraction.pipeline import FeatureModel

    fm = FeatureModel(IdentityAnonymizer(), model, device=torch.device(device))
    x = torch.rand(batch_size, 3, 16, resolution, resolution, device=device)
    done = 0
    while done < clips:
        fm(x)  # returns numpy: synchronises with the device
        done += batch_size
    return done


# --------------------------------------------------------------------------------- full size, one process


def cpu_peak_gflops(threads: int, flop_per_cycle: int) -> dict:
    """The arithmetic ceiling two ways: cores x FMA width x clock (stated), and a 4096^2 sgemm (measured)."""
    import torch

    mhz = None
    try:
        mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    a, b = torch.rand(4096, 4096), torch.rand(4096, 4096)
    a @ b
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        a @ b
        runs.append(2 * 4096**3 / (time.perf_counter() - started) / 1e9)
    return {"clock_mhz": mhz, "flop_per_cycle_per_core": flop_per_cycle,
            "stated_gflops": round(threads * flop_per_cycle * mhz / 1000, 1) if mhz else None,
            "sgemm_gflops": round(float(np.median(runs)), 1)}


def cpu_flags() -> list[str]:
    """The CPU's SIMD flags that decide the fp32/bf16/int8 paths (avx2, fma, avx512*, amx*, vnni)."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in line.split(":")[1].split() if f.startswith(("avx", "fma", "amx")) or "vnni" in f)


def fullsize(args: argparse.Namespace, tmp: Path) -> dict:
    """Reference loop and stage on one full-size video, alternated in this process (same threads, same load).

    Also fT alone on one ready clip: the reference's eager batch-1 forward against the stage's
    FeatureModel, which is where the whole difference lies (decoding is a few percent).
    """
    import torch

    from aux_code.models import IdentityAnonymizer
    from feature_extraction.model import FeatureModel, clip_gflop, resolve_compile

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    model = _utility("i3d_r50")
    gflop = clip_gflop(IdentityAnonymizer(), model, (3, 16, 224, 224), probe=224)  # counted at full size, not scaled
    compiled = resolve_compile(args.compile, cpu, gflop)
    fm = FeatureModel(IdentityAnonymizer(), model, device=cpu, compile=compiled)
    clip = torch.rand(1, 3, 16, 224, 224)
    started = time.perf_counter()
    fm(clip)  # the stage's first batch: compiles when compiled
    first_call = time.perf_counter() - started
    video = tmp / "fullsize.mp4"
    _scene_video(video, args.full_frames)
    # wall seconds per clip and CPU seconds per clip (process time, all threads) of each variant
    wall: dict[str, list[float]] = {"reference": [], "stage": [], "reference_model": [], "stage_model": []}
    cpu_s: dict[str, list[float]] = {k: [] for k in wall}
    loads = [os.getloadavg()[0]]
    clips = 0

    def timed(key: str, fn, n: int = 1):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall[key].append((time.perf_counter() - w) / n)
        cpu_s[key].append((time.process_time() - c) / n)
        return out

    for _ in range(args.repeats):
        with torch.no_grad():
            model(clip)  # warm, as the stage's model is
            timed("reference_model", lambda: model(clip))
        timed("stage_model", lambda: fm(clip))
        clips = reference_video(video, model, tmp / "fullsize_reference.npy", resolution=224)  # count (and warm the decoder)
        timed("reference", lambda: reference_video(video, model, tmp / "fullsize_reference.npy", resolution=224), clips)
        timed("stage", lambda: stage_videos([video], model, tmp / "fullsize_stage", resolution=224,
                                            batch_size=args.batch, feature_model=fm), clips)
        loads.append(os.getloadavg()[0])
    diff = float(np.abs(np.load(tmp / "fullsize_reference.npy") - np.load(tmp / "fullsize_stage" / "fullsize.npy")).max())
    med = {k: float(np.median(v)) for k, v in wall.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu_s.items()}
    peak = cpu_peak_gflops(args.threads, args.flop_per_cycle)
    saved = med["reference_model"] - med["stage_model"]
    return {
        "clips_per_video": clips, "repeats": args.repeats, "threads": args.threads, "path": fm.path,
        "gflop_per_clip": round(gflop, 2), "first_call_s": round(first_call, 1),
        "reference_clips_per_s": round(1 / med["reference"], 3), "stage_clips_per_s": round(1 / med["stage"], 3),
        "speedup": round(med["reference"] / med["stage"], 2),
        "cpu_speedup": round(med_cpu["reference"] / med_cpu["stage"], 2),
        "reference_model_s_per_clip": round(med["reference_model"], 3), "stage_model_s_per_clip": round(med["stage_model"], 3),
        "model_speedup": round(med["reference_model"] / med["stage_model"], 2),
        "model_cpu_speedup": round(med_cpu["reference_model"] / med_cpu["stage_model"], 2),
        # GFLOP/s per CPU second: what one core achieves, whatever else shares it
        "reference_gflops_per_cpu_s": round(gflop / med_cpu["reference_model"], 1),
        "stage_gflops_per_cpu_s": round(gflop / med_cpu["stage_model"], 1),
        "reference_gflops": round(gflop / med["reference_model"], 1), "stage_gflops": round(gflop / med["stage_model"], 1),
        # clips after which the compile (first call minus one steady call) has paid for itself
        "break_even_clips": round(max(first_call - med["stage_model"], 0) / saved) if compiled and saved > 0 else None,
        "peak": peak, "cpu_flags": cpu_flags(),
        "load_average": [round(x, 2) for x in loads], "max_abs_diff": diff,
        "wall_s_per_clip": {k: [round(x, 3) for x in v] for k, v in wall.items()},
        "cpu_s_per_clip": {k: [round(x, 3) for x in v] for k, v in cpu_s.items()},
    }


# --------------------------------------------------------------------------------- children


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.case == "default":
        from aux_code.config import load_config
        from feature_extraction.config import ExtractionConfig

        # Both variants read the clip layout of the embedded default's config.
        cfg = load_config(ExtractionConfig, ROOT / "configs/synthetic/extraction/default.yaml",
                          [f"paths.runs={args.runs}", f"paths.ucf_crime={args.data}", "run.resume=false",
                           f"run.name={out.name}"])
        if args.variant == "stage":
            from feature_extraction.pipeline import run

            setup_rss = _rss_mb()
            started, cpu_start = time.perf_counter(), _cpu_seconds()
            if run(cfg) != 0:
                raise RuntimeError("extraction failed")
            seconds = time.perf_counter() - started
            clips = json.loads((Path(args.runs) / "extraction" / out.name / "results.json").read_text())["clips"]
        else:
            from aux_code.datasets import get_anomaly_dataset
            from aux_code.models.stored import load_stored_model

            model, _ = load_stored_model(Path(args.runs) / UTILITY_CKPT, "utility")
            adapter = get_anomaly_dataset("ucf_crime", args.data)
            setup_rss = _rss_mb()
            started, cpu_start = time.perf_counter(), _cpu_seconds()
            clips = 0
            for split in ("train", "test"):
                for item in adapter.items(split):
                    clips += reference_video(item.path, model, out / f"{item.name}.npy", resolution=cfg.clip.resolution,
                                             clip_len=cfg.clip.clip_len, skip=cfg.clip.skip, crop_scale=cfg.clip.crop_scale)
            seconds = time.perf_counter() - started
    elif args.case == "ceiling":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = _utility(args.model)
        videos = [Path(v) for v in args.video.split(",")]
        if args.variant == "model":
            model_only(model, resolution=224, batch_size=args.batch, clips=args.batch, device=device)  # warm-up
        setup_rss = _rss_mb()
        started, cpu_start = time.perf_counter(), _cpu_seconds()
        if args.variant == "model":
            clips = model_only(model, resolution=224, batch_size=args.batch, clips=10 * len(videos), device=device)
        else:
            clips = stage_videos(videos, model, out, resolution=224, batch_size=args.batch, decoder=args.variant,
                                 workers=args.workers, device=device)
        seconds = time.perf_counter() - started
    else:
        model = _utility(args.model)
        setup_rss = _rss_mb()
        started, cpu_start = time.perf_counter(), _cpu_seconds()
        if args.variant == "stage":
            clips = stage_videos([Path(args.video)], model, out, resolution=224, batch_size=args.batch)
        else:
            clips = reference_video(Path(args.video), model, out / f"{Path(args.video).stem}.npy", resolution=224)
        seconds = time.perf_counter() - started
    # CPU seconds of the timed part, all threads: less sensitive than wall time to other jobs.
    return {"clips": clips, "seconds": round(seconds, 3), "clips_per_s": round(clips / seconds, 2),
            "cpu_seconds": round(_cpu_seconds() - cpu_start, 2),
            "setup_rss_mb": round(setup_rss, 1), "peak_rss_mb": round(_rss_mb(), 1)}


def spawn(args: argparse.Namespace, **kw) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_extraction", "--child", "--threads", str(args.threads)]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_diff(a_dir: Path, b_dir: Path) -> float:
    diffs = [float(np.abs(np.load(a).astype(np.float64) - np.load(b_dir / a.name)).max()) for a in sorted(a_dir.glob("*.npy"))]
    if not diffs:
        raise RuntimeError(f"no features in {a_dir}")
    return max(diffs)


def best(runs: list[dict]) -> dict:
    top = max(runs, key=lambda r: r["clips_per_s"])
    return dict(top, peak_rss_mb=min(r["peak_rss_mb"] for r in runs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="default,fullsize,length",
                        help="comma list of default, fullsize, full, length, ceiling")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="the stage's extract.compile in the 'fullsize' case")
    parser.add_argument("--flop-per-cycle", type=int, default=32,
                        help="fp32 FLOP per cycle per core for the stated peak (2 AVX2 FMA pipes: 2 x 8 x 2 = 32)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="clips per forward pass of the stage (single-video cases)")
    parser.add_argument("--full-frames", type=int, default=320, help="frames of the 'full' case's video (32 per clip)")
    parser.add_argument("--ceiling-videos", type=int, default=4, help="videos of 320 frames (10 clips) in the 'ceiling' case")
    parser.add_argument("--workers", type=int, default=0, help="PyAV decode processes in the 'ceiling' case (0 = a thread)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--data", default=str(ROOT / "data/synthetic/UCF_Crime"), help="UCF-Crime (analogue) root for 'default'")
    # child-only arguments
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("case", "variant", "out", "runs", "video", "model"):  # --batch and --workers are shared
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch

    from aux_code.checkpoint import save_checkpoint
    from aux_code.models.stored import pack_model

    cases = args.cases.split(",")
    results: dict = {"machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                                f"{args.threads} torch threads, no GPU", "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench_extraction_") as tmp:
        tmp = Path(tmp)
        runs = tmp / "runs"
        spec = {"name": "i3d_r50_tiny", "num_classes": 10}
        save_checkpoint({"models": {"utility": pack_model("utility", spec, _utility("i3d_r50_tiny"))}}, runs / UTILITY_CKPT)
        if "default" in cases:
            rows = {"reference": [], "stage": []}
            for _ in range(args.repeats):
                for variant in ("reference", "stage"):
                    rows[variant].append(spawn(args, case="default", variant=variant, out=tmp / f"default_{variant}",
                                               runs=runs, data=args.data))
            results["default"] = {v: best(rs) for v, rs in rows.items()}
            results["default"]["max_abs_diff"] = max_diff(runs / "extraction" / "default_stage", tmp / "default_reference")
        if "fullsize" in cases:
            results["fullsize"] = fullsize(args, tmp)
        videos = {}
        if "full" in cases:
            videos[args.full_frames] = tmp / "short.mp4"
            _scene_video(videos[args.full_frames], args.full_frames)
            rows = {"reference": [], "stage": []}
            for _ in range(args.repeats):
                for variant in ("reference", "stage"):
                    rows[variant].append(spawn(args, case="full", variant=variant, out=tmp / f"full_{variant}",
                                               video=videos[args.full_frames], model="i3d_r50", batch=args.batch))
            results["full"] = {v: best(rs) for v, rs in rows.items()}
            results["full"]["max_abs_diff"] = max_diff(tmp / "full_stage", tmp / "full_reference")
        if "length" in cases:
            for n in (160, 1600, 3200):
                if n not in videos:
                    videos[n] = tmp / f"len{n}.mp4"
                    _scene_video(videos[n], n)
            results["length"] = {}
            for n in (160, 1600, 3200):
                for variant in ("reference", "stage"):
                    results["length"][f"{variant}_{n}"] = spawn(args, case="length", variant=variant,
                                                                out=tmp / f"len{n}_{variant}", video=videos[n],
                                                                model="i3d_r50_tiny", batch=args.batch)
        if "ceiling" in cases:
            import importlib.util

            cuda = torch.cuda.is_available()
            # DALI's CPU reader decodes VP9, not H.264; on a GPU both decoders read the same H.264 files.
            codec, suffix = ("h264", "mp4") if cuda else ("vp9", "webm")
            path = tmp / f"ceiling.{suffix}"
            _scene_video(path, 320, codec=codec)
            videos_arg = ",".join([str(path)] * args.ceiling_videos)
            variants = ["model", "pyav"]
            if importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None:
                variants.append("dali")
            rows = {v: [] for v in variants}
            for _ in range(args.repeats):
                for variant in variants:
                    rows[variant].append(spawn(args, case="ceiling", variant=variant, out=tmp / f"ceiling_{variant}",
                                               video=videos_arg, model="i3d_r50", batch=args.batch, workers=args.workers))
            results["ceiling"] = {v: best(rs) for v, rs in rows.items()}
            results["ceiling"]["device"] = "cuda" if cuda else "cpu"
            results["ceiling"]["codec"] = codec
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    print("| case | variant | clips | clips/s | CPU s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for case in ("default", "full"):
        if case in results:
            for variant in ("reference", "stage"):
                r = results[case][variant]
                print(f"| {case} | {variant} | {r['clips']} | {r['clips_per_s']} | {r['cpu_seconds']} | {r['peak_rss_mb']} |")
            speed = results[case]["stage"]["clips_per_s"] / results[case]["reference"]["clips_per_s"]
            print(f"| {case} | speed-up | | {speed:.2f}x | | max abs feature diff {results[case]['max_abs_diff']:.2e} |")
    if "fullsize" in results:
        r = results["fullsize"]
        print(f"| fullsize ({r['threads']} threads, {r['path']}) | reference / stage clips/s | {r['clips_per_video']} | "
              f"{r['reference_clips_per_s']} / {r['stage_clips_per_s']} ({r['speedup']}x wall, {r['cpu_speedup']}x CPU) | "
              f"fT s/clip {r['reference_model_s_per_clip']} / {r['stage_model_s_per_clip']} ({r['model_speedup']}x wall, "
              f"{r['model_cpu_speedup']}x CPU), GFLOP per CPU s {r['reference_gflops_per_cpu_s']} / "
              f"{r['stage_gflops_per_cpu_s']} of {r['peak']['stated_gflops']} stated, "
              f"{r['peak']['sgemm_gflops']} sgemm | first call {r['first_call_s']} s, "
              f"max abs diff {r['max_abs_diff']:.1e}, load {r['load_average']} |")
    if "ceiling" in results:
        ceiling = results["ceiling"]["model"]["clips_per_s"]
        for variant in ("model", "pyav", "dali"):
            if variant in results["ceiling"]:
                r = results["ceiling"][variant]
                print(f"| ceiling ({results['ceiling']['device']}, {results['ceiling']['codec']}) | {variant} | {r['clips']} | "
                      f"{r['clips_per_s']} ({r['clips_per_s'] / ceiling:.0%} of model-only) | {r['cpu_seconds']} | {r['peak_rss_mb']} |")
    if "length" in results:
        for key, r in results["length"].items():
            print(f"| length | {key} frames | {r['clips']} | {r['clips_per_s']} | {r['cpu_seconds']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
