"""Tests that fail when the science breaks, not only when a file goes missing: stage 1's tasks
move their models away from the initial state (and the minimax starts from its init runs),
stage 2's target model learns attributes that are easy to see, and stage 3's features are
fT(fA(x)) for the anonymizer named, recomputed by hand for one clip.

Everything goes through the stages' public surfaces: ``main([...])`` / ``run(cfg)`` with
key=value overrides and the files they write (checkpoints, config.yaml, results.json,
feature .npy files and manifest.json).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from einops import rearrange

from aux_code.checkpoint import load_checkpoint, save_checkpoint
from aux_code.clips import clip_frame_indices, extraction_starts
from aux_code.config import PROJECT_ROOT
from aux_code.datasets import VISPR_ATTRIBUTES
from aux_code.features import read_manifest
from aux_code.models import build_anonymizer, build_budget, build_utility
from aux_code.models.stored import load_stored_model, pack_model
from aux_code.transforms import ClipEval
from aux_code.video import probe, read_frames
from tests.tiny import ANONYMIZATION_CONFIGS, ANONYMIZATION_FAST, INIT_TASKS, anonymization_paths

BUILDERS = {"utility": build_utility, "anonymizer": build_anonymizer, "budget": build_budget}


def _run_config(run_dir: Path) -> dict:
    """The resolved config a stage wrote into its run directory."""
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _check_moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], *, lr: float, steps: int, what: str) -> None:
    """``after`` is ``steps`` Adam steps of learning rate <= ``lr`` away from ``before``: every
    parameter moved by at most about lr per step (so ``before`` is where training started; a
    model that started elsewhere differs by ~0.1-1), and most parameters did move."""
    assert before.keys() == after.keys(), what
    delta = torch.cat([(after[k] - before[k]).abs().flatten() for k in before])
    bound = 1.5 * lr * steps + 1e-6
    assert delta.max().item() <= bound, (
        f"{what}: a parameter moved by {delta.max().item():.3g} in {steps} steps at lr {lr:g}; "
        f"training did not start from the expected initial weights"
    )
    moved = (delta > 0.1 * lr).float().mean().item()
    assert moved > 0.5, f"{what}: only {moved:.1%} of the parameters moved: the model did not learn"


# --------------------------------------------------------------------------- stage 1


def test_init_tasks_move_their_model_from_the_seeded_init(init_runs):
    """utility_pretrain, identity and budget_ssl each change every part of their model.

    The initial weights are rebuilt from the checkpoint's spec under the run's seed: the stage
    seeds (run.seed) and then builds its fresh model. _check_moved's upper bound tells a wrong
    rebuild (another start) from training; its lower bound tells training from no training."""
    for _, run_name, key in INIT_TASKS:
        run_dir = init_runs / "anonymization" / run_name
        cfg = _run_config(run_dir)
        trained, spec = load_stored_model(run_dir / "last.pt", key)
        torch.manual_seed(cfg["run"]["seed"])
        init = BUILDERS[key](**spec)
        steps = cfg["optim"]["steps_per_epoch"] * cfg["optim"]["epochs"]
        _check_moved(_params(init), _params(trained), lr=cfg["optim"]["lr"], steps=steps, what=f"{run_name} ({key})")
        assert load_checkpoint(run_dir / "last.pt")["epoch"] == cfg["optim"]["epochs"]


@pytest.fixture(scope="module")
def minimax_run(init_runs, tiny_world) -> Path:
    """One TeD-SPAD minimax (1 epoch of 2 Step 1 + 2 Step 2 updates) from the session's init runs."""
    from anonymization_training.__main__ import main

    rc = main(["--config", str(ANONYMIZATION_CONFIGS / "tedspad.yaml"), *anonymization_paths(tiny_world, init_runs),
               *ANONYMIZATION_FAST, "run.name=science_tedspad"])
    assert rc == 0
    return init_runs / "anonymization" / "science_tedspad"


