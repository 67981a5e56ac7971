"""LUSS-AE stage (issue 17): one tiny epoch on the synthetic Ped2 analogue through aux_code.fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly_detection.luss.__main__ import main
from anomaly_detection.luss.config import LussConfig
from anomaly_detection.luss.train import split_training
from aux_code.stages import schema_for_config_file
from aux_code.synthetic.unsupervised import generate


def test_config_folder_is_registered():
    assert schema_for_config_file("configs/synthetic/luss/avenue.yaml") is LussConfig
    assert schema_for_config_file("configs/luss/ped2.yaml") is LussConfig


def test_split_training_holds_out_whole_videos():
    videos = list(range(10))
    train, val = split_training(videos, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == videos
    assert split_training(videos[:3], 0.1, seed=0)[1] != []  # at least one when fraction > 0
    assert split_training(videos, 0.0, seed=0) == (videos, [])


def test_stage_end_to_end(tmp_path, capsys):
    generate(tmp_path / "data", seed=1, size="tiny", datasets=("ped2",))
    args = ["--config", "configs/synthetic/luss/ped2.yaml", f"paths.ped2={tmp_path / 'data' / 'UCSDped2'}",
            f"paths.runs={tmp_path / 'runs'}", "optim.epochs=1", "optim.steps_per_epoch=2", "clip.frame_size=[16,32]",
            "eval.every=1", "eval.validation_windows=8"]
    assert main(args) == 0
    run_dir = tmp_path / "runs" / "luss" / "ped2"
    r = json.loads((run_dir / "results.json").read_text())
    t = r["test"]
    assert r["selection"]["metric"] == "val_loss" and r["selection"]["mode"] == "min"
    assert 0 <= t["frame_auc_micro"] <= 1 and 0 <= t["frame_auc_macro"] <= 1
    assert set(t["per_task"]) == {"vcr", "ffp", "prp"} and t["alphas"] == [0.1, 0.8, 1.0]
    assert t["frames"] == 3 * 40 and len(t["plots"]) == 3
    assert all((run_dir / p).is_file() for p in t["plots"])
    scores = np.load(run_dir / "test_scores.npz")
    assert scores["Test001/rescaled_final"].shape == (40,) and scores["Test001/labels"].shape == (40,)
    # a rerun resumes the finished run and gives the same numbers
    assert main(args) == 0
    assert json.loads((run_dir / "results.json").read_text())["test"]["frame_auc_micro"] == t["frame_auc_micro"]
    # a missing dataset root is one message and exit status 2 (checked before training)
    with pytest.raises(SystemExit) as e:
        main(args + [f"paths.ped2={tmp_path / 'nowhere'}"])
    assert e.value.code == 2 and "paths.ped2" in capsys.readouterr().err


def test_table_driver_reuses_a_run_only_of_the_same_settings_and_data(tmp_path):
    from scripts.luss_table1 import run_luss

    for seed in (1, 2):
        generate(tmp_path / f"data{seed}", seed=seed, size="tiny", datasets=("ped2",))
    common = [f"paths.runs={tmp_path / 'runs'}", "optim.epochs=1", "optim.steps_per_epoch=1", "clip.frame_size=[16,32]",
              "eval.validation_windows=4", "eval.plot_videos=0"]
    config = Path("configs/synthetic/luss/ped2.yaml")
    first = run_luss(config, "r", [f"paths.ped2={tmp_path / 'data1' / 'UCSDped2'}", *common])
    again = run_luss(config, "r", [f"paths.ped2={tmp_path / 'data1' / 'UCSDped2'}", *common])
    assert again == first
    with pytest.raises(SystemExit, match="other ped2 label files"):  # same name, other world
        run_luss(config, "r", [f"paths.ped2={tmp_path / 'data2' / 'UCSDped2'}", *common])
    moved = tmp_path / "moved" / "UCSDped2"  # the same world in another folder is the same data
    shutil.copytree(tmp_path / "data1" / "UCSDped2", moved)
    assert run_luss(config, "r", [f"paths.ped2={moved}", *common]) == first
    with pytest.raises(SystemExit, match="other settings"):  # same name, another number-changing key
        run_luss(config, "r", [f"paths.ped2={tmp_path / 'data1' / 'UCSDped2'}", *common, "optim.lr=0.5"])


def test_a_run_resumed_after_its_label_files_changed_is_refused(tmp_path, capsys):
    """fit's resume check sees the unsupervised sets' label files: the epochs so far were trained with
    the old ones (validation on held-out normal videos), so finishing on the new would mix two worlds."""
    generate(tmp_path / "data", seed=1, size="tiny", datasets=("ped2",))
    root = tmp_path / "data" / "UCSDped2"
    args = ["--config", "configs/synthetic/luss/ped2.yaml", f"paths.ped2={root}", f"paths.runs={tmp_path / 'runs'}",
            "optim.steps_per_epoch=1", "clip.frame_size=[16,32]", "eval.validation_windows=4", "eval.plot_videos=0"]
    assert main([*args, "optim.epochs=1"]) == 0
    m_file = root / "Test" / "UCSDped2.m"
    m_file.write_text(m_file.read_text().replace("[", "[ "))  # the same ranges, another file
    capsys.readouterr()
    assert main([*args, "optim.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "dataset files changed since the run started" in err and "paths.ped2/Test/UCSDped2.m (changed)" in err


def test_table1_interval():
    from scripts.luss_table1 import interval

    m, lo, hi = interval([80.0, 82.0, 84.0])  # sd 2, n 3: half-width 4.303 * 2 / sqrt(3)
    assert m == 82.0 and hi - m == pytest.approx(4.303 * 2 / 3**0.5) and m - lo == pytest.approx(hi - m)
    assert interval([70.0]) == (70.0, 70.0, 70.0)


def test_table_drivers_take_overrides_after_list_options():
    from scripts.luss_table1 import split_overrides

    options, overrides = split_overrides(["--seeds", "0", "1", "optim.epochs=3", "--datasets", "ped2", "eval.alphas=[1,0,0]"])
    assert options == ["--seeds", "0", "1", "--datasets", "ped2"]
    assert overrides == ["optim.epochs=3", "eval.alphas=[1,0,0]"]
