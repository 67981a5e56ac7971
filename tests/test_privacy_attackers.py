"""Stage 2's attackers the anonymizer never saw (privacy_training.attackers): config errors, the worst case,
chance on a constant anonymizer and raw-level cMAP on the identity, finetune_raw's start, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aux_code.checkpoint import file_digest, load_checkpoint
from aux_code.config import PROJECT_ROOT, ConfigError, load_config
from aux_code.metrics import cmap
from aux_code.training import start_run
from privacy_training.attackers import build_paper_target, finetune_start, isolated_rng, run_target_attackers, worst_case
from privacy_training.config import PrivacyConfig
from privacy_training.data import PreparedSplit, PrivacyData, anonymize_frames
from privacy_training.target import TargetTask

CONFIGS = PROJECT_ROOT / "configs" / "synthetic" / "privacy"
ALL = "attackers.run=[scratch,finetune_raw,other_arch]"
FAST = ["clip.resolution=32", "optim.epochs=2", "optim.batch_size=8", "data.anonymize_batch=16", "schedule.warmup_epochs=1",
        "leakage.astronaut=false"]


def _config(overrides: list[str]) -> PrivacyConfig:
    return load_config(PrivacyConfig, CONFIGS / "default.yaml", overrides, check_paths=False)


# --------------------------------------------------------------------------- config and worst case


@pytest.mark.parametrize("override, message", [
    ("attackers.run=[scratch,fgsm]", "attackers.run[1] = 'fgsm'"),
    ("attackers.run=[other_arch]", "must include 'scratch'"),
    ("attackers.run=[scratch,other_arch,other_arch]", "names other_arch more than once"),
    ("attackers.other_model=vgg99", "attackers.other_model = 'vgg99' is not a target architecture"),
    ("attackers.other_model=resnet_tiny", "other_arch needs a different architecture"),
    ("bootstrap.resamples=0", "bootstrap: resamples = 0"),
])
def test_bad_attacker_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config([ALL, override] if "attackers.run" not in override else [override])


def test_known_attackers_load():
    cfg = _config([ALL])
    assert cfg.attackers.run == ["scratch", "finetune_raw", "other_arch"] and cfg.attackers.other_model == "mobilenet_tiny"


def test_worst_case_is_the_attacker_with_the_highest_cmap():
    entries = {"scratch": {"cmap": 0.61, "cmap_ci": {"low": 0.58}}, "finetune_raw": {"cmap": 0.70, "cmap_ci": {"low": 0.66}},
               "other_arch": {"cmap": 0.64, "cmap_ci": {"low": 0.60}}}
    assert worst_case(entries) == {"attacker": "finetune_raw", "cmap": 0.70, "cmap_ci": {"low": 0.66}}
    # A tie goes to the first attacker of the list (the paper's, when it is first).
    assert worst_case({"scratch": entries["scratch"], "other_arch": {**entries["scratch"]}})["attacker"] == "scratch"


def test_isolated_rng_seeds_inside_and_restores_outside():
    """An attacker's random numbers depend only on its seed, and the next attacker's stream is untouched."""
    import random

    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    outside = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with isolated_rng(3, torch.device("cpu")):
        inside = (torch.rand(4), np.random.rand(2), random.random())
    assert torch.equal(torch.get_rng_state(), outside[0]) and np.array_equal(np.random.get_state()[1], outside[1])
    assert random.getstate() == outside[2]
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    assert torch.equal(inside[0], torch.rand(4)) and np.array_equal(inside[1], np.random.rand(2)) and inside[2] == random.random()


# --------------------------------------------------------------------------- the attackers on a small in-memory set

COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
ATTRIBUTES = ("red", "green", "blue")


def _learnable(n: int, seed: int, *, side: int = 16, cell: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, side, side) in [0, 1] where attribute j is a square of colour j in a random cell; labels (n, 3)."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, len(ATTRIBUTES), generator=g) < 0.4).float()
    images = 0.4 + 0.05 * torch.rand(n, 3, side, side, generator=g)
    per_row = side // cell
    for i in range(n):
        cells = torch.randperm(per_row * per_row, generator=g)
        for k, j in enumerate(torch.nonzero(labels[i]).flatten().tolist()):
            r, c = divmod(int(cells[k]), per_row)
            images[i, :, r * cell + 1 : (r + 1) * cell - 1, c * cell + 1 : (c + 1) * cell - 1] = COLOURS[j][:, None, None]
    return images, labels


class Constant(torch.nn.Module):
    """An anonymizer that keeps nothing: every image becomes the same grey."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 0.5)


