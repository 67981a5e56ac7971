"""Stage 4 (anomaly detection) end to end on a tiny separable fake feature set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_detection.__main__ import main
from anomaly_detection.config import AnomalyConfig, headline_metric
from anomaly_detection.data import AnomalyDataError, epoch_batches, load_anomaly_data, stratified_split
from anomaly_detection.evaluate import frame_arrays
from anomaly_detection.fake_features import make_fake_feature_set
from anomaly_detection.train import run
from aux_code.checkpoint import load_checkpoint
from aux_code.config import PROJECT_ROOT, ConfigError, describe, load_config
from aux_code.features import FeatureSetError, read_manifest, save_features, write_manifest
from aux_code.metrics import frame_auc, robust_rescale
from aux_code.runtime import read_metrics
from aux_code.segments import LengthMismatchError

CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "anomaly" / "default.yaml"
FEATURES = "extraction/fake"
# Small and quick: the tiny MGFN learns the fake anomaly direction in a few epochs.
FAST = [f"data.features={FEATURES}", "optim.batch_per_class=4", "eval.every=1", "eval.plot_videos=3", "run.log_every=2"]


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """A paths file whose runs root is in tmp_path, and a fake feature set under it."""
    paths = tmp_path / "paths.yaml"
    paths.write_text("runs: runs\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(paths))
    feature_dir = tmp_path / "runs" / FEATURES
    make_fake_feature_set(feature_dir)
    return tmp_path


def config(*overrides: str) -> AnomalyConfig:
    return load_config(AnomalyConfig, CONFIG, [*FAST, *overrides])


def child_env(world: Path) -> dict:
    env = dict(os.environ, TEDSPAD_PATHS=str(world / "paths.yaml"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_every_key_documented_and_metric_choice():
    lines = describe(AnomalyConfig)
    undocumented = [line for line in lines if line.rstrip().endswith("#")]
    assert not undocumented, undocumented
    assert headline_metric(None, "xd_violence") == "ap"
    assert headline_metric(None, "ucf_crime") == headline_metric(None, "shanghaitech") == "auc"
    assert headline_metric("ap", "ucf_crime") == "ap"
    with pytest.raises(ConfigError, match="validation_fraction = 1.0 must be in"):
        load_config(AnomalyConfig, CONFIG, ["data.validation_fraction=1.0"], check_paths=False)


def test_cli_end_to_end_outputs_and_rerun(world):
    cmd = [sys.executable, "-m", "anomaly_detection", "--config", str(CONFIG), *FAST, "optim.epochs=6"]
    first = subprocess.run(cmd, cwd=PROJECT_ROOT, env=child_env(world), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = world / "runs" / "anomaly" / "default"

    results = json.loads((run_dir / "results.json").read_text())
    frame = results["test"]["frame"]
    assert frame["roc_auc"] > 0.9, frame
    assert set(frame) == {"roc_auc", "average_precision", "pr_auc_trapezoid"}
    assert results["test"]["headline"] == {"metric": "auc", "value": frame["roc_auc"]}
    assert 1 <= results["selection"]["epoch"] <= 6 and results["selection"]["metric"] == "val_video_auc"
    assert results["counts"] == {"train_normal": 10, "train_abnormal": 10, "validation": 4, "test_normal": 6, "test_abnormal": 6}
    assert 0.0 <= results["test"]["online"]["sas_video_f1"] <= 1.0
    assert len(results["config_hash"]) == 12

    pngs = sorted((run_dir / "plots").glob("*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert any("Anomaly" in p.name for p in pngs) and any("Normal" in p.name for p in pngs)

    scores = np.load(run_dir / "test_scores.npz", allow_pickle=False)
    info = read_manifest(world / "runs" / FEATURES)
    assert list(scores["names"]) == sorted(n for n, v in info.videos.items() if v.split == "test")
    assert scores["offsets"][-1] == scores["clip_scores"].size == sum(info.videos[n].num_clips for n in scores["names"])
    assert list(scores["labels"]) == [info.videos[n].label for n in scores["names"]]
    # The frame labels and clip scores reproduce the reported test AUC (what the reproduce script's CIs resample).
    span, off, foff = int(scores["clip_span"]), scores["offsets"], scores["frame_offsets"]
    assert bool(scores["robust_rescale"]) is False and foff[-1] == scores["frame_labels"].size == span * off[-1]
    frames = np.concatenate([np.repeat(scores["clip_scores"][off[i]:off[i + 1]], span) for i in range(len(off) - 1)])
    assert frame_auc(scores["frame_labels"], frames) == pytest.approx(frame["roc_auc"], abs=1e-12)

    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["phase"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    assert len([r for r in records if r["phase"] == "epoch" and "val_video_auc" in r]) == 6

    # The same command again: resumes after the last epoch, trains nothing, re-reports.
    again = subprocess.run(cmd, cwd=PROJECT_ROOT, env=child_env(world), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout and "after epoch 6/6" in again.stdout
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["phase"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "results.json").read_text())["test"] == results["test"]


def test_resume_continues_exactly(world):
    """2 epochs then 2 more (same command, more epochs) equals 4 straight epochs."""
    straight = run(config("optim.epochs=4", "run.name=straight"))
    run(config("optim.epochs=2", "run.name=split"))
    resumed = run(config("optim.epochs=4", "run.name=split"))
    runs = world / "runs" / "anomaly"
    a = load_checkpoint(runs / "straight" / "last.pt")["models"]["mgfn"]["state_dict"]
    b = load_checkpoint(runs / "split" / "last.pt")["models"]["mgfn"]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    epochs = [r["step"] for r in read_metrics(runs / "split" / "metrics.jsonl") if r["phase"] == "epoch"]
    assert epochs == [1, 2, 3, 4]  # continued, not restarted
    assert resumed["test"]["frame"] == straight["test"]["frame"]


def test_ground_truth_follows_clip_indexing(world):
    data = load_anomaly_data(world / "runs" / FEATURES, feature_dim=16, validation_fraction=0.0)
    assert data.clip_span == 32
    scores = {v.name: np.zeros(v.num_clips) for v in data.test}
    labels, frames = frame_arrays(data.test, scores, data.clip_span)
    assert labels.size == frames.size == sum(v.num_clips * 32 for v in data.test)
    # The fake intervals lie on clip boundaries inside the covered frames: every annotated frame counts.
    assert labels.sum() == sum(e - s for v in data.test for s, e in v.intervals)
    offset = 0
    for v in data.test:  # each video's labels sit at its own offset, in order
        seg = labels[offset : offset + v.num_clips * 32]
        for s, e in v.intervals:
            assert seg[s:e].all() and seg.sum() == e - s
        offset += v.num_clips * 32
    victim = data.test[3]
    scores[victim.name] = np.zeros(victim.num_clips - 1)
    with pytest.raises(LengthMismatchError, match=victim.name):
        frame_arrays(data.test, scores, data.clip_span)


def _drop_intervals(feature_dir: Path) -> None:
    info = read_manifest(feature_dir)
    victim = next(v for v in sorted(info.videos.values(), key=lambda v: v.name) if v.split == "test" and v.label == 1)
    victim.intervals = []
    write_manifest(feature_dir, info)


def _nan_features(feature_dir: Path) -> None:
    info = read_manifest(feature_dir)
    victim = info.videos["train_Normal_Videos_011_x264"]
    feats = np.load(feature_dir / victim.file)
    feats[1, 2] = np.nan
    save_features(feature_dir / victim.file, feats)


@pytest.mark.parametrize(
    "case, overrides, error, pattern",
    [
        ("dim", ["model.feature_dim=32"], AnomalyDataError, r"model.feature_dim = 32 \(config\) but .*manifest.json has feature_dim = 16"),
        ("no_abnormal", [], AnomalyDataError, r"no abnormal training videos"),
        ("no_normal", [], AnomalyDataError, r"no normal training videos"),
        ("no_annotation", [], AnomalyDataError, r"test video test_Anomaly_000_x264 is anomalous .* no annotated interval"),
        ("nan", [], FeatureSetError, r"video train_Normal_Videos_011_x264: features contain NaN"),
        ("dataset", ["data.expected_dataset=xd_violence"], AnomalyDataError, r"data.expected_dataset = 'xd_violence' \(config\) but .* 'ucf_crime'"),
        # Weakly labelled training videos have no intervals: frame-level validation cannot work on them.
        ("val_frames", ["eval.validation_metric=frame_auc"], AnomalyDataError, r"validation video train_Anomaly_\d+_x264 is anomalous"),
    ],
)
def test_bad_input_stops_before_training(world, case, overrides, error, pattern):
    feature_dir = world / "runs" / FEATURES
    if case in ("no_abnormal", "no_normal"):
        make_fake_feature_set(feature_dir / case, train=(6, 0) if case == "no_abnormal" else (0, 6))
        overrides = [f"data.features={FEATURES}/{case}"]
    elif case == "no_annotation":
        _drop_intervals(feature_dir)
    elif case == "nan":
        _nan_features(feature_dir)
    with pytest.raises(error, match=pattern):
        run(config("optim.epochs=1", *overrides))
    assert not (world / "runs" / "anomaly").exists()  # nothing started: no run dir, no checkpoint


def test_cli_reports_input_error(world, capsys):
    assert main(["--config", str(CONFIG), *FAST, "model.feature_dim=32"]) == 2
    err = capsys.readouterr().err
    assert "error: model.feature_dim = 32 (config)" in err and "feature_dim = 16" in err


def test_labels_come_from_manifest_not_list_order(world):
    feature_dir = world / "runs" / FEATURES
    for split in ("train", "test"):
        lines = (feature_dir / f"{split}.list").read_text().splitlines()
        # Reversed order and normal videos listed first: a "first N are abnormal" reader would mislabel.
        (feature_dir / f"{split}.list").write_text("\n".join(sorted(lines, key=lambda s: "Normal" not in s)) + "\n")
    info = read_manifest(feature_dir)
    data = load_anomaly_data(feature_dir, feature_dim=16, validation_fraction=0.2, seed=3)
    assert all(info.videos[n].label == 0 for n in data.train.normal_names)
    assert all(info.videos[n].label == 1 for n in data.train.abnormal_names)
    assert all(v.label == info.videos[v.name].label for v in data.validation + data.test)
    assert {v.label for v in data.validation} == {0, 1}
    fit = set(data.train.normal_names) | set(data.train.abnormal_names)
    assert fit.isdisjoint(v.name for v in data.validation)
    assert fit | {v.name for v in data.validation} == {n for n, v in info.videos.items() if v.split == "train"}


def test_split_and_epoch_batches():
    names = [f"v{i}" for i in range(20)]
    labels = [i % 2 for i in range(20)]
    val = stratified_split(names, labels, 0.2, seed=1)
    assert val == stratified_split(names, labels, 0.2, seed=1)
    assert sorted(labels[names.index(n)] for n in val) == [0, 0, 1, 1]
    assert stratified_split(names, labels, 0.0, seed=1) == []

    e0 = epoch_batches(10, 7, batch_per_class=3, epoch=0, seed=0)
    e1 = epoch_batches(10, 7, batch_per_class=3, epoch=1, seed=0)
    assert len(e0) == 3 and all(len(n) == len(a) == 3 for n, a in e0)
    normal0 = np.concatenate([n for n, _ in e0])
    assert len(set(normal0.tolist())) == 9  # the larger class: each video once, one left over
    abnormal0 = np.concatenate([a for _, a in e0])
    assert set(abnormal0.tolist()) == set(range(7))  # the smaller class is repeated to keep up
    assert not np.array_equal(normal0, np.concatenate([n for n, _ in e1]))  # reshuffled every epoch
    assert [x.tolist() for x in e0[0]] == [x.tolist() for x in epoch_batches(10, 7, batch_per_class=3, epoch=0, seed=0)[0]]

    shards = [epoch_batches(12, 12, batch_per_class=2, epoch=5, seed=0, rank=r, world_size=2) for r in (0, 1)]
    seen = [set(np.concatenate([n for n, _ in s]).tolist()) for s in shards]
    assert len(shards[0]) == len(shards[1]) == 3 and seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(12))


def test_ten_crop_no_validation_robust_rescale(world):
    feature_dir = world / "runs" / "extraction" / "crops"
    make_fake_feature_set(feature_dir, crops=3, train=(6, 6), test=(3, 3))
    results = run(
        config(
            "data.features=extraction/crops", "optim.epochs=4", "data.validation_fraction=0",
            "eval.robust_rescale=true", "data.cache_eval=false", "run.name=crops",
        )
    )
    assert results["crops"] == 3 and results["counts"]["validation"] == 0
    assert results["selection"] == {
        "metric": None, "mode": None, "value": None, "epoch": 4, "checkpoint": "last.pt", "rule": "last epoch (no validation split)",
    }
    assert results["test"]["robust_rescale"] is True and results["test"]["frame"]["roc_auc"] > 0.8
    # test_scores.npz says the clip scores were rescaled per video; rescaled, they give the reported AUC.
    z = np.load(world / "runs" / "anomaly" / "crops" / "test_scores.npz", allow_pickle=False)
    assert bool(z["robust_rescale"]) is True
    off, span = z["offsets"], int(z["clip_span"])
    frames = np.concatenate([np.repeat(robust_rescale(z["clip_scores"][off[i]:off[i + 1]]), span) for i in range(len(off) - 1)])
    assert frame_auc(z["frame_labels"], frames) == pytest.approx(results["test"]["frame"]["roc_auc"], abs=1e-12)
    # A feature file whose crop count disagrees with the manifest is named.
    info = read_manifest(feature_dir)
    victim = info.videos[sorted(info.videos)[0]]
    save_features(feature_dir / victim.file, np.zeros((victim.num_clips, 2, 16)))
    with pytest.raises(AnomalyDataError, match=rf"video {victim.name}: features shaped .* expected \(S, 3, 16\)"):
        load_anomaly_data(feature_dir, feature_dim=16)


def test_frame_level_validation(world):
    make_fake_feature_set(world / "runs" / "extraction" / "annotated", annotate_train=True, train=(8, 8), test=(3, 3))
    results = run(config("data.features=extraction/annotated", "optim.epochs=2", "eval.validation_metric=frame_auc", "run.name=fv"))
    selection = results["selection"]
    assert selection["metric"] == "val_frame_auc" and 0.5 < selection["value"] <= 1.0 and selection["checkpoint"] == "best.pt"
    val = [r for r in read_metrics(world / "runs" / "anomaly" / "fv" / "metrics.jsonl") if r["phase"] == "epoch"]
    assert [r["step"] for r in val] == [1, 2] and max(r["val_frame_auc"] for r in val) == selection["value"]


def test_torchrun_two_processes(world):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "anomaly_detection", "--config", str(CONFIG),
        *FAST, "optim.epochs=3", "run.name=ddp", "run.device=cpu",
    ]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=child_env(world), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = world / "runs" / "anomaly" / "ddp"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["test"]["frame"]["roc_auc"] > 0.8
    # Rank 0 alone logs; the gathered test scores cover every test video once.
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["phase"] == "epoch"] == [1, 2, 3]
    assert results["test"]["num_frames"] == sum(
        v.num_clips * 32 for v in read_manifest(world / "runs" / FEATURES).videos.values() if v.split == "test"
    )


def test_bf16_training_learns_like_fp32(world):
    # precision=bf16 autocasts the MGFN forward (training and scoring); the loss stays fp32,
    # so the same run must still learn the fake anomaly direction.
    fp32 = run(config("optim.epochs=6", "run.name=fp32"))
    bf16 = run(config("optim.epochs=6", "run.name=bf16", "precision=bf16"))
    assert bf16["test"]["frame"]["roc_auc"] > 0.8
    assert abs(bf16["test"]["frame"]["roc_auc"] - fp32["test"]["frame"]["roc_auc"]) < 0.05
    with pytest.raises(ConfigError, match="precision = 'fp16' needs a CUDA device"):
        config("precision=fp16", "run.device=cpu")


def test_a_diverging_lr_stops_with_the_step_not_inside_bce(world):
    # lr 1e6 drives MGFN's scores to NaN within a few steps; BCE would raise "all elements of input
    # should be between 0 and 1" instead of naming the step and the terms.
    from aux_code.training import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"anomaly \((MGFN forward )?step\): non-finite loss at step \d+"):
        run(config("optim.lr=1e6", "optim.epochs=20", "run.name=diverge"))
