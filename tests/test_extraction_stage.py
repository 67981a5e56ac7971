"""Stage 3 (feature extraction) on a tiny synthetic world: clip counts, anonymizer paths,
resume, failures, the anomaly stage reading the output, and the CLI end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_detection.data import load_anomaly_data
from aux_code.anonymizers import AnonymizerSection, build_frame_anonymizer
from aux_code.checkpoint import save_checkpoint
from aux_code.clips import extraction_starts
from aux_code.config import PROJECT_ROOT, config_hash, describe, load_config
from aux_code.datasets import AnomalyVideo, get_anomaly_dataset
from aux_code.features import read_manifest
from aux_code.models import build_anonymizer, build_utility
from aux_code.models.stored import pack_model
from aux_code.transforms import ClipEval
from aux_code.video import write_video
from feature_extraction.__main__ import main
from feature_extraction.config import ExtractionConfig
from feature_extraction.pipeline import (
    JOURNAL_DIR,
    BoxLookup,
    Clip,
    ClipSpec,
    VideoDone,
    VideoFailed,
    VideoJob,
    background,
    extract_stream,
    prepare_clip,
    run,
    video_events,
)

DEFAULT = PROJECT_ROOT / "configs" / "synthetic" / "extraction" / "default.yaml"
UTILITY_CKPT = "anonymization/utility/best.pt"
IDENTITY_CKPT = "anonymization/identity/best.pt"
# Small model input keeps each tiny-world run around a second on one core.
FAST = ["clip.resolution=32", "extract.batch_size=4", "extract.prefetch=2"]


@pytest.fixture(scope="session")
def world(tiny_world) -> Path:
    """The session's tiny world (tests/conftest.py), read only: a test that breaks videos copies them."""
    return tiny_world


def make_checkpoints(runs: Path) -> None:
    """Stage-1-style checkpoints without running stage 1: a fresh tiny fT, and an identity fA."""
    torch.manual_seed(0)
    spec = {"name": "i3d_r50_tiny", "num_classes": 4}
    save_checkpoint({"models": {"utility": pack_model("utility", spec, build_utility(**spec))}}, runs / UTILITY_CKPT)
    save_checkpoint({"models": {"anonymizer": pack_model("anonymizer", {"name": "identity"}, build_anonymizer(name="identity"))}},
                    runs / IDENTITY_CKPT)


@pytest.fixture()
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    make_checkpoints(root)
    return root


def overrides(world: Path, runs: Path, *extra: str, ucf_root: Path | None = None) -> list[str]:
    return [f"paths.ucf_crime={ucf_root or world / 'UCF_Crime'}", f"paths.runs={runs}", *FAST, *extra]


def config(world: Path, runs: Path, *extra: str, ucf_root: Path | None = None) -> ExtractionConfig:
    return load_config(ExtractionConfig, DEFAULT, overrides(world, runs, *extra, ucf_root=ucf_root))


def features(out_dir: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(out_dir.glob("*.npy"))}


def results(out_dir: Path) -> dict:
    return json.loads((out_dir / "results.json").read_text())


# ------------------------------------------------------------------------------------ config


def test_every_key_documented_and_configs_load():
    undocumented = [line for line in describe(ExtractionConfig) if line.rstrip().endswith("#")]
    assert not undocumented, undocumented
    files = sorted((PROJECT_ROOT / "configs" / "extraction").glob("*.yaml")) + sorted(DEFAULT.parent.glob("*.yaml"))
    methods = set()
    for f in files:
        cfg = load_config(ExtractionConfig, f, check_paths=False)
        methods.add((cfg.anonymizer.method, cfg.anonymizer.factor if cfg.anonymizer.method == "downsample" else 0))
    assert {("raw", 0), ("unet", 0), ("downsample", 2), ("downsample", 4), ("blur", 0), ("blacken", 0)} <= methods
    with pytest.raises(Exception, match="data.splits"):
        load_config(ExtractionConfig, DEFAULT, ["data.splits=[val]"], check_paths=False)


# ------------------------------------------------------------------------------------ clips


