"""Benchmark of stage 2's anonymized-image cache: one target-model epoch with and without it.

Without the cache every epoch decodes the training images, applies the person boxes and runs
the frozen anonymizer before the target model sees them (what the public code does, inside
its DataLoader); with it, an epoch reads uint8 tensors that were anonymized once. Measured
here, on the real code paths: privacy_training.data.prepare_split, and the stage's TargetTask
(built from a PrivacyConfig) stepped through ``task.batches(epoch)`` +
``task.train_step(batch, stepper)`` with the one loop's Stepper (aux_code.fit):

  uncached epoch = prepare(train split) + train epoch
  cached epoch   = train epoch            (+ one cache load per run, reported apart)

Cases:
  default  the embedded default: synthetic VISPR train split (540 images), UNet-tiny fA, 64 px,
           resnet_tiny target, batch 32;
  paper    the paper's sizes on a subset of the synthetic images: UNet (width 64, 17.27 M) fA,
           224 px, ResNet-50 target, batch 16 (per-image costs; an epoch scales with the image count).

The anonymizer is a freshly initialised UNet stored as a stage-1 checkpoint (a trained one
costs the same). Usage:

  python -m benchmarks.bench_privacy [--cases default paper] [--paper-images 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aux_code.anonymizers import AnonymizerSection, build_frame_anonymizer
from aux_code.checkpoint import save_checkpoint
from aux_code.config import PROJECT_ROOT, load_config
from aux_code.fit import Stepper
from aux_code.datasets.vispr import VISPR
from aux_code.models import build_anonymizer, build_target
from aux_code.models.stored import pack_model
from aux_code.precision import Precision
from privacy_training.config import PrivacyConfig
from privacy_training.data import prepare_split
from privacy_training.target import TargetTask

CASES = {
    "default": {"anonymizer": "unet_tiny", "resolution": 64, "target": "resnet_tiny", "batch": 32, "images": None},
    "paper": {"anonymizer": "unet", "resolution": 224, "target": "resnet50", "batch": 16, "images": 64},
}


def bench_case(name: str, spec: dict, *, vispr_root: Path, repeats: int, paper_images: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        model = build_anonymizer(name=spec["anonymizer"])
        save_checkpoint({"models": {"anonymizer": pack_model("anonymizer", {"name": spec["anonymizer"]}, model)}}, runs / "a" / "best.pt")
        fa = build_frame_anonymizer(AnonymizerSection(method="unet", checkpoint="a/best.pt"), runs_root=runs, device="cpu")
        dataset = VISPR(vispr_root, val_fraction=0.1, val_seed=0)
        items = dataset.items("train")
        if spec["images"] is not None:
            items = items[: paper_images]
        device = torch.device("cpu")
        prepare_s, epoch_s, load_s = [], [], []
        for r in range(repeats):
            t0 = time.perf_counter()
            split = prepare_split(items, dataset=dataset, fa=fa, resolution=spec["resolution"], crop_scale=1.0, device=device, batch=32)
            prepare_s.append(time.perf_counter() - t0)
            path = runs / f"cache{r}.pt"
            torch.save(split.to_record(), path)
            t0 = time.perf_counter()
            torch.load(path, map_location="cpu", weights_only=True)
            load_s.append(time.perf_counter() - t0)
            # The stage's defaults (Adam lr 1e-3, flips, the schedule section) plus the benchmark's batch and crop.
            cfg = load_config(PrivacyConfig, None, [f"optim.batch_size={spec['batch']}", "augment.min_crop_scale=0.85",
                                                    f"run.seed={r}"], check_paths=False)
            target_spec = {"name": spec["target"], "num_classes": len(dataset.attributes)}
            held_out = (split.images[:2], split.labels[:2].numpy())  # validation / test: unused here
            task = TargetTask(build_target(**target_spec), target_spec, images=split.images, labels=split.labels,
                              val=held_out, test=held_out, attributes=dataset.attributes, cache_key="bench", cfg=cfg,
                              device=device, extra=lambda report, selected: {})
            stepper = Stepper(Precision("fp32", device), stage="bench")
            # Epoch 0 pays one-off kernel set-up; the second epoch is the steady state.
            for epoch in range(2):
                task.schedule.start_epoch(epoch)
                t0 = time.perf_counter()
                for batch in task.batches(epoch):
                    stepper.step += 1
                    task.train_step(batch, stepper)
                seconds = time.perf_counter() - t0
            epoch_s.append(seconds)
        prep, ep, load = statistics.median(prepare_s), statistics.median(epoch_s), statistics.median(load_s)
        return {
            "case": name,
            **{k: v for k, v in spec.items() if k != "images"},
            "images": len(items),
            "prepare_s": round(prep, 3),
            "train_epoch_s": round(ep, 3),
            "cache_load_s": round(load, 4),
            "uncached_epoch_s": round(prep + ep, 3),
            "cached_epoch_s": round(ep, 3),
            "speedup": round((prep + ep) / ep, 2),
            "prepare_ms_per_image": round(1000 * prep / len(items), 2),
            "train_ms_per_image": round(1000 * ep / len(items), 2),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["default", "paper"], choices=sorted(CASES))
    parser.add_argument("--vispr", default=str(PROJECT_ROOT / "data" / "synthetic" / "VISPR"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.cases:
        row = bench_case(name, CASES[name], vispr_root=Path(args.vispr), repeats=args.repeats, paper_images=args.paper_images)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| case | fA | px | target | images | anonymize (prepare) s | train epoch s | uncached epoch s | cached epoch s | speed-up | cache load s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['anonymizer']} | {r['resolution']} | {r['target']} | {r['images']} | {r['prepare_s']} | "
              f"{r['train_epoch_s']} | {r['uncached_epoch_s']} | {r['cached_epoch_s']} | {r['speedup']}x | {r['cache_load_s']} |")


if __name__ == "__main__":
    main()
