"""Stage 2 (privacy evaluation): metrics, leakage, probe layout, cache, and the CLI on a tiny world."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aux_code.config import PROJECT_ROOT, describe, load_config
from aux_code.datasets.vispr import VISPR
from aux_code.models import build_anonymizer, build_utility
from aux_code.models.stored import pack_model
from aux_code.checkpoint import save_checkpoint
from privacy_training.__main__ import main
from privacy_training.config import PrivacyConfig
from privacy_training.data import cache_key, decode_image, ImageDecodeError
from privacy_training.leakage import count_faces, mse, psnr, similarity_summary, ssim
from privacy_training.probe import extract_features, stack_clip
from privacy_training.target import augment_theta, score_split, warp

CONFIGS = PROJECT_ROOT / "configs" / "synthetic" / "privacy"
# Tiny and quick: 32 px, 2 epochs, small batches; the astronaut photograph is still checked.
FAST = ["clip.resolution=32", "optim.epochs=2", "optim.batch_size=8", "data.anonymize_batch=16", "schedule.warmup_epochs=1"]
PROBE_FAST = ["clip.resolution=32", "clip.clip_len=8", "probe.epochs=5", "probe.batch_size=8", "probe.hidden=16"]


@pytest.fixture(scope="module")
def world(make_paths, tmp_path_factory):
    """This module's root: a paths file (datasets: the session's tiny world; runs in the tmp dir)
    and a fake stage-1 checkpoint."""
    root = tmp_path_factory.mktemp("privacy")
    make_paths(root)
    torch.manual_seed(0)
    utility = build_utility(name="i3d_r50_tiny", num_classes=4)
    anonymizer = build_anonymizer(name="unet_tiny")
    ckpt_dir = root / "runs" / "anonymization" / "fake"
    save_checkpoint(
        {"models": {
            "utility": pack_model("utility", {"name": "i3d_r50_tiny", "num_classes": 4}, utility),
            "anonymizer": pack_model("anonymizer", {"name": "unet_tiny"}, anonymizer),
        }},
        ckpt_dir / "best.pt",
    )
    save_checkpoint({"models": {"anonymizer": pack_model("anonymizer", {"name": "unet_tiny"}, anonymizer)}}, ckpt_dir / "anon_only.pt")
    return root


@pytest.fixture()
def paths_env(world, monkeypatch):
    monkeypatch.setenv("TEDSPAD_PATHS", str(world / "paths.yaml"))
    return world


def _results(world: Path, name: str) -> dict:
    return json.loads((world / "runs" / "privacy" / name / "results.json").read_text())


def _check_predictions(world: Path, name: str, results: dict) -> None:
    """test_predictions.npz (no pickle) holds the labels and logits the reported test cMAP came from."""
    import numpy as np

    from aux_code.metrics import cmap

    z = np.load(world / "runs" / "privacy" / name / "test_predictions.npz", allow_pickle=False)
    assert z["labels"].shape == z["logits"].shape == (results["counts"]["test"], len(z["attributes"]))
    assert cmap(z["labels"], z["logits"]).cmap == pytest.approx(results["test"]["cmap"], abs=1e-12)


# --------------------------------------------------------------------------- units


def test_every_key_documented_and_probe_needs_one_source():
    undocumented = [line for line in describe(PrivacyConfig) if line.rstrip().endswith("#")]
    assert not undocumented, undocumented
    from aux_code.config import ConfigError

    with pytest.raises(ConfigError, match="exactly one source of the utility model"):
        load_config(PrivacyConfig, CONFIGS / "probe.yaml", ["utility.weights=i3d.pth"], check_paths=False)


def test_score_split_leaves_out_attribute_without_positives():
    """The documented handling: an attribute with no positive in the split is excluded (and named),
    not averaged as NaN or 0; the chance level is computed over the same attributes."""
    labels = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=np.float32)
    logits = np.array([[2.0, 0.1, -1.0], [-1.0, 0.3, 1.0], [1.0, -0.2, -0.5], [0.5, 0.0, -2.0]])
    report = score_split(logits, labels, attributes=("a", "b", "c"), f1_threshold=0.5)
    assert report["excluded_attributes"] == ["b"]
    assert set(report["per_attribute_ap"]) == {"a", "c"}
    from sklearn.metrics import average_precision_score

    expected = np.mean([average_precision_score(labels[:, j], logits[:, j]) for j in (0, 2)])
    assert report["cmap"] == pytest.approx(expected)
    assert report["chance_cmap"] == pytest.approx(0.5)
    assert np.isfinite(report["macro_f1"]) and 0.0 <= report["macro_f1"] <= 1.0


def test_ssim_matches_skimage_and_psnr_mse_by_hand():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 40, 37))
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b))
    for i in range(2):
        ref = structural_similarity(
            a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=2,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-5)
    assert float(ssim(torch.from_numpy(a), torch.from_numpy(a))[0]) == pytest.approx(1.0)
    x = torch.zeros(1, 3, 4, 4)
    y = torch.full((1, 3, 4, 4), 0.1)
    assert float(mse(x, y)[0]) == pytest.approx(0.01)
    assert float(psnr(x, y)[0]) == pytest.approx(20.0)
    orig = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    summary = similarity_summary(orig, orig.clone())
    assert summary["identical"] == 3 and summary["psnr_db"] is None and summary["ssim"] == pytest.approx(1.0)


def test_haar_finds_the_astronaut_face_and_not_after_blackening():
    from skimage import data

    image = data.astronaut()
    assert count_faces(image) > 0
    assert count_faces(np.zeros_like(image)) == 0


def test_stack_clip_layout_and_features():
    """Every frame of the stacked clip is the image itself, channels in place (B, C, T, H, W)."""
    images = torch.rand(2, 3, 5, 6)
    clip = stack_clip(images, 4)
    assert clip.shape == (2, 3, 4, 5, 6)
    for t in range(4):
        assert torch.equal(clip[:, :, t], images)
    calls = []

    class Recorder(torch.nn.Module):
        """Stands in for fT: returns (logits, pooled feature) and keeps what it was given."""

        def forward(self, x):
            calls.append(x.clone())
            feature = x.mean(dim=(2, 3, 4))
            return feature, feature

    u8 = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    feats = extract_features(Recorder(), u8, clip_length=6, batch_size=2, device=torch.device("cpu"))
    assert feats.shape == (3, 3)
    assert calls[0].shape == (2, 3, 6, 8, 8)
    assert torch.allclose(calls[0][:, :, 3], u8[:2].float() / 255.0)


def test_augment_identity_crop_and_flip():
    x = torch.rand(4, 3, 8, 8)
    same = warp(x, augment_theta(4, min_crop_scale=1.0, flip=False))
    assert torch.allclose(same, x, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    flipped = warp(x, augment_theta(4, min_crop_scale=1.0, flip=True, generator=g))
    for i in range(4):
        assert torch.allclose(flipped[i], x[i], atol=1e-5) or torch.allclose(flipped[i], x[i].flip(-1), atol=1e-5)
    cropped = warp(x, augment_theta(4, min_crop_scale=0.5, flip=False, generator=g))
    assert cropped.shape == x.shape and not torch.allclose(cropped, x)


def test_cache_key_depends_on_anonymizer_resolution_and_content():
    base = cache_key({"method": "raw"}, resolution=64, crop_scale=1.0, fingerprints={"train": "a", "val": "b", "test": "c"})[0]
    assert base == cache_key({"method": "raw"}, resolution=64, crop_scale=1.0, fingerprints={"train": "a", "val": "b", "test": "c"})[0]
    assert base != cache_key({"method": "downsample", "factor": 2}, resolution=64, crop_scale=1.0, fingerprints={"train": "a", "val": "b", "test": "c"})[0]
    assert base != cache_key({"method": "raw"}, resolution=32, crop_scale=1.0, fingerprints={"train": "a", "val": "b", "test": "c"})[0]
    assert base != cache_key({"method": "raw"}, resolution=64, crop_scale=1.0, fingerprints={"train": "a", "val": "b", "test": "x"})[0]


def test_validation_split_disjoint_from_test_and_train(tiny_world):
    vispr = VISPR(tiny_world / "VISPR", val_fraction=0.25, val_seed=0)
    train = {i.image_id for i in vispr.items("train")}
    val = {i.image_id for i in vispr.items("val")}
    test = {i.image_id for i in vispr.items("test")}
    assert val and train and test
    assert not (val & test) and not (val & train) and not (train & test)
    assert len(train) + len(val) == 24


def test_decode_gives_rgb(tmp_path):
    from PIL import Image

    pixels = np.zeros((4, 5, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red
    Image.fromarray(pixels).save(tmp_path / "red.png")
    out = decode_image(tmp_path / "red.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()


def test_decode_error_names_the_file(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageDecodeError, match="x.jpg"):
        decode_image(bad)


# --------------------------------------------------------------------------- the stage


def test_cli_raw_baseline_probe_and_cache(paths_env, capsys):
    world = paths_env
    assert main(["--config", str(CONFIGS / "default.yaml"), *FAST]) == 0
    raw = _results(world, "raw")
    assert raw["task"] == "target" and raw["cache"]["hit"] is False
    assert raw["counts"]["train"] + raw["counts"]["val"] == 24 and raw["counts"]["test"] == 12
    assert 0.0 < raw["test"]["cmap"] <= 1.0 and 1 <= raw["selection"]["epoch"] <= 2
    assert raw["leakage"]["similarity"]["identical"] == 12 and raw["leakage"]["astronaut"]["faces_before"] > 0
    assert len(raw["config_hash"]) == 12
    _check_predictions(world, "raw", raw)
    caches = sorted((world / "runs" / "privacy" / "cache").glob("*.pt"))
    assert len(caches) == 1

    # Second run: the anonymized images come from the cache, the finished run only re-evaluates.
    assert main(["--config", str(CONFIGS / "default.yaml"), *FAST]) == 0
    again = _results(world, "raw")
    assert again["cache"]["hit"] is True and again["cache"]["key"] == raw["cache"]["key"]
    assert again["test"]["cmap"] == pytest.approx(raw["test"]["cmap"])
    assert sorted((world / "runs" / "privacy" / "cache").glob("*.pt")) == caches

    # A baseline compared with the raw run.
    assert main(["--config", str(CONFIGS / "downsample4x.yaml"), *FAST]) == 0
    ds = _results(world, "downsample4x")
    assert ds["anonymizer"] == {"method": "downsample", "factor": 4}
    assert ds["compare_to"]["raw_cmap"] == pytest.approx(raw["test"]["cmap"])
    expected = 100.0 * (raw["test"]["cmap"] - ds["test"]["cmap"]) / raw["test"]["cmap"]
    assert ds["privacy_reduction_pct"] == pytest.approx(expected)
    assert ds["leakage"]["similarity"]["ssim"] < 1.0 and ds["leakage"]["similarity"]["psnr_db"] is not None

    # A trained anonymizer (the fake stage-1 UNet), named by checkpoint and digest.
    assert main(["--config", str(CONFIGS / "tedspad.yaml"), *FAST, "anonymizer.checkpoint=anonymization/fake/best.pt"]) == 0
    unet = _results(world, "tedspad")
    assert unet["anonymizer"]["method"] == "unet" and len(unet["anonymizer"]["digest"]) == 16
    assert unet["cache"]["key"] not in (raw["cache"]["key"], ds["cache"]["key"])

    # The feature-level probe on the fake stage-1 checkpoint, reusing the raw cache.
    probe = ["--config", str(CONFIGS / "probe.yaml"), *PROBE_FAST]
    assert main([*probe, "utility.checkpoint=anonymization/fake/best.pt"]) == 0
    pr = _results(world, "probe")
    assert pr["task"] == "probe" and pr["cache"]["hit"] is True and pr["utility"]["feature_dim"] == 256
    assert 0.0 < pr["test"]["cmap"] <= 1.0 and (world / "runs" / "privacy" / "probe" / "best.pt").is_file()
    _check_predictions(world, "probe", pr)

    # A checkpoint without a utility model: one clear message, exit status 2.
    capsys.readouterr()
    assert main([*probe, "utility.checkpoint=anonymization/fake/anon_only.pt", "run.name=probe_bad"]) == 2
    err = capsys.readouterr().err
    assert "holds no model 'utility'" in err and "anon_only.pt" in err and "utility.checkpoint" in err


def test_wrong_attribute_count_is_a_clear_error(tiny_world, tmp_path, monkeypatch, capsys):
    vispr = tmp_path / "VISPR"
    shutil.copytree(tiny_world / "VISPR", vispr)
    labels = pickle.loads((vispr / "train_labels.pkl").read_bytes())
    first = sorted(labels)[0]
    labels[first] = list(labels[first])[:6]
    (vispr / "train_labels.pkl").write_bytes(pickle.dumps(labels))
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"vispr: {vispr}\nruns: {tmp_path / 'runs'}\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(paths))
    assert main(["--config", str(CONFIGS / "default.yaml"), *FAST]) == 2
    err = capsys.readouterr().err
    assert first in err and "expected 7" in err


def test_undecodable_image_is_skipped_and_counted(tiny_world, tmp_path, monkeypatch, capsys):
    vispr = tmp_path / "VISPR"
    shutil.copytree(tiny_world / "VISPR", vispr)
    victim = sorted((vispr / "test2017").glob("*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8 truncated")
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"vispr: {vispr}\nruns: {tmp_path / 'runs'}\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(paths))
    args = ["--config", str(CONFIGS / "default.yaml"), *FAST, "optim.epochs=1", "leakage.astronaut=false"]
    # 1 of 12 test images is above the default 5% allowance: a clear error naming the file.
    assert main(args) == 2
    assert victim.name in capsys.readouterr().err
    assert main([*args, "data.max_decode_failures=0.2"]) == 0
    res = json.loads((tmp_path / "runs" / "privacy" / "raw" / "results.json").read_text())
    assert res["counts"]["test"] == 11 and res["counts"]["test_decode_failures"] == 1
    assert res["decode_failures"]["test"][0][0] == victim.stem
    assert "skipped undecodable test image" in capsys.readouterr().out


def test_resume_continues_to_the_same_result(paths_env):
    """An interrupted run (1 of 2 epochs) restarted with the same command ends where an uninterrupted one does."""
    world = paths_env
    base = ["--config", str(CONFIGS / "downsample2x.yaml"), *FAST, "leakage.enabled=false", "eval.compare_to=null"]
    assert main([*base, "run.name=whole"]) == 0
    assert main([*base, "run.name=split", "optim.epochs=1"]) == 0
    assert main([*base, "run.name=split"]) == 0
    whole, split = _results(world, "whole"), _results(world, "split")
    assert split["selection"] == {**whole["selection"]}
    assert split["test"]["per_attribute_ap"] == pytest.approx(whole["test"]["per_attribute_ap"])