@pytest.mark.parametrize("num_frames", [31, 32, 63, 64, 95, 97])
def test_clip_count_follows_rule(tmp_path, num_frames):
    """S = num_frames // 32 clips at the starts of extraction_starts; shorter than a span fails."""
    # Frame i is a flat grey of level 2 i + 10, so a decoded frame tells which index it is.
    frames = [np.full((32, 32, 3), 2 * i + 10, dtype=np.uint8) for i in range(num_frames)]
    path = tmp_path / "v.avi"
    write_video(path, frames, codec="mjpeg")
    item = AnomalyVideo(path=path, name="v", label=0, class_name="Normal", intervals=())
    job = VideoJob(index=0, split="test", item=item, fingerprint="x")
    spec = ClipSpec(clip_len=16, skip=2, resolution=16, crop_scale=0.8)
    events = list(video_events(job, spec, boxes=BoxLookup(None, None), anonymizer=None))
    clips = [e for e in events if isinstance(e, Clip)]
    if num_frames < 32:
        assert len(events) == 1 and isinstance(events[0], VideoFailed) and "needs 32" in events[0].error
        return
    assert len(clips) == num_frames // 32 == len(extraction_starts(num_frames))
    assert [c.k for c in clips] == list(range(len(clips)))
    assert isinstance(events[-1], VideoDone) and events[-1].num_clips == len(clips) and events[-1].num_frames == num_frames
    assert clips[0].data.shape == (3, 16, 16, 16)
    # Clip k reads frames 32 k, 32 k + 2, ..., 32 k + 30.
    for c in clips:
        levels = c.data.mean(dim=(0, 2, 3)) * 255
        expected = torch.tensor([2 * (32 * c.k + 2 * j) + 10 for j in range(16)], dtype=torch.float32)
        assert (levels - expected).abs().max() < 1.5, (c.k, levels, expected)


def test_prepare_clip_boxes_at_original_resolution():
    section = AnonymizerSection(method="blacken", boxes="gt")
    fa = build_frame_anonymizer(section, runs_root=".")
    clip = torch.full((4, 40, 50, 3), 200, dtype=torch.uint8)
    transform = ClipEval(20, scale=0.8)
    whole = [np.array([[0, 0, 50, 40]], dtype=np.int32)] * 4
    none = [np.zeros((0, 4), dtype=np.int32)] * 4
    assert prepare_clip(clip, transform=transform, anonymizer=fa, boxes=whole).abs().max() == 0
    out = prepare_clip(clip, transform=transform, anonymizer=fa, boxes=none)
    assert out.shape == (3, 4, 20, 20) and torch.allclose(out, torch.full_like(out, 200 / 255), atol=1e-6)
    with pytest.raises(ValueError, match="uint8 clip"):
        prepare_clip(clip.float(), transform=transform)


def test_extract_stream_batches_across_videos_and_drops_failed():
    """Interleaved videos (two workers), one failing half-way: rows land in the right video and order."""

    def clip(job, k):
        return Clip(job, k, torch.full((3, 2, 4, 4), float(10 * job + k)))

    events = [clip(0, 0), clip(1, 0), clip(0, 1), clip(1, 1), VideoFailed(1, "boom"), clip(0, 2), VideoDone(0, 96, 3),
              clip(2, 0), VideoDone(2, 40, 1)]
    done, failed = {}, {}
    stats = extract_stream(events, lambda x: x.flatten(1)[:, :1].numpy() * np.ones((1, 5), np.float32), batch_size=2,
                           on_done=lambda j, f, n: done.setdefault(j, (f, n)), on_failed=lambda j, e: failed.setdefault(j, e))
    assert failed == {1: "boom"} and set(done) == {0, 2}
    np.testing.assert_array_equal(done[0][0][:, 0], [0, 1, 2])
    assert done[0][0].shape == (3, 5) and done[0][0].dtype == np.float32 and done[0][1] == 96
    np.testing.assert_array_equal(done[2][0][:, 0], [20])
    assert stats.videos == 2 and stats.failed == 1 and stats.clips == 6


def test_background_keeps_order_and_reraises():
    assert list(background(range(50), 3)) == list(range(50))

    def broken():
        yield 1
        raise KeyError("decoder broke")

    with pytest.raises(KeyError, match="decoder broke"):
        list(background(broken(), 2))


# ------------------------------------------------------------------------------------ the stage


