"""The DP autoencoder as a task on the one training loop (anonymization_training.dpae; issue 16)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("aux_code.fit", reason="aux_code.fit (the one training loop) is not in this checkout")

from anonymization_training.dpae import DPAEConfig, DPAETask, load_frames, pick_videos, split_indices  # noqa: E402
from aux_code.fit import fit  # noqa: E402
from aux_code.models.stored import load_stored_model  # noqa: E402
from aux_code.precision import Precision  # noqa: E402
from aux_code.runtime import DistInfo, MetricLogger  # noqa: E402
from aux_code.training import RunContext  # noqa: E402
from aux_code.video import write_video  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
]


@dataclass
class _Run:
    name: str = "dpae_test"
    seed: int = 0
    deterministic: bool = False


@dataclass
class _Cfg:
    run: _Run = field(default_factory=_Run)
    dpae: DPAEConfig = field(default_factory=DPAEConfig)


def _frames(n: int = 24, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.full((n, size, size, 3), 40, np.uint8)
    for i in range(n):  # a bright square moving over a dark background
        r, c = rng.integers(0, size - 6, size=2)
        out[i, r : r + 6, c : c + 6] = 220
    return out


def _ctx(run_dir: Path) -> RunContext:
    dist = DistInfo.single(torch.device("cpu"))
    return RunContext(run_dir=run_dir, dist=dist, logger=MetricLogger(run_dir, tensorboard=False), resume=True)


def test_dp_adagrad_task_trains_selects_and_stores_both_halves(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = _Cfg(dpae=DPAEConfig(model="dpae_tiny", optimizer="adagrad", lr=0.05, noise_multiplier=0.5,
                               max_grad_norm=1.0, batch_size=8, epochs=2))
    task = DPAETask(cfg.dpae, _frames())
    assert (len(task.train_set), len(task.val_set), len(task.test_set)) == (16, 4, 4)
    ctx = _ctx(tmp_path / "run")
    results = fit(task, ctx, cfg=cfg, stage="anonymization", precision=Precision("fp32", torch.device("cpu")))
    ctx.finish()
    assert results["task"] == "dpae" and results["selection"]["metric"] == "val_mse"
    privacy = results["privacy"]
    assert privacy["private"] and privacy["optimizer"] == "dp-adagrad" and privacy["steps"] == 4
    assert privacy["sample_rate"] == 0.5 and privacy["epsilon"] > 0
    assert privacy["selected_epoch_epsilon"] <= privacy["epsilon"]
    assert set(results["test"]) == {"mse", "ssim", "psnr"} and results["test"]["psnr"] > 0
    assert "epsilon" in results["selected"] and "ssim" in results["selected"]
    json.loads((ctx.run_dir / "results.json").read_text())
    # The camera side loads the encoder alone from the selected checkpoint.
    enc, spec = load_stored_model(ctx.run_dir / "best.pt", "encoder")
    assert spec == {"name": "dpae_tiny"}
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(enc(x), task.encoder.eval()(x))
    # Resuming a finished run keeps the accountant's history (no step is counted twice).
    again = DPAETask(cfg.dpae, _frames())
    fit(again, _ctx(tmp_path / "run"), cfg=cfg, stage="anonymization", precision=Precision("fp32", torch.device("cpu")))
    assert again.dp.steps_taken() == 4 and again.dp.epsilon() == pytest.approx(task.dp.epsilon())


def test_no_dp_adam_path_and_early_stopping_rule() -> None:
    cfg = DPAEConfig(model="dpae_tiny", private=False, lr=1e-3, batch_size=8, epochs=1, patience=2)
    task = DPAETask(cfg, _frames())
    assert not task.dp.private and task.dp.optimizer.__class__ is torch.optim.Adam
    for losses, stop in (([3, 2, 1], False), ([3, 2, 2.5, 2.1], True), ([3, 2, 2.5, 1.9], False), ([1], False)):
        task.val_history = [float(v) for v in losses]
        assert task.should_stop() is stop, losses
    with pytest.raises(ValueError, match="DP training runs in fp32; precision is 'bf16'"):
        DPAETask(DPAEConfig(model="dpae_tiny"), _frames(), precision_name="bf16")
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number > 0, got 0.0"):
        DPAETask(DPAEConfig(model="dpae_tiny", noise_multiplier=0.0), _frames())


def test_frames_from_videos_one_per_class_and_the_split(tmp_path) -> None:
    paths = []
    for name in ("Fighting", "Normal"):
        for j in range(2):
            p = tmp_path / f"{name}{j}.mp4"
            write_video(p, list(_frames(n=6, size=32)), fps=10)
            paths.append(SimpleNamespace(path=p, class_name=name))
    chosen = pick_videos(paths, per_class=1, seed=0)
    assert sorted(v.class_name for v in chosen) == ["Fighting", "Normal"]
    frames = load_frames([v.path for v in chosen], size=(16, 24), stride=2)
    assert frames.shape == (6, 16, 24, 3) and frames.dtype == np.uint8
    tr, va, te = split_indices(100, (0.7, 0.15, 0.15), seed=0)
    assert (len(tr), len(va), len(te)) == (70, 15, 15)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))


def test_quality_rule_stops_when_neither_ssim_nor_psnr_improves() -> None:
    cfg = DPAEConfig(model="dpae_tiny", private=False, lr=1e-3, batch_size=8, epochs=1, patience=10, quality_patience=2)
    task = DPAETask(cfg, _frames())
    cases = (
        ([(0.5, 20.0), (0.6, 21.0), (0.55, 20.5), (0.58, 20.9)], True),   # two validations below both bests
        ([(0.5, 20.0), (0.6, 21.0), (0.55, 21.5), (0.58, 20.9)], False),  # PSNR rose in one of them
        ([(0.5, 20.0), (0.6, 21.0), (0.61, 20.0), (0.58, 20.9)], False),  # SSIM rose in one of them
        ([(0.5, 20.0), (0.6, 21.0)], False),                               # too few validations
        ([(0.5, float("inf")), (0.6, 21.0), (0.55, 20.5), (0.58, 20.9)], True),  # an infinite PSNR is no best
    )
    for quality, stop in cases:
        task.val_history = [1.0 - 0.1 * i for i in range(len(quality))]  # the MSE rule alone never stops here
        task.quality_history = list(quality)
        assert task.should_stop() is stop, quality
    task.cfg = DPAEConfig(model="dpae_tiny", private=False, patience=10, quality_patience=None)
    task.quality_history = list(cases[0][0])
    assert task.should_stop() is False  # the rule is off


def test_run_seed_moves_the_weights_not_the_split() -> None:
    base = dict(model="dpae_tiny", private=False, lr=1e-3, batch_size=8, epochs=1)
    a = DPAETask(DPAEConfig(**base, seed=0, split_seed=0), _frames())
    b = DPAETask(DPAEConfig(**base, seed=1, split_seed=0), _frames())
    c = DPAETask(DPAEConfig(**base, seed=0, split_seed=1), _frames())
    assert torch.equal(a.test_set.frames, b.test_set.frames) and not torch.equal(a.test_set.frames, c.test_set.frames)
    wa, wb, wc = (next(t.encoder.parameters()) for t in (a, b, c))
    assert not torch.equal(wa, wb) and torch.equal(wa, wc)
