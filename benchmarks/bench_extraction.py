"""Benchmark: stage 3's extraction versus a reference loop written the obvious way, on CPU.

    python -m benchmarks.bench_extraction                    # every case below
    python -m benchmarks.bench_extraction --cases default    # only the embedded default
    python -m benchmarks.bench_extraction --repeats 2 --json bench.json

Each measurement runs in its own process, so its peak RSS (ru_maxrss) belongs to it alone;
variants are interleaved and the best of ``--repeats`` is kept (the machine is shared).

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
                 workers: int = 0, device: str = "cpu") -> int:
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
    fm = FeatureModel(IdentityAnonymizer(), model, device=target)
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
    parser.add_argument("--cases", default="default,full,length", help="comma list of default, full, length, ceiling")
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
