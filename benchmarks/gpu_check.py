"""One prepared check of every GPU path, for a person with one CUDA GPU (under 8 minutes).

    bash scripts/gpu_check.sh                 # installs the project with --no-deps, then runs this
    python -m benchmarks.gpu_check --out DIR  # from the repository root
    python -m benchmarks.gpu_check --dry-run  # what a machine without CUDA does anyway

Writes ``gpu_check.json`` and ``gpu_check.md`` (one table, a row per item) to ``--out``:

- env: python, torch, the GPU, bf16 support, and which of this project's other packages are
  present (the check needs only torch and numpy; every item that needs more names what).
- gpu_tests: ``pytest -m gpu tests/test_gpu.py`` (bf16 and fp16-with-scaler minimax iterations,
  CUDA extraction against the CPU, the compiled extraction graph on CUDA, the MGFN stage on CUDA).
- extraction: full-size I3D-R50 (16x224x224) clips/s through the stage's FeatureModel alone
  (the model-only ceiling, batch 32, precision auto) and through the stage's PyAV pipeline on
  H.264 videos (needs PyAV), as a fraction of the ceiling.
- minimax: one stage-1 iteration (Step 1 + Step 2) at paper size, 16x224x224, batch 8, bf16,
  with the shipped config's optim.micro_batch / optim.recompute: median step time and
  torch.cuda.max_memory_allocated (an out-of-memory is reported, not raised).
- mgfn: paper-size MGFN training step (16+16 videos x 32 segments x 2049) on CUDA, fp32 and
  bf16, and the epoch of the UCF-Crime training set (810 normal / 16 per step: 50 steps).
- dali: DALI's GPU reader on H.264 against PyAV (clip starts equal, mean pixel difference),
  when DALI and PyAV are installed.

Without CUDA (or with ``--dry-run``) every GPU item is skipped with its reason, the gpu tests
are only collected (their count is reported), and the exit status is 0. With CUDA the exit
status is 1 when an item failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# What the project's code imports beyond torch and numpy, by import name -> pip name.
PACKAGES = {"av": "av (PyAV)", "nvidia.dali": "nvidia-dali", "sklearn": "scikit-learn", "cv2": "opencv-python",
            "einops": "einops", "torchvision": "torchvision", "tensorboard": "tensorboard", "tqdm": "tqdm",
            "yaml": "PyYAML", "matplotlib": "matplotlib", "scipy": "scipy", "pytest": "pytest"}
# Each item's budget, so the whole check stays under 8 minutes.
TIMEOUTS = {"gpu_tests": 150, "extraction": 90, "minimax": 120, "mgfn": 60, "dali": 45}


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def packages() -> dict[str, bool]:
    return {pip: _present(module) for module, pip in PACKAGES.items()}


def missing(*modules: str) -> list[str]:
    return [PACKAGES.get(m, m) for m in modules if not _present(m)]


def _sync():
    import torch

    torch.cuda.synchronize()


# --------------------------------------------------------------------------------- items


def item_env(cuda: bool) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": cuda,
           "packages": packages(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                   cuda_runtime=torch.version.cuda, gpus=torch.cuda.device_count())
    return out


def item_gpu_tests(cuda: bool, out_dir: Path) -> dict:
    """``pytest -m gpu``: run on CUDA; without it only collected (each is skipped there with its reason)."""
    if lacking := missing("pytest"):
        return {"status": "skipped", "reason": f"needs {', '.join(lacking)}"}
    junit = out_dir / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py",
           f"--junitxml={junit}"]
    if not cuda:
        cmd.append("--collect-only")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUTS["gpu_tests"])
    tail = (done.stdout + done.stderr)[-1500:]
    if not cuda:
        collected = [line for line in done.stdout.splitlines() if "::" in line]
        if done.returncode != 0 or not collected:
            return {"status": "failed", "reason": f"collection failed (rc {done.returncode})", "output": tail}
        return {"status": "skipped", "reason": "no CUDA device: collected only", "collected": len(collected),
                "tests": collected}
    import xml.etree.ElementTree as ET

    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ok = done.returncode == 0 and counts["tests"] > 0
    return {"status": "ok" if ok else "failed", **counts, "output": tail}


def item_extraction(cuda: bool, tmp: Path) -> dict:
    import torch

    from aux_code.models import IdentityAnonymizer, build_utility
    from feature_extraction.model import FeatureModel

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_utility(name="i3d_r50", num_classes=400).eval()
    fm = FeatureModel(IdentityAnonymizer(), model, device=device)
    batch = 32
    x = torch.rand(batch, 3, 16, 224, 224, device=device)
    fm(x)  # warm-up (cuDNN autotuning)
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        fm(x)  # returns numpy: synchronised
        runs.append(batch / (time.perf_counter() - started))
    out = {"status": "ok", "path": fm.path, "batch": batch, "model_only_clips_per_s": round(statistics.median(runs), 1),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if lacking := missing("av"):
        out["pipeline"] = f"skipped: needs {', '.join(lacking)} to write and decode H.264"
        return out
    from benchmarks.bench_extraction import _scene_video, stage_videos

    video = tmp / "ceiling.mp4"
    _scene_video(video, 320, codec="h264")
    videos = [video] * 16  # 160 clips
    stage_videos(videos[:2], model, tmp / "warm", resolution=224, batch_size=batch, workers=4, device="cuda", feature_model=fm)
    started = time.perf_counter()
    clips = stage_videos(videos, model, tmp / "pyav", resolution=224, batch_size=batch, workers=4, device="cuda",
                         feature_model=fm)
    rate = clips / (time.perf_counter() - started)
    out.update(pyav_clips_per_s=round(rate, 1), pyav_fraction_of_ceiling=round(rate / out["model_only_clips_per_s"], 2),
               pyav_workers=4)
    return out


def paper_memory_setting() -> tuple[int | None, list[str]]:
    """optim.micro_batch and optim.recompute of the shipped paper minimax (configs/anonymization/tedspad.yaml)."""
    from anonymization_training.config import AnonymizationConfig
    from aux_code.config import load_config

    cfg = load_config(AnonymizationConfig, str(ROOT / "configs" / "anonymization" / "tedspad.yaml"), [], check_paths=False)
    return cfg.optim.micro_batch, list(cfg.optim.recompute)


def minimax_command() -> list[str]:
    """bench_anonymization's worker at the paper's size and batch, bf16, with the shipped memory setting."""
    from benchmarks.bench_anonymization import worker_command

    micro, recompute = paper_memory_setting()
    return worker_command("paper", "stage", amp="bf16", steps=2, warmup=1, batch=8, res=224, micro_batch=micro,
                          recompute=recompute)


def item_minimax(cuda: bool) -> dict:
    """A child process (bench_anonymization's worker), so an out-of-memory cannot take this check down."""
    cmd = minimax_command()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUTS["minimax"])
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"over {TIMEOUTS['minimax']} s"}
    if done.returncode != 0:
        oom = "out of memory" in done.stderr.lower()
        return {"status": "failed", "reason": "CUDA out of memory at batch 8" if oom else f"rc {done.returncode}",
                "output": done.stderr[-1500:]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"status": "ok", "precision": row["precision"], "clips": row["clips"], "images": row["images"],
            "micro_batch": row["micro_batch"], "recompute": row["recompute"],
            "step_s": round(row["step_s_median"], 3), "peak_gib": round(row["peak_mib"] / 1024, 2)}


