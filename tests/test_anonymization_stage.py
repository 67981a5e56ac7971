"""Stage 1 (anonymization training): the minimax steps, the losses, and every task end to end
on a tiny generated world."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import anonymization_training.data as anonymization_data
from anonymization_training.__main__ import main
from anonymization_training.config import AnonymizationConfig
from anonymization_training.data import (
    ActionClips,
    VideoSource,
    epoch_batches,
    load_action_splits,
    train_transform,
    video_group,
)
from anonymization_training.steps import (
    LossWeights,
    MinimaxModels,
    adversary_step,
    anonymize_action_batch,
    anonymize_views,
    anonymizer_step,
    budget_terms,
    frozen,
    utility_terms,
)
from anonymization_training.train import budget_chunks, selection_score
from aux_code.checkpoint import load_checkpoint
from aux_code.config import describe, load_config
from aux_code.datasets import VideoItem
from aux_code.losses.contrastive import nt_xent, temporal_distinctive_triplet
from aux_code.models import build_anonymizer, build_budget, build_embedding_head, build_utility
from aux_code.models.stored import load_stored_model
from aux_code.training import NonFiniteLossError

from tests.tiny import ANONYMIZATION_CONFIGS as CONFIGS, ANONYMIZATION_FAST as FAST, ANONYMIZATION_SIZE as SIZE
from tests.tiny import anonymization_paths as paths_args

# The fixtures tiny_world (one world per session) and init_runs (the three init runs with FAST:
# 1 epoch of 2 steps) come from tests/conftest.py.


def tiny_models(num_classes: int = 3) -> MinimaxModels:
    torch.manual_seed(0)
    utility = build_utility(name="i3d_r50_tiny", num_classes=num_classes)
    return MinimaxModels(
        anonymizer=build_anonymizer(name="unet_tiny"),
        utility=utility,
        embedding=build_embedding_head(in_dim=utility.feature_dim, hidden_dim=16, out_dim=8),
        budget=build_budget(name="resnet_tiny"),
    )


def fake_batches(seed: int = 1, b: int = 2, n: int = 4) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    clip = lambda: torch.rand(b, 3, 8, 16, 16, generator=g)  # noqa: E731
    action = {"clip": clip(), "positive": clip(), "negative": clip(), "label": torch.tensor([0, 2])[:b]}
    images = {"view1": torch.rand(n, 3, 16, 16, generator=g), "view2": torch.rand(n, 3, 16, 16, generator=g)}
    return action, images


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def changed_params(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters())


def optimizers(models: MinimaxModels, lr: float = 1e-2):
    return (
        torch.optim.Adam(models.anonymizer.parameters(), lr=lr),
        torch.optim.Adam([*models.utility.parameters(), *models.embedding.parameters()], lr=lr),
        torch.optim.Adam(models.budget.parameters(), lr=lr),
    )


# --------------------------------------------------------------------------- the steps


def _stepper(step: int):
    from aux_code.fit import Stepper
    from aux_code.precision import Precision

    stepper = Stepper(Precision("fp32", torch.device("cpu")), stage="test")
    stepper.step = step
    return stepper


@pytest.mark.parametrize("method", ["tedspad", "spact", "temporal_invariance"])
def test_minimax_steps_update_exactly_the_intended_models(method):
    models = tiny_models()
    opt_a, opt_t, opt_b = optimizers(models)
    weights = LossWeights(method=method)
    action, images = fake_batches()
    before = {k: snapshot(m) for k, m in models.as_dict().items()}

    anonymizer_step(models, opt_a, action, images, weights=weights, stepper=_stepper(1))
    after1 = {k: snapshot(m) for k, m in models.as_dict().items()}
    assert changed_params(before["anonymizer"], models.anonymizer)
    for key in ("utility", "embedding", "budget"):  # parameters and BN statistics, bit for bit
        assert same(before[key], after1[key]), key
    for key in ("utility", "embedding", "budget"):
        assert all(p.grad is None for p in models.as_dict()[key].parameters()), key
        assert all(p.requires_grad for p in models.as_dict()[key].parameters()), key  # unfrozen again

    action2, images2 = fake_batches(seed=2)
    adversary_step(models, opt_t, opt_b, action2, images2, weights=weights, stepper=_stepper(2))
    after2 = {k: snapshot(m) for k, m in models.as_dict().items()}
    assert same(after1["anonymizer"], after2["anonymizer"])
    assert changed_params(after1["utility"], models.utility)
    assert changed_params(after1["budget"], models.budget)
    # The embedding head learns only from the temporal term.
    assert changed_params(after1["embedding"], models.embedding) == (method != "spact")


def test_anonymizer_gets_gradients_from_both_branches():
    models = tiny_models()
    weights = LossWeights(method="tedspad")
    action, images = fake_batches()
    grads = {}
    for branch in ("L_T", "L_B"):
        models.anonymizer.zero_grad(set_to_none=True)
        with frozen(models.utility, models.embedding, models.budget):
            clips = anonymize_action_batch(models.anonymizer, action, temporal=True, method="tedspad",
                                           precision=_fp32())
            if branch == "L_T":
                loss, _, _ = utility_terms(models.utility, models.embedding, clips["clip"], action["label"],
                                           weights=weights, positive=clips["positive"], negative=clips["negative"])
            else:
                v1, v2 = anonymize_views(models.anonymizer, images, precision=_fp32())
                loss = budget_terms(models.budget, v1, v2, temperature=0.1).loss
            loss.backward()
        grads[branch] = torch.cat([p.grad.flatten() for p in models.anonymizer.parameters() if p.grad is not None])
        assert grads[branch].abs().sum() > 0, branch
        for key in ("utility", "embedding", "budget"):
            assert all(p.grad is None for p in models.as_dict()[key].parameters())
    assert not torch.equal(grads["L_T"], grads["L_B"])


def _fp32():
    from aux_code.precision import Precision

    return Precision("fp32", torch.device("cpu"))


def test_spact_has_no_triplet_term():
    models = tiny_models()
    action, _ = fake_batches()
    for weights in (LossWeights(method="spact", omega=0.1), LossWeights(method="tedspad", omega=0.0)):
        assert not weights.temporal
        # No positive or negative clip is needed (nor run): the temporal term is exactly zero.
        total, terms, _ = utility_terms(models.utility, models.embedding, action["clip"], action["label"], weights=weights)
        assert terms["temporal"].item() == 0.0
        assert "triplet" not in terms
        assert total.item() == pytest.approx(terms["ce"].item(), abs=0.0)
    cfg = load_config(AnonymizationConfig, CONFIGS / "spact.yaml", check_paths=False)
    from anonymization_training.train import loss_weights

    assert cfg.loss.method == "spact" and not loss_weights(cfg).temporal
    tedspad = load_config(AnonymizationConfig, CONFIGS / "tedspad.yaml", check_paths=False)
    assert loss_weights(tedspad).temporal and tedspad.loss.omega == 0.1 and tedspad.loss.margin == 1.0


def test_tedspad_utility_loss_adds_omega_times_triplet():
    models = tiny_models()
    models.utility.eval()
    models.embedding.eval()
    action, _ = fake_batches()
    weights = LossWeights(method="tedspad", omega=0.1, margin=1.0)
    total, terms, _ = utility_terms(models.utility, models.embedding, action["clip"], action["label"], weights=weights,
                                    positive=action["positive"], negative=action["negative"])
    with torch.no_grad():
        z = [models.embedding(models.utility(action[k])[1]) for k in ("clip", "positive", "negative")]
    expected = temporal_distinctive_triplet(*z, margin=1.0)
    assert terms["triplet"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert total.item() == pytest.approx(terms["ce"].item() + 0.1 * expected.item(), rel=1e-5)


def test_non_finite_loss_names_step_and_terms():
    models = tiny_models()
    opt_a, _, _ = optimizers(models)
    action, images = fake_batches()
    images["view1"][0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"step 7.*L_B=nan"):
        anonymizer_step(models, opt_a, action, images, weights=LossWeights(), stepper=_stepper(7))


# --------------------------------------------------------------------------- losses by hand


def test_triplet_matches_hand_computation():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    p = torch.tensor([[0.6, 0.8], [1.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    n = torch.tensor([[0.0, 2.0], [1.0, 1.5], [2.0, 1.0]], dtype=torch.float64)
    # d+ = (1, 0, 3), d- = (2, 0.5, 1); max(d+ - d- + mu, 0) at mu 1: (0, 0.5, 3) -> mean 7/6.
    assert temporal_distinctive_triplet(a, p, n, margin=1.0).item() == pytest.approx(7 / 6, rel=1e-12)
    # mu 2: (1, 1.5, 4) -> mean 6.5/3.
    assert temporal_distinctive_triplet(a, p, n, margin=2.0).item() == pytest.approx(6.5 / 3, rel=1e-12)


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, t: float) -> tuple[float, float]:
    """NT-Xent written out row by row in float64 (SimCLR's definition)."""
    rows = z1.double().tolist() + z2.double().tolist()
    z = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in rows]
    n2 = len(z)
    total, hits = 0.0, 0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        sims = {j: sum(a * b for a, b in zip(z[i], z[j])) / t for j in range(n2) if j != i}
        total += -(sims[pos] - math.log(sum(math.exp(s) for s in sims.values())))
        hits += max(sims, key=sims.get) == pos
    return total / n2, hits / n2