def test_identity_anonymizer_equals_raw_and_roundtrip(world, runs):
    """A trained-fA path holding the identity gives the raw path's features bit for bit, and the
    anomaly stage's loader reads the feature set with labels and intervals from the dataset."""
    assert run(config(world, runs, "run.name=raw")) == 0
    assert run(config(world, runs, "run.name=ident", "anonymizer.method=unet", f"anonymizer.checkpoint={IDENTITY_CKPT}")) == 0
    raw_dir, ident_dir = runs / "extraction" / "raw", runs / "extraction" / "ident"
    raw, ident = features(raw_dir), features(ident_dir)
    assert raw.keys() == ident.keys() and len(raw) == 8
    for name in raw:
        np.testing.assert_array_equal(raw[name], ident[name])
    assert read_manifest(ident_dir).anonymizer["method"] == "unet"

    info = read_manifest(raw_dir)
    assert (info.backbone, info.feature_dim, info.clip_len, info.skip, info.resolution, info.decoder) == (
        "i3d_r50_tiny", 256, 8, 2, 32, "pyav")  # the synthetic default: stage 1's clip layout
    assert info.anonymizer == {"method": "raw"} and len(info.utility["checkpoint_sha"]) == 16
    adapter = get_anomaly_dataset("ucf_crime", world / "UCF_Crime")
    items = {it.name: (split, it) for split in ("train", "test") for it in adapter.items(split)}
    assert set(info.videos) == set(items)
    for name, entry in info.videos.items():
        split, item = items[name]
        assert (entry.split, entry.label, entry.class_name) == (split, item.label, item.class_name)
        assert entry.num_clips == entry.num_frames // 16 == raw[name].shape[0]
        assert entry.intervals == ([] if item.intervals is None else [list(p) for p in item.intervals])
        assert raw[name].dtype == np.float32 and raw[name].shape[1] == 256
    for split in ("train", "test"):
        listed = (raw_dir / f"{split}.list").read_text().split()
        assert sorted(Path(p).stem for p in listed) == sorted(n for n, (s, _) in items.items() if s == split)
        assert all(Path(p).is_file() for p in listed)

    data = load_anomaly_data(raw_dir, feature_dim=None, dataset="ucf_crime", validation_fraction=0.0, num_segments=8)
    assert data.feature_dim == 256 and data.clip_span == 16
    assert data.counts() == {"train_normal": 2, "train_abnormal": 2, "validation": 0, "test_normal": 2, "test_abnormal": 2}
    for video in data.test:
        np.testing.assert_array_equal(data.eval_features(video)[:, 0], raw[video.name])
    assert data.train.normal.shape == (2, 1, 8, 257)
    summary = results(raw_dir)
    assert (summary["videos"], summary["extracted"], summary["failed"]) == (8, 8, 0)
    # The embedded default stays eager (extract.compile auto: the tiny fT is far below the compile threshold).
    assert (summary["model_path"], summary["compile_seconds"]) == ("eager fp32", None)
    assert summary["config_hash"] == config_hash(config(world, runs, "run.name=raw"))


def test_resume_skips_finished_videos(world, runs, monkeypatch):
    import feature_extraction.pipeline as pipeline

    # A crash after every video was written but before the manifest: the journal carries the run.
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(pipeline, "write_manifest", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config(world, runs))
    monkeypatch.undo()
    out = runs / "extraction" / "default"
    assert not (out / "manifest.json").exists() and list((out / JOURNAL_DIR).glob("*.jsonl"))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    assert len(stamps) == 8

    assert run(config(world, runs)) == 0
    assert (results(out)["extracted"], results(out)["resumed"]) == (0, 8)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == stamps
    assert not list((out / JOURNAL_DIR).glob("*.jsonl"))  # folded into the manifest

    # One feature file lost: only that video is extracted again.
    lost = sorted(stamps)[3]
    (out / lost).unlink()
    assert run(config(world, runs)) == 0
    assert (results(out)["extracted"], results(out)["resumed"]) == (1, 7)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy") if p.name != lost} == {
        k: v for k, v in stamps.items() if k != lost}

    # Another producer (resolution) reuses nothing.
    assert run(config(world, runs, "clip.resolution=48")) == 0
    assert (results(out)["extracted"], results(out)["resumed"]) == (8, 0)
    assert read_manifest(out).resolution == 48


