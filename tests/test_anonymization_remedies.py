"""Stage 1's remedies of issue 14: the budget ensemble (worst case over members) and restarts, the
bounded privacy objective, and epoch selection by a fresh attacker instead of the budget model."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math

import pytest
import torch
from torch import nn

from anonymization_training.__main__ import main
from anonymization_training.attacker import AttackerSettings, anonymize_images, fresh_attacker_probe, shift_flip
from anonymization_training.config import AnonymizationConfig
from anonymization_training.steps import (
    BudgetRestarts,
    LossWeights,
    MinimaxModels,
    adversary_step,
    anonymize_views,
    anonymizer_step,
    budget_terms,
    worst_case,
)
from anonymization_training.train import selection_rule, selection_score
from aux_code.checkpoint import load_checkpoint
from aux_code.config import ConfigError, load_config
from aux_code.fit import Stepper
from aux_code.losses.contrastive import attribute_certainty, similarity_certainty, similarity_logits
from aux_code.models import build_anonymizer, build_budget, build_embedding_head, build_target, build_utility
from aux_code.models.stored import load_stored_model
from aux_code.precision import Precision

from tests.tiny import ANONYMIZATION_CONFIGS as CONFIGS, ANONYMIZATION_FAST as FAST
from tests.tiny import anonymization_paths as paths_args

CPU = torch.device("cpu")
FP32 = Precision("fp32", CPU)


def _stepper(step: int) -> Stepper:
    stepper = Stepper(FP32, stage="test")
    stepper.step = step
    return stepper


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Projection(nn.Module):
    """A budget with fixed weights: (N, 3, H, W) -> (N, 8) random linear features."""

    def __init__(self, seed: int, *, size: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(3 * size * size, 8, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def _minimax(budgets: list[nn.Module]) -> MinimaxModels:
    torch.manual_seed(0)
    utility = build_utility(name="i3d_r50_tiny", num_classes=3)
    return MinimaxModels(anonymizer=build_anonymizer(name="unet_tiny"), utility=utility,
                         embedding=build_embedding_head(in_dim=utility.feature_dim, hidden_dim=16, out_dim=8),
                         budget=budgets[0], ensemble=list(budgets[1:]))


def _batches(seed: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    action = {"clip": torch.rand(2, 3, 8, 16, 16, generator=g), "label": torch.tensor([0, 2])}
    view = torch.rand(6, 3, 16, 16, generator=g)
    images = {"view1": view, "view2": (view + 0.05 * torch.randn(6, 3, 16, 16, generator=g)).clamp(0, 1)}
    return action, images


# --------------------------------------------------------------------------- ensemble: worst case over members


def test_worst_case_is_the_max_and_only_it_gets_gradient():
    values = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    worst, k = worst_case(list(values.unbind()))
    assert k == 1 and float(worst.detach()) == 3.0
    worst.backward()
    assert values.grad.tolist() == [0.0, 1.0, 0.0]
    single = torch.tensor(5.0, requires_grad=True)
    assert worst_case([single]) == (single, 0)  # one member: the term itself, no stack


@pytest.mark.parametrize("privacy", ["ntxent", "entropy"])
def test_anonymizer_step_plays_the_worst_member(privacy):
    members = [Projection(seed) for seed in (11, 12, 13)]
    weights = LossWeights(method="spact", privacy=privacy)
    action, images = _batches()
    models = _minimax(members)
    models.anonymizer.train()
    with torch.no_grad():  # what each member's privacy term is on this batch (train-mode fA, as in Step 1)
        v1, v2 = anonymize_views(models.anonymizer, images, precision=FP32)
        known = [float(budget_terms(m, v1, v2, temperature=0.1, privacy=privacy).privacy) for m in members]
        l_b = [float(budget_terms(m, v1, v2, temperature=0.1).loss) for m in members]
    assert min(abs(a - b) for i, a in enumerate(known) for b in known[i + 1 :]) > 1e-4  # distinct losses
    worst = max(range(3), key=lambda k: known[k])

    def one_step(budgets: list[nn.Module]) -> tuple[dict, dict]:
        m = _minimax(budgets)
        opt = torch.optim.SGD(m.anonymizer.parameters(), lr=0.1)
        out = anonymizer_step(m, opt, action, images, weights=weights, stepper=_stepper(1))
        return out, _state(m.anonymizer)

    out, after_all = one_step(members)
    assert out["loss_A"] == pytest.approx(weights.w_t * out["L_T"] + weights.w_b * known[worst], rel=1e-5)
    assert out["L_B"] == pytest.approx(l_b[worst], rel=1e-5) and out["worst_member"] == worst
    # fA's update is exactly the one against the worst member alone, not against another one.
    _, after_worst = one_step([members[worst]])
    _, after_other = one_step([members[(worst + 1) % 3]])
    assert _equal(after_all, after_worst)
    assert not _equal(after_all, after_other)


def test_adversary_step_trains_every_member_on_its_own_loss():
    torch.manual_seed(3)
    members = [build_budget(name="resnet_tiny") for _ in range(3)]
    models = _minimax(members)
    before = [{k: p.detach().clone() for k, p in m.named_parameters()} for m in members]
    opt_t = torch.optim.Adam([*models.utility.parameters(), *models.embedding.parameters()], lr=1e-2)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in members]
    action, images = _batches(2)
    out = adversary_step(models, opt_t, opts[0], action, images, weights=LossWeights(method="spact"), stepper=_stepper(1),
                         ensemble_optimizers=opts[1:])
    # Parameters, not the state dict: a forward in train mode moves BatchNorm's statistics anyway.
    assert all(not _equal(b, dict(m.named_parameters())) for b, m in zip(before, members))
    assert out["L_B"] == min(out[f"L_B_{k}"] for k in range(3))
    assert out["budget_acc"] == max(out[f"budget_acc_{k}"] for k in range(3))
    with pytest.raises(ValueError, match="ensemble optimizers"):
        adversary_step(models, opt_t, opts[0], action, images, weights=LossWeights(method="spact"), stepper=_stepper(2))


# --------------------------------------------------------------------------- restarts


@pytest.mark.parametrize("mode", ["init", "random"])
def test_restarts_reinitialise_on_schedule(mode):
    torch.manual_seed(0)
    members = [build_budget(name="resnet_tiny") for _ in range(2)]
    starts = [_state(m) for m in members]

    def start(k: int, r: int) -> dict[str, torch.Tensor]:
        if r == 0:
            return starts[k]
        torch.manual_seed(1000 * k + r)
        return build_budget(name="resnet_tiny").state_dict()

    restarts = BudgetRestarts(3, mode, start)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in members]
    g = torch.Generator().manual_seed(0)
    loaded: dict[int, list] = {}
    for step in range(1, 9):
        before = [_state(m) for m in members]
        restarted = restarts.apply(step, members, opts)
        assert restarted == (step in (4, 7)), step
        for k, m in enumerate(members):
            if restarted:
                r = 0 if mode == "init" else (step - 1) // 3
                assert _equal(_state(m), start(k, r)), (step, k)
                assert not _equal(_state(m), before[k])
                assert not opts[k].state  # Adam's moments restart with the weights
                loaded.setdefault(step, []).append(_state(m))
            else:
                assert _equal(_state(m), before[k]), (step, k)  # nothing between restarts
        for m, opt in zip(members, opts):  # a budget training step
            x = torch.rand(4, 3, 16, 16, generator=g)
            loss = budget_terms(m, x, (x + 0.1 * torch.rand(4, 3, 16, 16, generator=g)).clamp(0, 1), temperature=0.1).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    if mode == "random":  # every restart a new draw
        assert not _equal(loaded[4][0], loaded[7][0]) and not _equal(loaded[4][0], starts[0])
    else:
        assert _equal(loaded[4][1], loaded[7][1])
    assert not BudgetRestarts(None, mode, start).due(4)


# --------------------------------------------------------------------------- the bounded privacy objective


def test_similarity_certainty_is_bounded_and_zero_at_uniform_similarity():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    for t in (1.0, 0.1, 1e-6):  # a tiny temperature blows the logits up: still in [0, 1]
        c = float(similarity_certainty(similarity_logits(z1, z2, temperature=t)[0]))
        assert 0.0 <= c <= 1.0 and math.isfinite(c)
    same = torch.ones(5, 8)
    assert float(similarity_certainty(similarity_logits(same, same, temperature=0.1)[0])) == pytest.approx(0.0, abs=1e-6)
    # A one-hot row distribution (the positive far above all others) is the other end.
    sharp = similarity_logits(torch.eye(8)[:4], torch.eye(8)[:4], temperature=1e-3)[0]
    assert float(similarity_certainty(sharp)) == pytest.approx(1.0, abs=1e-3)


def test_similarity_certainty_gradient_points_to_uniform_similarity():
    g = torch.Generator().manual_seed(1)
    logits = similarity_logits(torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), temperature=0.2)[0]
    logits = logits.detach().requires_grad_(True)
    similarity_certainty(logits).backward()
    off = ~torch.eye(8, dtype=torch.bool)
    rows, step = logits.detach()[off].reshape(8, 7), -logits.grad[off].reshape(8, 7)
    p = rows.softmax(dim=1)
    towards_mean = (p * rows).sum(dim=1, keepdim=True) - rows
    assert ((step * towards_mean).sum(dim=1) > 0).all()  # descent moves every row towards its (p-weighted) mean
    assert rows.var(dim=1).sum() > (rows + 0.5 * step / step.abs().max()).var(dim=1).sum()
    assert torch.allclose(step.sum(dim=1), torch.zeros(8), atol=1e-6)  # shifts nothing but the spread
    flat = torch.zeros(8, 8).masked_fill(~off, float("-inf")).requires_grad_(True)
    similarity_certainty(flat).backward()
    assert torch.allclose(flat.grad[off], torch.zeros(56), atol=1e-7)  # uniform: nothing left to gain


@pytest.mark.parametrize("privacy", ["ntxent", "entropy"])
def test_anonymizer_step_makes_the_budget_worse(privacy, seed=0):
    """The sign check: with w_T = 0, one fA step raises fB's NT-Xent (paper) or lowers the certainty
    of its similarity rows (entropy), each measured here from fB's embeddings, on the same batch."""
    torch.manual_seed(seed)
    members = [build_budget(name="resnet_tiny")]
    models = _minimax(members)
    weights = LossWeights(method="spact", privacy=privacy, w_t=0.0)
    action, images = _batches(3)
    opt = torch.optim.SGD(models.anonymizer.parameters(), lr=0.01)

    def leak() -> float:
        models.anonymizer.train()
        members[0].eval()
        with torch.no_grad():
            v1, v2 = anonymize_views(models.anonymizer, images, precision=FP32)
            z = members[0](torch.cat([v1, v2]))
            logits, targets = similarity_logits(z[:6], z[6:], temperature=0.1)
            if privacy == "ntxent":
                return -float(torch.nn.functional.cross_entropy(logits, targets))
            return float(similarity_certainty(logits))

    before = leak()
    anonymizer_step(models, opt, action, images, weights=weights, stepper=_stepper(1))
    assert leak() < before