def test_nt_xent_matches_row_by_row_computation():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for t in (0.1, 0.5):
        loss, acc = _nt_xent_loop(z1, z2, t)
        result = nt_xent(z1, z2, temperature=t)
        assert result.loss.item() == pytest.approx(loss, rel=1e-5)
        assert result.accuracy.item() == pytest.approx(acc)


# --------------------------------------------------------------------------- data and selection


def test_epoch_batches_depend_only_on_the_epoch():
    a = epoch_batches(10, batch_size=3, num_batches=5, seed=0, stream=1, epoch=4)
    assert a == epoch_batches(10, batch_size=3, num_batches=5, seed=0, stream=1, epoch=4)
    assert a != epoch_batches(10, batch_size=3, num_batches=5, seed=0, stream=1, epoch=5)
    assert all(len(b) == 3 for b in a) and len(a) == 5
    first_perm = [i for b in a[:3] for i, _ in b]
    assert len(set(first_perm)) == 9  # one permutation before the next begins
    seeds = [s for b in a for _, s in b]
    assert len(set(seeds)) == len(seeds)


def test_budget_chunks_count_every_image():
    assert [len(c) for c in budget_chunks(list(range(61)), 30)] == [30, 31]
    assert [len(c) for c in budget_chunks(list(range(60)), 30)] == [30, 30]
    assert [len(c) for c in budget_chunks(list(range(7)), 3)] == [3, 4]
    assert sum(budget_chunks(list(range(5)), 8), []) == list(range(5))