def item_mgfn(cuda: bool) -> dict:
    import torch

    from anomaly_detection.train import build_optimizer
    from aux_code.losses.mgfn import mgfn_loss
    from aux_code.models.mgfn import build_mgfn
    from aux_code.precision import Precision

    device = torch.device("cuda")
    out: dict = {"status": "ok", "batch": "16+16 videos x 32 segments x 2049"}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_mgfn(preset="paper", feature_dim=2048).to(device).train()
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=5e-4)
        precision = Precision(mode, device)
        x = torch.rand(32, 32, 2049, device=device)
        labels = torch.cat([torch.zeros(16), torch.ones(16)]).to(device)
        times = []
        for i in range(12):
            _sync()
            started = time.perf_counter()
            with precision.autocast():
                o = model(x)
            loss, _ = mgfn_loss(scores=o.scores.float(), video_scores=o.video_scores.float(), labels=labels,
                                topk_features=o.topk_features.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _sync()
            if i >= 2:
                times.append(time.perf_counter() - started)
        step = statistics.median(times)
        out[f"{mode}_step_s"] = round(step, 4)
        out[f"{mode}_epoch_s"] = round(50 * step, 2)  # UCF-Crime: 810 normal videos / 16 per step
    return out


def item_dali(cuda: bool, tmp: Path) -> dict:
    if lacking := missing("nvidia.dali", "av"):
        return {"status": "skipped", "reason": f"needs {', '.join(lacking)}"}
    import numpy as np

    from aux_code.clips import extraction_starts
    from aux_code.video import probe
    from benchmarks.bench_extraction import _scene_video
    from feature_extraction.decoders import dali_clips, pyav_clips

    files, lengths = [], (100, 95, 63)
    for n in lengths:
        path = tmp / f"dali{n}.mp4"
        _scene_video(path, n, codec="h264")
        assert probe(path).num_frames == n
        files.append(path)
    got = list(dali_clips(files, list(lengths), clip_len=16, skip=2, device="gpu", batch_size=2, num_threads=2))
    starts = [(c.file_index, c.start) for c in got]
    expected = [(i, s) for i, n in enumerate(lengths) for s in extraction_starts(n)]
    diffs = []
    for i, (path, n) in enumerate(zip(files, lengths)):
        reference = dict(pyav_clips(path, n, clip_len=16, skip=2))
        for c in (c for c in got if c.file_index == i):
            frames = c.frames.float().cpu().numpy()
            diffs.append(float(np.abs(frames - reference[c.start].astype(np.float32)).mean()))
    ok = starts == expected and bool(diffs) and max(diffs) < 3.0
    return {"status": "ok" if ok else "failed", "clip_starts_equal": starts == expected, "clips": len(got),
            "mean_abs_pixel_diff_max": round(max(diffs), 3) if diffs else None,
            "reason": None if ok else "clip starts differ or pixels are more than 3 grey levels apart on average"}


# --------------------------------------------------------------------------------- driver

ITEMS = ("env", "gpu_tests", "extraction", "minimax", "mgfn", "dali")
NEEDS = {"extraction": ("einops", "tqdm", "av"), "minimax": ("einops", "yaml"), "mgfn": ("einops",), "gpu_tests": ("pytest",)}


def run_item(name: str, cuda: bool, out_dir: Path, tmp: Path) -> dict:
    started = time.perf_counter()
    try:
        if name == "env":
            result = {"status": "ok", **item_env(cuda)}
        elif name == "gpu_tests":
            result = item_gpu_tests(cuda, out_dir)
        elif not cuda:
            result = {"status": "skipped", "reason": "no CUDA device visible (dry run)"}
        elif (lacking := missing(*(m for m in NEEDS.get(name, ()) if m != "av"))):
            result = {"status": "skipped", "reason": f"needs {', '.join(lacking)}"}
        else:
            result = {"extraction": lambda: item_extraction(cuda, tmp), "minimax": lambda: item_minimax(cuda),
                      "mgfn": lambda: item_mgfn(cuda), "dali": lambda: item_dali(cuda, tmp)}[name]()
    except Exception as e:  # one broken item must not hide the others' results
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _cell(result: dict) -> str:
    skip = {"status", "seconds", "output", "traceback", "tests", "packages", "reason"}
    parts = [f"{k} {v}" for k, v in result.items() if k not in skip and v is not None]
    if result.get("reason"):
        parts.insert(0, str(result["reason"]))
    if "packages" in result:
        parts.append("missing: " + (", ".join(p for p, ok in result["packages"].items() if not ok) or "none"))
    return "; ".join(parts).replace("|", "/")


def markdown(report: dict) -> str:
    lines = [f"# GPU check, {report['date']}", "",
             f"Machine: {report['items']['env'].get('gpu', 'no CUDA device')}; torch {report['items']['env'].get('torch')}; "
             f"{'dry run' if report['dry_run'] else 'run on CUDA'}; {report['seconds']} s in all.", "",
             "| item | status | seconds | figures / reason |", "|---|---|---|---|"]
    for name, result in report["items"].items():
        lines.append(f"| {name} | {result['status']} | {result['seconds']} | {_cell(result)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"), help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="skip every GPU item even where CUDA is present")
    parser.add_argument("--items", default=",".join(ITEMS), help=f"comma list of {', '.join(ITEMS)}")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "dry_run": not cuda, "items": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in args.items.split(","):
            if name not in ITEMS:
                parser.error(f"unknown item {name!r}; expected some of {', '.join(ITEMS)}")
            result = run_item(name, cuda, out_dir, Path(tmp))
            report["items"][name] = result
            print(f"[gpu_check] {name}: {result['status']} ({result['seconds']} s) {_cell(result)[:300]}", flush=True)
    if "env" not in report["items"]:
        report["items"] = {"env": run_item("env", cuda, out_dir, Path(".")), **report["items"]}
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out_dir / "gpu_check.md").write_text(markdown(report))
    print(f"[gpu_check] wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
    failed = [n for n, r in report["items"].items() if r["status"] == "failed"]
    if failed:
        print(f"[gpu_check] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed and cuda else (1 if "gpu_tests" in failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
