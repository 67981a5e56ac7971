"""Why the synthetic world's tiny fT sees frame differences: RGB versus difference input.

    python -m scripts.ft_input_ablation                  # both inputs, 1500 steps each
    python -m scripts.ft_input_ablation --inputs rgb --steps 3000

Trains the tiny I3D-R50 (``i3d_r50_tiny``: width 8, pytorchvideo stem) from scratch on the
synthetic UCF101 analogue with stage 1's clips and augmentation, once per input, and prints
video-level top-1 (stage 1's evaluate_action) on the validation groups (carved from the train list) and on testlist01
every quarter of the run. Nothing is written; one torch thread per run.

On the default world (seed 0) an RGB input learns the people and places of the training
groups first and the motion hardly at all; the difference input learns the actions
(figures in docs/benchmarks.md, "Synthetic fT").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anonymization_training.data import (
    ActionClips,
    EvalClips,
    VideoSource,
    eval_transform,
    load_action_splits,
    loader,
    train_transform,
)
from anonymization_training.steps import Precision
from anonymization_training.train import evaluate_action
from aux_code.config import PROJECT_ROOT
from aux_code.models import build_utility


def top1(model: torch.nn.Module, source: VideoSource, *, size: int, clip_len: int, skip: int) -> float:
    """Stage 1's video-level top-1 (clip logits averaged per video), 3 clips per video; leaves the model training."""
    clips = EvalClips(source, eval_transform(size, scale=0.8), clip_len=clip_len, skip=skip, clips_per_video=3)
    cpu = torch.device("cpu")
    result = evaluate_action(None, model, loader(clips, batch_size=16), num_videos=len(source), device=cpu,
                             precision=Precision("off", cpu))
    model.train()
    return result["top1"]


def train_one(clip_input: str, args: argparse.Namespace, splits, sources: dict[str, VideoSource]) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_utility(name="i3d_r50_tiny", num_classes=len(splits.classes), clip_input=clip_input, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    train = ActionClips(sources["train"], train_transform(args.size, scale=(0.7, 0.9), jitter_p=0.3, erase_p=0.0),
                        clip_len=args.clip_len, skip=args.skip)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        items = [train[(int(i), int(rng.integers(1 << 30)))] for i in rng.integers(len(train.source), size=args.batch)]
        clips = torch.stack([it["clip"] for it in items])
        labels = torch.tensor([it["label"] for it in items])
        logits, _ = model(clips)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, args.steps // 4) == 0:
            shape = dict(size=args.size, clip_len=args.clip_len, skip=args.skip)
            print(f"{clip_input:10s} step {step:5d}: val top-1 {top1(model, sources['val'], **shape):.3f}, "
                  f"testlist01 top-1 {top1(model, sources['test'], **shape):.3f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(PROJECT_ROOT / "data" / "synthetic" / "UCF101"), help="UCF101-layout root")
    p.add_argument("--inputs", nargs="+", default=["rgb", "difference"], choices=["rgb", "difference"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--skip", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    splits = load_action_splits(args.root, fold=1, val_fraction=0.34, val_seed=0, by="group")
    sources = {k: VideoSource(getattr(splits, k), cache=True) for k in ("train", "val", "test")}
    print(f"{len(splits.classes)} classes; {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test videos")
    for clip_input in args.inputs:
        train_one(clip_input, args, splits, sources)


if __name__ == "__main__":
    main()