def test_selection_rule_respects_the_margin():
    initial = {"action_top1": 0.8, "budget_acc": 0.9}
    inside = selection_score("tradeoff", {"action_top1": 0.75, "budget_acc": 0.7}, initial, 0.1)
    outside = selection_score("tradeoff", {"action_top1": 0.5, "budget_acc": 0.0}, initial, 0.1)
    assert inside == pytest.approx(0.05) and outside < inside
    assert selection_score("budget_acc", {"action_top1": 0.1, "budget_acc": 0.3}, initial, 0.1) == -0.3


def test_group_carve_and_triplet_clips(tiny_world):
    splits = load_action_splits(tiny_world / "UCF101", fold=1, val_fraction=0.5, val_seed=0, by="video")
    assert {v.name for v in splits.train}.isdisjoint({v.name for v in splits.val})
    assert not {v.name for v in splits.val} & {v.name for v in splits.test}
    assert video_group(splits.train[0]) == "g02"
    source = VideoSource(splits.train[:2], cache=True)
    ds = ActionClips(source, train_transform(SIZE, scale=(0.8, 0.8), jitter_p=0.0, erase_p=0.0), clip_len=8, skip=4,
                     triplet=True, negative_distance=32)
    item = ds[(0, 123)]
    assert item["clip"].shape == item["positive"].shape == item["negative"].shape == (3, 8, SIZE, SIZE)
    assert ds[(0, 123)]["clip"].equal(item["clip"])  # a sample seed reproduces the sample
    assert not item["negative"].equal(item["clip"])


def test_group_carve_holds_out_whole_group_numbers_in_every_class(monkeypatch):
    # UCF101's splits hold out group numbers across all classes; the validation carve must too,
    # or a group seen with other classes in training would sit in validation under a new class.
    classes = ("A", "B", "C")
    train = [VideoItem(Path(f"{c}/v_{c}_g{g:02d}_c01.avi"), f"v_{c}_g{g:02d}_c01", i, c)
             for i, c in enumerate(classes) for g in range(2, 12)]

    class FakeUCF101:
        def __init__(self, root, *, fold):
            self.classes = classes

        def items(self, split):
            return train if split == "train" else train[:1]

    monkeypatch.setattr(anonymization_data, "UCF101", FakeUCF101)
    splits = load_action_splits("unused", fold=1, val_fraction=0.2, val_seed=0, by="group")
    val_groups = {video_group(v) for v in splits.val}
    assert len(val_groups) == 2 and val_groups.isdisjoint(video_group(v) for v in splits.train)
    # every class loses the same two group numbers
    assert sorted(v.class_name for v in splits.val) == ["A", "A", "B", "B", "C", "C"]