# --------------------------------------------------------------------------- the supervised (attribute) budget


def test_attribute_certainty_is_bounded_zero_at_one_half_and_pulls_logits_to_zero():
    for scale in (1.0, 1e3, 1e8):
        logits = scale * torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
        c = float(attribute_certainty(logits))
        assert 0.0 <= c <= 1.0 and math.isfinite(c)
    assert float(attribute_certainty(torch.zeros(4, 7))) == pytest.approx(0.0, abs=1e-7)
    assert float(attribute_certainty(torch.full((4, 7), -60.0))) == pytest.approx(1.0, abs=1e-6)
    logits = torch.tensor([[2.0, -3.0, 0.5]], requires_grad=True)
    attribute_certainty(logits).backward()
    assert (torch.sign(-logits.grad) == -torch.sign(logits.detach())).all()  # descent moves every logit towards 0


def _attribute_images(seed: int = 4) -> dict:
    _, images = _batches(seed)
    g = torch.Generator().manual_seed(seed)
    return {**images, "labels": (torch.rand(6, 3, generator=g) < 0.5).float()}


def test_attribute_budget_learns_the_labels_and_fa_makes_it_unsure():
    torch.manual_seed(0)
    members = [build_target(name="resnet_tiny", num_classes=3)]
    models = _minimax(members)
    weights = LossWeights(method="spact", privacy="entropy", budget_task="attributes")
    action, images = _batches(5)
    images = _attribute_images()
    opt_t = torch.optim.Adam([*models.utility.parameters(), *models.embedding.parameters()], lr=1e-3)
    opt_b = torch.optim.Adam(members[0].parameters(), lr=1e-2)
    first = adversary_step(models, opt_t, opt_b, action, images, weights=weights, stepper=_stepper(1))
    for step in range(2, 12):
        last = adversary_step(models, opt_t, opt_b, action, images, weights=weights, stepper=_stepper(step))
    assert last["L_B"] < first["L_B"]  # Step 2 fits the attributes (BCE) on the labelled views

    def certainty() -> float:
        models.anonymizer.train()
        members[0].eval()
        with torch.no_grad():
            v1, v2 = anonymize_views(models.anonymizer, images, precision=FP32)
            return float(attribute_certainty(members[0](torch.cat([v1, v2]))))

    before = certainty()
    opt_a = torch.optim.SGD(models.anonymizer.parameters(), lr=0.01)
    out = anonymizer_step(models, opt_a, action, images, weights=dataclasses.replace(weights, w_t=0.0), stepper=_stepper(12))
    assert out["privacy"] == pytest.approx(before, rel=1e-4) and certainty() < before
    with pytest.raises(ValueError, match="labels"):
        anonymizer_step(models, opt_a, action, _batches(5)[1], weights=weights, stepper=_stepper(13))


