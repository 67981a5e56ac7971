"""The one learning-rate schedule (aux_code.schedule): warm-up shape, plateau drops, floor, state."""

from __future__ import annotations

import pytest
import torch

from aux_code.config import ConfigError
from aux_code.schedule import Schedule, ScheduleSection


def _schedule(**kw) -> tuple[Schedule, torch.optim.Optimizer]:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return Schedule(ScheduleSection(**kw), lr=1.0, optimizers=[opt], mode=kw.pop("mode", "max") if "mode" in kw else "max"), opt


def test_warmup_is_linear_from_the_start_fraction_to_the_lr():
    s, opt = _schedule(warmup_epochs=2, warmup_start=0.1)
    assert s.start_epoch(0) == pytest.approx(0.1) and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert s.start_epoch(1) == pytest.approx(0.55)
    assert s.start_epoch(2) == 1.0 and s.start_epoch(9) == 1.0
    # Stage 1's identity warm-up: one epoch at half the lr.
    s, _ = _schedule(warmup_epochs=1, warmup_start=0.5)
    assert s.start_epoch(0) == 0.5 and s.start_epoch(1) == 1.0


def test_plateau_drops_after_patience_validations_without_a_new_best_and_floors():
    s, opt = _schedule(warmup_epochs=2, plateau_patience=2, plateau_factor=0.2, min_lr=0.05)
    s.observe(0.5, 0)
    s.observe(0.1, 1)  # inside the warm-up: sets nothing but the reference
    s.observe(0.5, 2)  # a tie is no improvement: 1 bad
    assert s.start_epoch(3) == 1.0
    s.observe(0.4, 3)  # 2 bad: drop
    assert s.start_epoch(4) == pytest.approx(0.2) and opt.param_groups[0]["lr"] == pytest.approx(0.2)
    s.observe(0.6, 4)  # a new best resets the count
    s.observe(0.6, 5)
    assert s.start_epoch(6) == pytest.approx(0.2)
    s.observe(0.6, 6)
    assert s.start_epoch(7) == pytest.approx(0.05)  # 0.04 floored at min_lr
    state = s.state_dict()
    fresh, _ = _schedule(warmup_epochs=2, plateau_patience=2, plateau_factor=0.2, min_lr=0.05)
    fresh.load_state_dict(state)
    assert fresh.start_epoch(8) == pytest.approx(0.05) and fresh.best == 0.6


def test_min_mode_and_patience_zero_never_drops():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = Schedule(ScheduleSection(plateau_patience=1, plateau_factor=0.5), lr=1.0, optimizers=[opt], mode="min")
    s.observe(0.3, 0)
    s.observe(0.2, 1)  # lower is better: no drop
    assert s.start_epoch(2) == 1.0
    s.observe(0.25, 2)
    assert s.start_epoch(3) == 0.5
    off, _ = _schedule(plateau_patience=0)
    for e, v in enumerate([0.5, 0.4, 0.3, 0.2]):
        off.observe(v, e)
    assert off.start_epoch(4) == 1.0


@pytest.mark.parametrize("kw", [{"warmup_epochs": -1}, {"warmup_start": 0.0}, {"plateau_factor": 1.0}, {"min_lr": -1.0}])
def test_bad_schedule_is_a_config_error(kw):
    with pytest.raises(ConfigError, match="schedule"):
        ScheduleSection(**kw).validate()