def _data(anonymizer: torch.nn.Module, key: str) -> PrivacyData:
    """The learnable set's three splits through ``anonymizer`` (stage 2's fA pass: anonymize_frames)."""
    splits = {}
    for name, n, seed in (("train", 128, 0), ("val", 32, 1), ("test", 64, 2)):
        images, labels = _learnable(n, seed)
        out = anonymize_frames(anonymizer.eval(), images, batch=64, device=torch.device("cpu"))
        splits[name] = PreparedSplit(images=out, labels=labels, ids=[f"{name}{i}" for i in range(n)])
    return PrivacyData(splits, key, {}, None, False, 0.0, [])


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory):
    """Every attacker on the identity and on a constant anonymizer of the learnable set; returns
    (runs root, {anonymizer: results}, captured {task name: initial parameters})."""
    root = tmp_path_factory.mktemp("attackers")
    raw = _data(torch.nn.Identity(), "raw")
    started: dict[str, dict[str, torch.Tensor]] = {}
    original_init = TargetTask.__init__

    def recording_init(self, model, *args, **kwargs):
        # What each trained task starts from, before fit touches it (finetune_raw must start from raw weights).
        started.setdefault(kwargs.get("name", "target"), {k: v.detach().clone() for k, v in model.state_dict().items()})
        original_init(self, model, *args, **kwargs)

    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TargetTask, "__init__", recording_init)
        for name, anonymizer in (("identity", torch.nn.Identity()), ("constant", Constant())):
            cfg = _config([f"paths.runs={root}", "paths.vispr=/nonexistent", ALL, "optim.epochs=5", "optim.batch_size=32",
                           "schedule.warmup_epochs=1", "augment.flip=false", "augment.min_crop_scale=1.0",
                           "bootstrap.resamples=200", f"run.name={name}"])
            ctx = start_run(cfg, stage="privacy", tensorboard=False)
            try:
                model, spec = build_paper_target(cfg, len(ATTRIBUTES))
                results[name] = run_target_attackers(cfg, ctx, model=model, spec=spec, data=_data(anonymizer, name),
                                                     attributes=ATTRIBUTES, raw_data=lambda: raw,
                                                     scratch_extra=lambda test: {}, log=lambda msg: None)
            finally:
                ctx.finish()
    return root, results, started


def test_constant_anonymizer_leaves_every_attacker_at_chance(in_memory):
    _, results, _ = in_memory
    entries = results["constant"]["attackers"]
    assert set(entries) == {"scratch", "finetune_raw", "other_arch"}
    for name, entry in entries.items():
        # Every test image is the same: every attacker scores them alike, so each AP is the positive rate.
        assert entry["cmap"] == pytest.approx(entry["chance_cmap"], abs=1e-6), name  # chance: float32 label means


def test_identity_anonymizer_leaves_the_raw_cmap(in_memory):
    root, results, _ = in_memory
    entries = results["identity"]["attackers"]
    pretrain = next((root / "privacy" / "attacker_pretrain").iterdir())
    raw_scratch = json.loads((pretrain / "results.json").read_text())["test"]["cmap"]
    # The raw pre-training is the paper's attacker on raw images: on the identity, scratch is that attacker.
    assert entries["scratch"]["cmap"] == pytest.approx(raw_scratch, abs=1e-12)
    assert raw_scratch > 0.9 and entries["finetune_raw"]["cmap"] > 0.9
    assert entries["other_arch"]["cmap"] > entries["other_arch"]["chance_cmap"] + 0.1


def test_results_hold_every_attacker_its_interval_and_the_worst_case(in_memory):
    _, results, _ = in_memory
    for res in results.values():
        entries = res["attackers"]
        assert res["worst_case"]["cmap"] == max(e["cmap"] for e in entries.values())
        assert entries[res["worst_case"]["attacker"]]["cmap"] == res["worst_case"]["cmap"]
        assert entries["scratch"]["cmap"] == res["test"]["cmap"]  # the paper protocol stays the headline
        for name, e in entries.items():
            ci = e["cmap_ci"]
            assert ci["low"] <= e["cmap"] <= ci["high"] and ci["resamples"] == 200 and ci["unit"] == "image", name
            with np.load(e["predictions"], allow_pickle=False) as z:
                assert cmap(z["labels"], z["logits"]).cmap == pytest.approx(e["cmap"], abs=1e-12), name
            assert set(e["per_attribute_ap"]) <= set(ATTRIBUTES)
    paths = {e["predictions"] for res in results.values() for e in res["attackers"].values()}
    assert len(paths) == 6  # one file per attacker and run


