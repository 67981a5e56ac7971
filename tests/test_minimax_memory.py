"""Bounding the minimax's memory without changing its batch: activation recomputation
(aux_code.memory) and micro-batches with summed gradients (optim.micro_batch)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from anonymization_training.config import AnonymizationConfig
from anonymization_training.steps import LossWeights, MinimaxModels, adversary_step, anonymizer_step, micro_batches
from anonymization_training.train import check_micro_batch, recompute_models
from aux_code.config import ConfigError, load_config
from aux_code.memory import recomputed
from tests.test_anonymization_stage import _stepper, fake_batches, snapshot, tiny_models
from tests.tiny import ANONYMIZATION_CONFIGS as CONFIGS


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn`` runs forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def test_recomputed_call_gives_the_plain_gradients_and_batchnorm_statistics_but_stores_only_its_input():
    plain, again = _net(), _net()
    x = torch.rand(4, 3, 12, 12)
    calls = []
    again[0].register_forward_hook(lambda *a: calls.append(1))  # (the recomputation stops once it has what it needs)
    xp, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    stored_plain, yp = _saved_bytes(lambda: plain(xp))
    stored_again, yr = _saved_bytes(lambda: recomputed(again, xr))
    assert torch.equal(yp, yr)
    (yp ** 2).sum().backward()
    (yr ** 2).sum().backward()
    assert len(calls) == 2  # the forward ran again in the backward pass
    assert torch.allclose(xp.grad, xr.grad, atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), again.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    # the recomputation is a second train-mode BatchNorm call: its statistics must not count twice
    for key, value in plain.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    # what the backward keeps of the recomputed call is its input (plus the square's), not the 4 layers' activations
    assert stored_again < stored_plain / 2
    # outside grad mode it is the plain call
    with torch.no_grad():
        assert torch.equal(recomputed(again, x), again(x))


def _without_batchnorm(models: MinimaxModels) -> MinimaxModels:
    """The tiny models in float64 with every BatchNorm and Dropout an identity: then micro-batches
    change nothing but rounding (they change BatchNorm's batch statistics and the order dropout
    masks are drawn in; in float32 the sums' order alone moves some gradients by 1e-4 relative)."""
    for m in models.as_dict().values():
        m.double()
        for child in list(m.modules()):
            for attr, sub in list(child.named_children()):
                if isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                    setattr(child, attr, nn.Identity())
    return models


def _sgd(models: MinimaxModels):
    return (torch.optim.SGD(models.anonymizer.parameters(), lr=0.5),
            torch.optim.SGD([*models.utility.parameters(), *models.embedding.parameters()], lr=0.5),
            torch.optim.SGD(models.budget.parameters(), lr=0.5))


@pytest.mark.parametrize("method", ["tedspad", "spact"])
def test_micro_batches_give_the_whole_batch_step(method):
    whole = _without_batchnorm(tiny_models())
    parts = copy.deepcopy(whole)
    action, images = ({k: v.double() if v.is_floating_point() else v for k, v in d.items()} for d in fake_batches(b=2))
    weights = LossWeights(method=method)
    logs = {}
    for key, models, micro in (("whole", whole, None), ("parts", parts, 1)):
        opt_a, opt_t, opt_b = _sgd(models)
        torch.manual_seed(0)
        m1 = anonymizer_step(models, opt_a, action, images, weights=weights, stepper=_stepper(1), micro_batch=micro)
        m2 = adversary_step(models, opt_t, opt_b, action, images, weights=weights, stepper=_stepper(1), micro_batch=micro)
        logs[key] = (m1, m2)
    for key, module in whole.as_dict().items():
        other = parts.as_dict()[key]
        for (name, p), q in zip(module.named_parameters(), other.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=1e-9), f"{key}.{name}"
    for a, b in zip(*logs.values()):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k  # logged from float32 losses


def test_micro_batches_split_the_action_batch_and_refuse_a_remainder():
    action, _ = fake_batches(b=2)
    assert len(micro_batches(action, None)) == 1 and len(micro_batches(action, 4)) == 1
    halves = micro_batches(action, 1)
    assert [p["label"].tolist() for p in halves] == [[0], [2]]
    assert torch.equal(torch.cat([p["clip"] for p in halves]), action["clip"])
    action3 = {k: torch.cat([v, v[:1]]) for k, v in action.items()}
    with pytest.raises(ValueError, match="do not divide the batch of 3 clips"):
        micro_batches(action3, 2)


def test_recomputing_every_model_changes_nothing_in_either_step():
    plain = tiny_models()
    again = copy.deepcopy(plain)
    keys = {k: list(m.state_dict()) for k, m in again.as_dict().items()}
    blocks = recompute_models(again, ["anonymizer", "utility", "budget"])
    assert blocks["anonymizer"] == 9 and blocks["utility"] > 0 and blocks["budget"] > 0  # the UNet's 9 DoubleConvs
    assert {k: list(m.state_dict()) for k, m in again.as_dict().items()} == keys  # checkpoints keep their names
    action, images = fake_batches(b=2)
    weights = LossWeights(method="tedspad")
    for models in (plain, again):
        opt_a, opt_t, opt_b = _sgd(models)  # (Adam's first step is about lr * sign(g): rounding noise would flip it)
        torch.manual_seed(0)  # fT's dropout masks
        anonymizer_step(models, opt_a, action, images, weights=weights, stepper=_stepper(1))
        adversary_step(models, opt_t, opt_b, action, images, weights=weights, stepper=_stepper(1))
    for key, module in plain.as_dict().items():
        other = snapshot(again.as_dict()[key])
        for name, value in snapshot(module).items():  # parameters and BatchNorm statistics
            assert torch.allclose(value.float(), other[name].float(), rtol=0, atol=1e-6), f"{key}.{name}"
    # the point of it: fA stores its blocks' inputs, not their activations
    x = torch.rand(12, 3, 32, 32, requires_grad=True)
    stored_plain, _ = _saved_bytes(lambda: plain.anonymizer(x))
    stored_blocks, _ = _saved_bytes(lambda: again.anonymizer(x))
    assert stored_blocks < stored_plain / 3


def test_memory_options_are_checked_before_work():
    base = [str(CONFIGS / "tedspad.yaml"), ["optim.batch_size=4"]]
    with pytest.raises(ConfigError, match="optim.micro_batch = 0 must be >= 1"):
        load_config(AnonymizationConfig, base[0], [*base[1], "optim.micro_batch=0"], check_paths=False)
    with pytest.raises(ConfigError, match="recompute"):
        load_config(AnonymizationConfig, base[0], [*base[1], "optim.recompute=[fa]"], check_paths=False)
    with pytest.raises(ConfigError, match="names a model twice"):
        load_config(AnonymizationConfig, base[0], [*base[1], "optim.recompute=[utility,utility]"], check_paths=False)
    cfg = load_config(AnonymizationConfig, base[0], [*base[1], "optim.micro_batch=2"], check_paths=False)
    check_micro_batch(cfg, 1)
    check_micro_batch(cfg, 2)  # 2 clips per rank
    with pytest.raises(ConfigError, match="must divide the 1 clips each rank trains on"):
        check_micro_batch(cfg, 4)