def test_minimax_starts_from_the_init_runs_and_moves_all_three_models(init_runs, minimax_run):
    """Step 1 moves fA away from the identity init, Step 2 moves fT and fB away from theirs."""
    cfg = _run_config(minimax_run)
    steps = cfg["optim"]["steps_per_epoch"] * cfg["optim"]["epochs"]
    for key, init_run, lr_key in (("anonymizer", "identity", "lr_anonymizer"), ("utility", "utility", "lr_utility"),
                                  ("budget", "budget", "lr_budget")):
        init, _ = load_stored_model(init_runs / "anonymization" / init_run / "best.pt", key)
        trained, _ = load_stored_model(minimax_run / "last.pt", key)
        _check_moved(_params(init), _params(trained), lr=cfg["optim"][lr_key], steps=steps, what=f"minimax {key}")
    results = json.loads((minimax_run / "results.json").read_text())
    assert results["method"] == "tedspad" and set(results["initial"]) >= {"action_top1", "budget_acc"}


# --------------------------------------------------------------------------- stage 2

SEPARABLE_SIZE = 32


def _separable_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark noisy image with one bright full-width bar per present attribute (bar j at rows
    4 j + 2 .. 4 j + 5): the attributes are as easy to see as attributes get, under flips too."""
    image = rng.integers(0, 60, size=(SEPARABLE_SIZE, SEPARABLE_SIZE, 3), dtype=np.uint8)
    for j, present in enumerate(labels):
        if present:
            image[4 * j + 2 : 4 * j + 5, :, :] = rng.integers(200, 256, size=3, dtype=np.uint8)
    return image


def write_separable_vispr(root: Path, *, train: int = 96, test: int = 48, seed: int = 0) -> np.ndarray:
    """A VISPR-layout privacy set (train2017/, test2017/, {split}_labels.pkl) of separable
    images; returns the test labels (N, 7)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        (root / f"{split}2017").mkdir(parents=True)
        labels = {}
        for i in range(count):
            image_id = f"2017_{split}{i:04d}"
            values = (rng.random(len(VISPR_ATTRIBUTES)) < 0.5).astype(np.float32)
            labels[image_id] = values
            cv2.imwrite(str(root / f"{split}2017" / f"{image_id}.png"), cv2.cvtColor(_separable_image(values, rng), cv2.COLOR_RGB2BGR))
        (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=4))
    return np.stack(list(labels.values()))


def test_raw_target_model_learns_separable_attributes(tmp_path):
    """On images whose attributes are bright bars, stage 2's raw target model ranks every
    attribute far above chance (a model that does not learn stays near the positive rate)."""
    from privacy_training.__main__ import main

    vispr = tmp_path / "VISPR"
    test_labels = write_separable_vispr(vispr)
    args = ["--config", str(PROJECT_ROOT / "configs" / "synthetic" / "privacy" / "default.yaml"),
            f"paths.vispr={vispr}", f"paths.runs={tmp_path / 'runs'}", "run.name=separable",
            f"clip.resolution={SEPARABLE_SIZE}", "data.validation_fraction=0.25", "optim.epochs=8", "optim.batch_size=16",
            "leakage.enabled=false"]
    assert main(args) == 0
    results = json.loads((tmp_path / "runs" / "privacy" / "separable" / "results.json").read_text())
    test = results["test"]
    chance = float(test_labels.mean())  # the mean AP of a random ranking
    assert 0.3 < chance < 0.7 and test_labels.min(axis=0).max() == 0 and test_labels.max(axis=0).min() == 1
    assert test["cmap"] > chance + 0.3, test
    assert min(test["per_attribute_ap"].values()) > chance + 0.1, test["per_attribute_ap"]


# --------------------------------------------------------------------------- stage 3

EXTRACTION = PROJECT_ROOT / "configs" / "synthetic" / "extraction" / "default.yaml"
UTILITY_CKPT, UNET_CKPT = "anonymization/utility/best.pt", "anonymization/unet/best.pt"