def test_finetune_raw_starts_from_the_raw_trained_weights(in_memory):
    root, results, started = in_memory
    best = next((root / "privacy" / "attacker_pretrain").iterdir()) / "best.pt"
    trained = load_checkpoint(best, what="pre-training")["models"]["target"]["state_dict"]
    start = started["finetune_raw"]
    assert set(start) == set(trained)
    assert all(torch.equal(start[k], trained[k]) for k in trained)
    # ... and those are not the weights a fresh model starts from.
    fresh = started["raw_pretrain"]
    assert any(not torch.equal(fresh[k], trained[k]) for k in trained if trained[k].is_floating_point())
    init = results["identity"]["attackers"]["finetune_raw"]["model"]["init"]
    assert init["digest"] == file_digest(best) and init["checkpoint"] == str(best)
    # The unit the stage uses loads the same weights.
    cfg = _config([])
    model, _, _ = finetune_start(cfg, len(ATTRIBUTES), best)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- the CLI on the tiny world


@pytest.fixture()
def paths_env(make_paths, tmp_path, monkeypatch):
    make_paths(tmp_path)
    monkeypatch.setenv("TEDSPAD_PATHS", str(tmp_path / "paths.yaml"))
    return tmp_path


def test_cli_attackers_keep_the_scratch_numbers_bit_identical(paths_env):
    from privacy_training.__main__ import main

    world = paths_env
    base = ["--config", str(CONFIGS / "blur.yaml"), *FAST, "eval.compare_to=null"]
    assert main([*base, "run.name=one"]) == 0
    assert main([*base, "run.name=three", ALL]) == 0
    one, three = (json.loads((world / "runs" / "privacy" / n / "results.json").read_text()) for n in ("one", "three"))
    for key in ("test", "validation", "selection", "selected"):
        assert one[key] == three[key], key
    with np.load(world / "runs" / "privacy" / "one" / "test_predictions.npz") as a, \
            np.load(world / "runs" / "privacy" / "three" / "test_predictions.npz") as b:
        assert np.array_equal(a["logits"], b["logits"])
    assert list(one["attackers"]) == ["scratch"] and one["worst_case"]["attacker"] == "scratch"
    assert set(three["attackers"]) == {"scratch", "finetune_raw", "other_arch"}
    assert (world / "runs" / "privacy" / "three" / "attackers" / "other_arch" / "test_predictions.npz").is_file()
    assert three["attackers"]["other_arch"]["model"]["name"] == "mobilenet_tiny"
    # Person boxes: every tiny-world image has a ground-truth person, none went unboxed.
    assert three["boxes"]["kind"] == "person" and three["boxes"]["total"]["images"] == 36
    assert three["boxes"]["total"]["without_box"] == 0
    # A rerun re-evaluates every attacker from its own folder, the raw pre-training included.
    pretrains = sorted((world / "runs" / "privacy" / "attacker_pretrain").iterdir())
    assert main([*base, "run.name=three", ALL]) == 0
    again = json.loads((world / "runs" / "privacy" / "three" / "results.json").read_text())
    assert {k: v["cmap"] for k, v in again["attackers"].items()} == {k: v["cmap"] for k, v in three["attackers"].items()}
    assert sorted((world / "runs" / "privacy" / "attacker_pretrain").iterdir()) == pretrains and len(pretrains) == 1


def test_cli_unknown_attacker_stops_before_work(paths_env, capsys):
    from privacy_training.__main__ import main

    with pytest.raises(SystemExit) as done:  # the shared CLI parser exits with status 2 on a config error
        main(["--config", str(CONFIGS / "default.yaml"), "attackers.run=[scratch,oracle]"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "attackers.run[1] = 'oracle'" in err and "'finetune_raw'" in err
    assert not (paths_env / "runs" / "privacy" / "raw").exists()
