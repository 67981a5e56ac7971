"""scripts/stage1_diagnosis.py: the per-epoch table and grid figure of stage-1 runs (nothing trained)."""

from __future__ import annotations

import json

import numpy as np

from scripts.stage1_diagnosis import main


def _run(root, name, *, selected, probe=True):
    d = root / "anonymization" / name
    (d / "grids").mkdir(parents=True)
    records = [{"phase": "train", "step": 1, "loss": 1.0}]
    for epoch, (top1, acc, cmap) in enumerate([(0.7, 0.3, 0.72), (0.8, 0.05, 0.55)], 1):
        r = {"phase": "epoch", "step": epoch, "val_action_top1": top1, "val_budget_acc": acc}
        if probe:
            r.update(val_attacker_cmap=cmap, val_attacker_chance=0.384, val_output_ssim=0.9 - 0.1 * epoch, val_output_psnr=25.0 - epoch)
        records.append(r)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "results.json").write_text(json.dumps({"selection": {"epoch": selected}}))
    import matplotlib.pyplot as plt

    plt.imsave(d / "grids" / f"epoch_{selected:03d}.png", np.random.default_rng(0).random((20, 40, 3)))
    return d


def test_the_diagnosis_lists_every_validation_epoch_and_marks_the_selected_one(tmp_path, capsys):
    _run(tmp_path, "probe_run", selected=2)
    _run(tmp_path, "paper_run", selected=1, probe=False)
    assert main(["--runs", str(tmp_path), "--out", str(tmp_path / "out"), "probe_run", "paper_run"]) == 0
    text = (tmp_path / "out" / "diagnosis.md").read_text()
    probe, paper = text.split("#### paper_run")
    assert "selected epoch 2; attacker chance 38.4" in probe
    assert "| 1 | 70.0 | 30.0 | 72.0 | 0.800 | 24.00 |" in probe
    assert "| 2 (selected) | 80.0 | 5.0 | 55.0 | 0.700 | 23.00 |" in probe
    assert "| 1 (selected) | 70.0 | 30.0 |  |  |  |" in paper and "chance" not in paper
    assert (tmp_path / "out" / "diagnosis.png").stat().st_size > 0


def test_an_unfinished_run_is_named(tmp_path, capsys):
    d = _run(tmp_path, "half", selected=1)
    (d / "results.json").unlink()
    assert main(["--runs", str(tmp_path), "--out", str(tmp_path / "out"), "half"]) == 1
    assert "half: no results.json" in capsys.readouterr().err
    assert not (tmp_path / "out" / "diagnosis.md").exists()