# --------------------------------------------------------------------------- end to end


def test_every_key_documented():
    lines = describe(AnonymizationConfig)
    assert not [line for line in lines if line.rstrip().endswith("#")]


def test_init_tasks_write_contract_checkpoints(init_runs):
    for name, key in (("utility", "utility"), ("identity", "anonymizer"), ("budget", "budget")):
        run_dir = init_runs / "anonymization" / name
        for ckpt in ("best.pt", "last.pt"):
            assert set(load_checkpoint(run_dir / ckpt)["models"]) == {key}
        results = json.loads((run_dir / "results.json").read_text())
        assert results["config_hash"] and results["selection"]["epoch"] == 1
        load_stored_model(run_dir / "best.pt", key)
    utility = json.loads((init_runs / "anonymization" / "utility" / "results.json").read_text())
    assert 0.0 <= utility["test_top1"] <= 1.0 and utility["test_split"] == "testlist01"
    assert list((init_runs / "anonymization" / "identity" / "grids").glob("epoch_001.png"))


@pytest.mark.parametrize("method", ["spact", pytest.param("temporal_invariance", marks=pytest.mark.slow)])
def test_minimax_end_to_end(init_runs, tiny_world, method):
    """tedspad runs end to end in the resume test."""
    config = {"spact": "spact.yaml", "temporal_invariance": "temporal_invariance.yaml"}[method]
    rc = main(["--config", str(CONFIGS / config), *paths_args(tiny_world, init_runs), *FAST, f"run.name=mm_{method}"])
    assert rc == 0
    run_dir = init_runs / "anonymization" / f"mm_{method}"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == method and results["selection"]["epoch"] == 1
    assert set(results["initial"]) == {"action_top1", "budget_loss", "budget_acc"}
    assert set(load_checkpoint(run_dir / "best.pt")["models"]) == {"anonymizer", "utility", "budget", "embedding"}
    assert (run_dir / "grids" / "epoch_000.png").is_file() and (run_dir / "grids" / "epoch_001.png").is_file()
    assert list((run_dir / "tb").iterdir())


def test_minimax_resume_equals_uninterrupted(init_runs, tiny_world):
    common = ["--config", str(CONFIGS / "tedspad.yaml"), *paths_args(tiny_world, init_runs), *FAST,
              "run.deterministic=true", "loss.negative_distance=8", "eval.every=1"]
    assert main([*common, "run.name=straight", "optim.epochs=2"]) == 0
    assert main([*common, "run.name=resumed", "optim.epochs=1"]) == 0
    assert main([*common, "run.name=resumed", "optim.epochs=2"]) == 0
    straight = init_runs / "anonymization" / "straight"
    results = json.loads((straight / "results.json").read_text())
    assert results["method"] == "tedspad" and results["selection"]["epoch"] in (1, 2)
    assert set(results["initial"]) == {"action_top1", "budget_loss", "budget_acc"}
    assert set(load_checkpoint(straight / "best.pt")["models"]) == {"anonymizer", "utility", "budget", "embedding"}
    assert all((straight / "grids" / f"epoch_00{e}.png").is_file() for e in (0, 1, 2))
    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(init_runs / "anonymization" / "resumed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("anonymizer", "utility", "budget", "embedding"):
        sa, sb = a["models"][key]["state_dict"], b["models"][key]["state_dict"]
        assert same(sa, sb), key
    assert a["history"][-1]["val_action_top1"] == b["history"][-1]["val_action_top1"]
    assert a["history"][-1]["train_step1_L_B"] == b["history"][-1]["train_step1_L_B"]


def test_missing_init_checkpoint_names_file_and_key(init_runs, tiny_world, capsys):
    rc = main(["--config", str(CONFIGS / "tedspad.yaml"), *paths_args(tiny_world, init_runs), *FAST,
               "run.name=noinit", "init.budget=anonymization/nowhere/best.pt"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "init.budget" in err and "nowhere/best.pt" in err
    assert not (init_runs / "anonymization" / "noinit").exists()


def test_empty_split_stops_before_training(tiny_world, tmp_path, capsys):
    rc = main(["--config", str(CONFIGS / "budget_ssl.yaml"), *paths_args(tiny_world, tmp_path), *FAST,
               "data.privacy_validation_fraction=0.01"])
    assert rc == 2
    assert "privacy validation split" in capsys.readouterr().err
    assert not (tmp_path / "anonymization" / "budget" / "last.pt").exists()