@pytest.fixture(scope="module")
def extraction_runs(tiny_world, tmp_path_factory) -> Path:
    """Stage 3 on the 4 test videos with one fT, for raw, downsample 4x and a random (far from
    identity) UNet fA, both stored as stage-1 checkpoints."""
    from feature_extraction.config import ExtractionConfig
    from feature_extraction.pipeline import run

    from aux_code.config import load_config

    runs = tmp_path_factory.mktemp("science_extraction") / "runs"
    torch.manual_seed(0)
    spec = {"name": "i3d_r50_tiny", "num_classes": 4}
    save_checkpoint({"models": {"utility": pack_model("utility", spec, build_utility(**spec))}}, runs / UTILITY_CKPT)
    save_checkpoint({"models": {"anonymizer": pack_model("anonymizer", {"name": "unet_tiny"}, build_anonymizer(name="unet_tiny"))}},
                    runs / UNET_CKPT)
    common = [f"paths.ucf_crime={tiny_world / 'UCF_Crime'}", f"paths.runs={runs}", f"utility.checkpoint={UTILITY_CKPT}",
              "clip.resolution=32", "extract.batch_size=4", "data.splits=[test]"]
    for name, anonymizer in (("raw", ["anonymizer.method=raw"]),
                             ("down4", ["anonymizer.method=downsample", "anonymizer.factor=4"]),
                             ("unet", ["anonymizer.method=unet", f"anonymizer.checkpoint={UNET_CKPT}"])):
        assert run(load_config(ExtractionConfig, EXTRACTION, [*common, *anonymizer, f"run.name={name}"])) == 0
    return runs


def _features(out_dir: Path) -> dict[str, np.ndarray]:
    info = read_manifest(out_dir)
    return {name: np.load(out_dir / entry.file) for name, entry in info.videos.items()}


def test_model_resolution_anonymizers_change_the_features(extraction_runs):
    raw = _features(extraction_runs / "extraction" / "raw")
    assert len(raw) == 4
    for name in ("down4", "unet"):
        anonymized = _features(extraction_runs / "extraction" / name)
        assert anonymized.keys() == raw.keys()
        for video in raw:
            assert anonymized[video].shape == raw[video].shape
            # Per clip: every clip's feature moved, by more than float noise.
            gap = np.abs(anonymized[video] - raw[video]).max(axis=1)
            assert np.all(gap > 1e-3), (name, video, gap)


def test_stored_feature_is_ft_of_fa_of_the_clip_by_hand(extraction_runs, tiny_world):
    """One clip of one video, recomputed outside the pipeline: decode its frames, crop, apply
    the UNet (and, separately, 4x average-pool + bilinear) frame by frame, run fT."""
    from aux_code.datasets import get_anomaly_dataset

    utility, _ = load_stored_model(extraction_runs / UTILITY_CKPT, "utility")
    unet, _ = load_stored_model(extraction_runs / UNET_CKPT, "anonymizer")

    def down4(frames: torch.Tensor) -> torch.Tensor:
        h, w = frames.shape[-2:]
        return F.interpolate(F.avg_pool2d(frames, 4, ceil_mode=True), size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)

    adapter = get_anomaly_dataset("ucf_crime", tiny_world / "UCF_Crime")
    item = next(it for it in adapter.items("test") if it.label == 1)
    for name, anonymize in (("unet", unet), ("down4", down4), ("raw", lambda x: x)):
        info = read_manifest(extraction_runs / "extraction" / name)
        entry = info.videos[item.name]
        stored = np.load(extraction_runs / "extraction" / name / entry.file)
        num_frames = probe(item.path).num_frames
        starts = extraction_starts(num_frames, clip_len=info.clip_len, skip=info.skip)
        assert entry.num_frames == num_frames and len(starts) == stored.shape[0] >= 2
        k = 1  # not the first clip: the clip indexing is checked too
        frames = read_frames(item.path, clip_frame_indices(starts[k], clip_len=info.clip_len, skip=info.skip))
        x = rearrange(torch.from_numpy(np.asarray(frames)), "t h w c -> c t h w").float() / 255.0
        x = ClipEval(info.resolution, scale=info.utility["crop_scale"])(x)
        with torch.no_grad():
            y = anonymize(rearrange(x, "c t h w -> t c h w"))
            _, feature = utility(rearrange(y, "t c h w -> 1 c t h w"))
        np.testing.assert_allclose(stored[k], feature[0].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