def test_attribute_budget_end_to_end(init_runs, tiny_world, capsys):
    """budget_ssl pretrains the attribute classifier; the minimax starts fB from it (an NT-Xent budget is refused)."""
    where = [*paths_args(tiny_world, init_runs), *FAST]
    assert main(["--config", str(CONFIGS / "budget_attributes.yaml"), *where]) == 0
    pretrained, spec = load_stored_model(init_runs / "anonymization" / "budget_attributes" / "best.pt", "budget")
    assert spec["num_classes"] == 7 and pretrained(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    minimax = ["--config", str(CONFIGS / "tedspad_attributes.yaml"), *where, "fresh_attacker.enabled=false",
               "eval.select=action_top1", "loss.negative_distance=8"]
    assert main([*minimax, "run.name=attributes_wrong_init", "init.budget=anonymization/budget/best.pt"]) == 2
    assert "holds no attribute classifier" in capsys.readouterr().err
    assert main([*minimax, "run.name=attributes"]) == 0
    run_dir = init_runs / "anonymization" / "attributes"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["budget"]["task"] == "attributes" and 0.0 <= results["selected"]["budget_acc"] <= 1.0
    assert load_checkpoint(run_dir / "best.pt")["models"]["budget"]["kind"] == "target"


# --------------------------------------------------------------------------- the fresh attacker


def _attribute_world(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 16, 16) images whose 3 attributes are drawn in the green / blue channels as balanced
    patterns (a bright and a dark square: the channel mean does not move), red a per-image level."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 3, generator=g) < torch.tensor([0.5, 0.4, 0.3])).float()
    x = 0.5 + 0.05 * torch.randn(n, 3, 16, 16, generator=g)
    x[:, 0] = torch.rand(n, 1, 1, generator=g)  # red: an image-specific level, no attribute
    spots = [(1, 2, 2), (1, 9, 9), (2, 4, 10)]  # (channel, row, col) of each attribute's pattern
    for a, (c, r, col) in enumerate(spots):
        on = labels[:, a].bool()
        x[on, c, r : r + 4, col : col + 3] += 0.4
        x[on, c, r : r + 4, col + 3 : col + 6] -= 0.4
    return x.clamp(0, 1), labels


class RedLevel(nn.Module):
    """A budget that learned to rely on one cue: the image's mean red level, as 8 periodic features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x[:, 0].mean(dim=(1, 2))[:, None]  # (N, 1)
        freqs = torch.arange(1, 9, dtype=x.dtype)[None, :]
        return torch.cos(2 * math.pi * freqs * level + freqs)


class Tint(nn.Module):
    """Fools a red-channel budget: red set to one level and green / blue swapped; the patterns stay."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.full_like(x[:, 0], 0.9), x[:, 2], x[:, 1]], dim=1)


class ChannelMeans(nn.Module):
    """Removes every spatial pattern, keeps each channel's mean (so the red level still tells images apart)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 0.5)


SETTINGS = AttackerSettings(steps=100, batch_size=32, lr=5e-3, width=8, seed=0)
ANONYMIZERS = {"raw": None, "identity": build_anonymizer(name="identity"), "constant": Constant(), "tint": Tint(),
               "remove": ChannelMeans()}


@functools.lru_cache(maxsize=None)
def _probe(name: str, steps: int = SETTINGS.steps) -> dict:
    """The probe on the attribute world after anonymizer ``name`` (each is trained once per session)."""
    anonymizer = ANONYMIZERS[name]
    (x_tr, y_tr), (x_val, y_val) = _attribute_world(256, 0), _attribute_world(128, 1)
    train = anonymize_images(anonymizer, x_tr, device=CPU, precision=FP32)
    val = anonymize_images(anonymizer, x_val, device=CPU, precision=FP32)
    return fresh_attacker_probe(train, y_tr, val, y_val, dataclasses.replace(SETTINGS, steps=steps))


def test_fresh_attacker_reads_raw_and_identity_and_nothing_from_a_constant():
    raw, identity, constant = _probe("raw"), _probe("identity"), _probe("constant")
    assert raw["cmap"] > raw["chance"] + 0.4
    assert identity["cmap"] == pytest.approx(raw["cmap"], abs=1e-9)  # the same images, the same attacker
    assert constant["cmap"] == pytest.approx(constant["chance"], abs=0.02)
    assert constant["chance"] == pytest.approx(raw["chance"]) and 0.2 < raw["chance"] < 0.6


def test_several_attackers_give_their_worst_case():
    x, y = _attribute_world(96, 5)
    quick = dataclasses.replace(SETTINGS, steps=15, seed=7)
    single = [fresh_attacker_probe(x[:64], y[:64], x[64:], y[64:], dataclasses.replace(quick, seed=7 + r))["cmap"]
              for r in range(3)]
    both = fresh_attacker_probe(x[:64], y[:64], x[64:], y[64:], quick, attackers=3)
    assert len(set(single)) > 1  # the seeds do differ
    assert both["cmap"] == max(single) and both["cmap_mean"] == pytest.approx(sum(single) / 3)


def test_probe_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _probe("tint", steps=3)
    assert torch.equal(torch.rand(3), expected)


def test_shift_flip_moves_pixels_without_changing_them():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    y = shift_flip(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))


def test_selection_uses_the_fresh_attacker_not_the_fooled_budget():
    """A tint that only breaks what the budget looks at (budget accuracy low, attacker cMAP high)
    against an anonymizer that removes the patterns (budget still matches views, attacker at chance):
    the attacker rule picks the second, the budget rule would have picked the first."""
    budget = RedLevel()
    x, _ = _attribute_world(32, 2)
    views = {"view1": x, "view2": (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)}
    epochs = {}
    for name in ("tint", "remove"):
        v1, v2 = anonymize_views(ANONYMIZERS[name], views, precision=FP32)
        budget_acc = float(budget_terms(budget, v1, v2, temperature=0.1).accuracy)
        epochs[name] = {"action_top1": 0.8, "budget_acc": budget_acc, "attacker_cmap": _probe(name)["cmap"]}
    assert epochs["tint"]["budget_acc"] < 0.1 < 0.5 < epochs["remove"]["budget_acc"]  # the budget is fooled by the tint
    assert epochs["tint"]["attacker_cmap"] > epochs["remove"]["attacker_cmap"] + 0.3  # the attacker is not
    initial = {"action_top1": 0.8}
    pick = lambda rule: max(epochs, key=lambda e: selection_score(rule, epochs[e], initial, 0.1))  # noqa: E731
    assert pick("tradeoff") == "tint"
    assert pick("attacker_tradeoff") == "remove"


# --------------------------------------------------------------------------- config and the stage


@pytest.mark.parametrize("override, message", [
    ("budget.ensemble=0", "budget.ensemble"),
    ("budget.restart_every=0", "budget.restart_every"),
    ("budget.restart_every=-5", "budget.restart_every"),
    ("eval.select=attacker_tradeoff", "fresh_attacker.enabled"),
    ("fresh_attacker.validation_fraction=1.0", "fresh_attacker.validation_fraction"),
    ("budget.task=attributes", "loss.privacy"),
    ("budget.task=attributes loss.privacy=entropy", "eval.select"),
])
def test_bad_remedy_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(AnonymizationConfig, CONFIGS / "tedspad.yaml", override.split())


def test_bad_remedy_settings_stop_the_cli_before_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--config", str(CONFIGS / "tedspad_ens.yaml"), f"paths.runs={tmp_path}", "budget.ensemble=0"])
    assert stopped.value.code == 2 and "budget.ensemble" in capsys.readouterr().err
    assert not (tmp_path / "anonymization").exists()


def test_the_paper_configs_keep_the_paper_defaults(tiny_world, tmp_path):
    where = paths_args(tiny_world, tmp_path)
    for name in ("tedspad.yaml", "spact.yaml"):
        cfg = load_config(AnonymizationConfig, CONFIGS / name, where)
        assert (cfg.budget.ensemble, cfg.budget.restart_every, cfg.loss.privacy) == (1, None, "ntxent")
        assert not cfg.fresh_attacker.enabled and cfg.eval.select == "tradeoff"
    cfg = load_config(AnonymizationConfig, CONFIGS / "tedspad_ens.yaml", where)
    assert cfg.budget.ensemble > 1 and cfg.eval.select == "attacker_tradeoff"
    assert "fresh-attacker cMAP" in selection_rule(cfg) and "budget" not in selection_rule(cfg).split("max (")[1].split(")")[0]


def test_remedies_end_to_end(init_runs, tiny_world):
    """Ensemble of 2 with a restart before step 2, the entropy objective, the attacker selecting over 2 epochs."""
    rc = main(["--config", str(CONFIGS / "tedspad_ens.yaml"), *paths_args(tiny_world, init_runs), *FAST,
               "run.name=remedies", "optim.epochs=2", "eval.every=1", "budget.ensemble=2", "budget.restart_every=1",
               "loss.privacy=entropy", "fresh_attacker.steps=20", "fresh_attacker.batch_size=4", "fresh_attacker.attackers=1",
               "fresh_attacker.validation_fraction=0.4", "loss.negative_distance=8"])
    assert rc == 0
    run_dir = init_runs / "anonymization" / "remedies"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["budget"] == {"task": "ntxent", "ensemble": 2, "restart_every": 1, "restart_from": "init", "restarts": 3}
    assert results["privacy_objective"] == "entropy" and "fresh-attacker cMAP" in results["selection"]["rule"]
    assert results["fresh_attacker"]["seconds_per_probe"] > 0
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert {"budget", "budget_1"} <= set(ckpt["models"]) and "budget_1" in ckpt["optimizers"]
    history = ckpt["history"]
    assert [h["train_budget_restarted"] for h in history] == [0.5, 1.0]  # before steps 2, 3 and 4 of 2 x 2
    for h in history:
        assert 0.0 <= h["val_attacker_cmap"] <= 1.0 and -1.0 <= h["val_output_ssim"] <= 1.0
        assert 0.0 <= h["train_step1_privacy"] <= 1.0  # the bounded term
    initial = results["initial"]
    scores = {h["epoch"]: selection_score("attacker_tradeoff", {k[4:]: v for k, v in h.items() if k.startswith("val_")},
                                          initial, results["max_action_drop"]) for h in history}
    assert results["selection"]["epoch"] == max(scores, key=lambda e: (scores[e], -e))
    assert {"attacker_cmap", "output_psnr"} <= set(initial)


def test_member_copies_share_the_architecture_not_the_weights(init_runs, tiny_world):
    from anonymization_training.train import load_init_models

    cfg = load_config(AnonymizationConfig, CONFIGS / "tedspad_ens.yaml", [*paths_args(tiny_world, init_runs), *FAST])
    cfg = copy.deepcopy(cfg)
    models, specs = load_init_models(cfg, 4)
    assert len(models.budgets) == cfg.budget.ensemble and specs["budget_1"] == specs["budget"]
    again, _ = load_init_models(cfg, 4)
    first = [_state(m) for m in models.budgets]
    assert all(_equal(a, _state(b)) for a, b in zip(first, again.budgets))  # seeded: the same members every time
    assert not _equal(first[0], first[1]) and not _equal(first[1], first[2])
