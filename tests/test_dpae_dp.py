"""DP training core (aux_code.dp; issue 16): per-example gradients, accounting, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from aux_code.dp import DPError, DPSettings, epsilon_for, make_training, mean_over_batch, validate_settings
from aux_code.models.dpae import DPAutoencoder

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
]


def _per_example_loss(recon: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    return ((recon - frames) ** 2).flatten(1).mean(1)


def test_opacus_per_example_gradients_match_one_at_a_time() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(0)
    ae = DPAutoencoder.build(width_mult=0.125).double()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    wrapped = GradSampleModule(ae, loss_reduction="mean")
    mean_over_batch(_per_example_loss(wrapped(x), x)).backward()
    batched = {n: p.grad_sample.detach().clone() for n, p in ae.named_parameters()}
    worst = 0.0
    for i in range(x.shape[0]):
        ae.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(_per_example_loss(ae(x[i : i + 1]), x[i : i + 1]).sum(), list(ae.parameters()))
        for (name, _), g in zip(ae.named_parameters(), grads):
            worst = max(worst, float((batched[name][i] - g).abs().max()))
            assert torch.allclose(batched[name][i], g, rtol=1e-9, atol=1e-12), name
    assert worst < 1e-12, worst
    print(f"per-example gradient max |opacus - one at a time| = {worst:.3g}")
    wrapped._close()


def test_epsilon_grows_with_steps_and_falls_with_noise() -> None:
    eps = lambda sigma, steps: epsilon_for(noise_multiplier=sigma, sample_rate=0.01, steps=steps, delta=1e-5)  # noqa: E731
    assert eps(1.0, 100) < eps(1.0, 1000) < eps(1.0, 5000)
    assert eps(0.5, 1000) > eps(1.0, 1000) > eps(2.0, 1000)
    # REFERENCE.md s.9: about 15.5 and 2.1 at sigma 0.5 / 1.0 with RDP (q 0.01, 1000 steps, delta 1e-5).
    assert eps(0.5, 1000) == pytest.approx(15.5, abs=0.1)
    assert eps(1.0, 1000) == pytest.approx(2.1, abs=0.05)
    assert eps(1.0, 0) == 0.0


def test_settings_are_refused_before_any_work() -> None:
    with pytest.raises(DPError, match=r"noise_multiplier must be a finite number > 0, got -0.5"):
        validate_settings(DPSettings(noise_multiplier=-0.5), sample_rate=0.1, steps=10)
    with pytest.raises(DPError, match=r"got 0.0"):
        validate_settings(DPSettings(noise_multiplier=0.0), sample_rate=0.1, steps=10)
    with pytest.raises(DPError, match=r"target_epsilon 1e-06 at delta 1e-05 cannot be reached"):
        validate_settings(DPSettings(target_epsilon=1e-6), sample_rate=1.0, steps=1000)
    with pytest.raises(DPError, match="optimizer 'rmsprop'"):
        validate_settings(DPSettings(optimizer="rmsprop"), sample_rate=0.1, steps=10)
    sigma = validate_settings(DPSettings(target_epsilon=2.1, noise_multiplier=None), sample_rate=0.01, steps=1000)
    assert sigma == pytest.approx(1.0, abs=0.02)
    assert validate_settings(DPSettings(private=False, noise_multiplier=-1.0), sample_rate=0.1, steps=10) is None


def test_batchnorm_model_is_refused_with_a_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    data = TensorDataset(torch.rand(4, 3, 8, 8))
    with pytest.raises(DPError, match=r"has BatchNorm layers \(1\).*Use GroupNorm"):
        make_training(model, data, settings=DPSettings(), batch_size=2, epochs=1)
    # The no-DP path trains it (BatchNorm is only a problem for per-example gradients).
    assert make_training(model, data, settings=DPSettings(private=False), batch_size=2, epochs=1).epsilon() == math.inf


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_dp_training_steps_accounts_and_survives_an_empty_batch(optimizer: str) -> None:
    torch.manual_seed(0)
    ae = DPAutoencoder.build(width_mult=0.125)
    data = TensorDataset(torch.rand(8, 3, 8, 8))
    tr = make_training(ae, data, settings=DPSettings(optimizer=optimizer, lr=1e-2, noise_multiplier=1.0),
                       batch_size=4, epochs=1, seed=0)
    assert tr.private and tr.sample_rate == 0.5 and tr.epsilon() == 0.0
    before = [p.detach().clone() for p in ae.parameters()]
    for (x,) in [*tr.loader, (torch.zeros(0, 3, 8, 8),)]:  # the last one: an empty Poisson batch
        tr.optimizer.zero_grad(set_to_none=True)
        loss = mean_over_batch(_per_example_loss(tr.module(x), x))
        assert torch.isfinite(loss)
        loss.backward()
        tr.optimizer.step()
    assert tr.steps_taken() == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, ae.parameters()))
    expected = epsilon_for(noise_multiplier=1.0, sample_rate=0.5, steps=3, delta=1e-5)
    assert tr.epsilon() == pytest.approx(expected)
    state = tr.state_dict()
    fresh = make_training(DPAutoencoder.build(width_mult=0.125), data, settings=tr.settings, batch_size=4, epochs=1)
    fresh.load_state_dict(state)
    assert fresh.epsilon() == pytest.approx(expected)


def test_sampling_schedule_is_what_the_loader_and_accountant_use() -> None:
    from aux_code.dp import sampling_schedule

    assert sampling_schedule(100, batch_size=50, epochs=3) == (0.5, 6)
    assert sampling_schedule(101, batch_size=50, epochs=1) == (pytest.approx(1 / 3), 3)
    tr = make_training(DPAutoencoder.build(width_mult=0.125), TensorDataset(torch.rand(10, 3, 8, 8)),
                       settings=DPSettings(noise_multiplier=1.0), batch_size=4, epochs=2)
    assert tr.sample_rate == sampling_schedule(10, batch_size=4, epochs=2)[0] == pytest.approx(1 / 3)
    assert len(tr.loader) == 3
    with pytest.raises(DPError, match="the training set is empty"):
        sampling_schedule(0, batch_size=4, epochs=1)