def test_corrupt_video_reported_rest_extracted(world, runs, tmp_path, capsys):
    root = tmp_path / "UCF_Crime"
    shutil.copytree(world / "UCF_Crime", root)
    victims = sorted(root.glob("Videos/*/*.mp4"))
    victims[0].write_bytes(b"\x00not a video" * 100)
    data = victims[1].read_bytes()
    victims[1].write_bytes(data[: len(data) // 2])  # truncated
    assert main(overrides(world, runs, ucf_root=root)) == 1
    out = runs / "extraction" / "default"
    failures = json.loads((out / "failures.json").read_text())
    assert sorted(f["name"] for f in failures) == sorted(v.stem for v in victims[:2])
    assert all(f["error"] for f in failures)
    info = read_manifest(out)
    assert len(info.videos) == 6 and not set(info.videos) & {v.stem for v in victims[:2]}
    assert not (out / "results.json").exists()  # an incomplete run is not marked done
    printed = capsys.readouterr().out
    assert "2 video(s) failed" in printed and victims[0].stem in printed

    # Once the files are repaired, a rerun extracts just those two.
    shutil.copy(world / "UCF_Crime" / victims[0].relative_to(root), victims[0])
    shutil.copy(world / "UCF_Crime" / victims[1].relative_to(root), victims[1])
    assert main(overrides(world, runs, ucf_root=root)) == 0
    assert (results(out)["extracted"], results(out)["resumed"], results(out)["failed"]) == (2, 6, 0)
    assert json.loads((out / "failures.json").read_text()) == []


def test_cli_end_to_end_with_workers_and_box_baseline(world, runs):
    paths = runs.parent / "paths.yaml"
    paths.write_text(f"ucf_crime: {world / 'UCF_Crime'}\nruns: {runs}\n")
    env = dict(os.environ, TEDSPAD_PATHS=str(paths), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "feature_extraction", "--config", str(DEFAULT.parent / "blur.yaml"), *FAST,
           "run.num_workers=2"]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = runs / "extraction" / "blur"
    summary = results(out)
    assert (summary["videos"], summary["extracted"], summary["failed"], summary["decoder"]) == (8, 8, 0, "pyav")
    assert summary["clips"] == sum(e.num_clips for e in read_manifest(out).videos.values())
    assert read_manifest(out).anonymizer == {"method": "blur", "blur_kernel": 13, "blur_sigma": 10.0, "boxes": "gt"}
    assert "extraction done" in done.stdout


def test_dali_on_cpu_refuses_h264_before_work(world, runs, capsys):
    pytest.importorskip("nvidia.dali", reason="nvidia.dali is not importable (dali extra)")
    assert main(overrides(world, runs, "extract.decoder=dali", "run.device=cpu")) == 2
    assert "does not decode h264" in capsys.readouterr().err
    assert not list((runs / "extraction" / "default").glob("*.npy"))


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(world, runs):
    """Two CPU ranks (gloo) shard the videos; the merged feature set equals a one-process run."""
    paths = runs.parent / "paths.yaml"
    paths.write_text(f"ucf_crime: {world / 'UCF_Crime'}\nruns: {runs}\n")
    env = dict(os.environ, TEDSPAD_PATHS=str(paths), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "feature_extraction",
           *FAST, "run.name=ddp"]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run(config(world, runs, "run.name=single")) == 0
    ddp, single = features(runs / "extraction" / "ddp"), features(runs / "extraction" / "single")
    assert ddp.keys() == single.keys() and len(ddp) == 8
    for name in ddp:
        np.testing.assert_allclose(ddp[name], single[name], rtol=1e-4, atol=1e-5)  # batches differ
    assert read_manifest(runs / "extraction" / "ddp").videos == read_manifest(runs / "extraction" / "single").videos
    assert results(runs / "extraction" / "ddp")["world_size"] == 2


def test_missing_checkpoint_stops_before_any_output(world, tmp_path, capsys):
    runs = tmp_path / "empty_runs"
    assert main(overrides(world, runs, "anonymizer.method=unet", "anonymizer.checkpoint=anonymization/none/best.pt")) == 2
    err = capsys.readouterr().err
    assert "utility.checkpoint" in err and "anonymization/utility/best.pt does not exist" in err
    assert not runs.exists()
    make_checkpoints(runs)
    assert main(overrides(world, runs, "anonymizer.method=unet", "anonymizer.checkpoint=anonymization/none/best.pt")) == 2
    assert "anonymizer.checkpoint" in capsys.readouterr().err and not (runs / "extraction").exists()
