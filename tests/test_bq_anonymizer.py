"""The blur + quantize anonymizer (``bq``, BDQ without the temporal difference): its contract,
that it starts near the identity and can only discard information, that it travels between
stages as a stored record, and the stage-1 remedy that trains it (configs, reproduce plan, CLI)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from anonymization_training.__main__ import main as anonymization_main
from anonymization_training.config import AnonymizationConfig
from anonymization_training.train import fresh_anonymizer
from aux_code.checkpoint import load_checkpoint, save_checkpoint
from aux_code.config import ConfigError, load_config
from aux_code.models import BlurQuantizeAnonymizer, anonymize_clip, available_models, build_anonymizer
from aux_code.models.stored import build_packed, load_stored_model, pack_model
from scripts import reproduce
from scripts.reproduce import ReproduceConfig, build_plan

from tests.tiny import ANONYMIZATION_CONFIGS as CONFIGS, ANONYMIZATION_FAST as FAST
from tests.tiny import anonymization_paths as paths_args


def _smooth(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1]: bilinearly upsampled 4x4 noise (natural-image-like, little high frequency)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def _noise(n: int = 4, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _high_frequency_energy(x: torch.Tensor) -> float:
    """Energy of the spectrum outside the central quarter of frequencies (|f| > 1/4 cycle per pixel on either axis)."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)), dim=(-2, -1)).abs() ** 2
    h, w = x.shape[-2:]
    low = torch.zeros(h, w, dtype=torch.bool)
    low[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    return float(spectrum[..., ~low].sum())


def _set_sigma(model: BlurQuantizeAnonymizer, sigma: float) -> None:
    frac = (sigma - model.sigma_min) / (model.sigma_max - model.sigma_min)
    with torch.no_grad():
        model.sigma_logit.fill_(float(torch.logit(torch.tensor(frac))))


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_shape_range_and_clip_layout(mode):
    model = build_anonymizer(name="bq").train(mode == "train")
    x = _noise(5, 24)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    clip = torch.rand(2, 3, 4, 24, 24)
    out = anonymize_clip(model, clip)
    assert out.shape == clip.shape
    torch.testing.assert_close(out[1, :, 2], model(clip[1, :, 2][None])[0])
    with pytest.raises(ValueError, match="anonymize_clip"):
        model(clip)
    with pytest.raises(ValueError, match="blur radius"):
        model(torch.rand(1, 3, 5, 5))  # sigma_max 2: radius 6 does not fit reflect padding


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_near_identity_at_init(mode):
    model = build_anonymizer(name="bq").train(mode == "train")
    x = _smooth()
    assert model.sigma().item() == pytest.approx(0.5, abs=1e-5)
    err = (model(x) - x).abs()
    assert err.mean().item() < 0.03 and err.max().item() < 0.08
    # the thresholds are the midpoints of 16 uniform levels
    torch.testing.assert_close(model.thresholds(), (torch.arange(1, 16) - 0.5) / 15)
    # and eval mode is exactly the blurred input rounded to them
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.round(model.blur(x) * 15) / 15)


def test_gradients_reach_sigma_thresholds_and_input():
    model = build_anonymizer(name="bq").train()
    x = _smooth().requires_grad_(True)
    target = _smooth(seed=3)
    F.mse_loss(model(x), target).backward()
    assert model.sigma_logit.grad is not None and float(model.sigma_logit.grad.abs()) > 0
    grad = model.threshold_increments.grad
    assert grad is not None and grad.shape == (15,) and float(grad.abs().min()) > 0
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_output_takes_at_most_k_values_per_channel():
    model = build_anonymizer(name="bq", levels=4, temperature=1e6)
    x = _noise(8, 32)
    model.eval()
    hard = model(x)
    for c in range(3):
        assert hard[:, c].unique().numel() <= 4
    torch.testing.assert_close(hard * 3, torch.round(hard * 3))  # the levels 0, 1/3, 2/3, 1
    # the soft staircase fA trains through is the hard one at a large temperature
    model.train()
    soft = model(x)
    assert float((soft - hard).abs().gt(1e-3).float().mean()) < 1e-3
    for c in range(3):
        assert soft[:, c].round(decimals=3).unique().numel() <= 4


def test_thresholds_stay_sorted_after_a_large_step():
    torch.manual_seed(0)
    model = build_anonymizer(name="bq")
    before = model.thresholds().detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    # alternating signs push neighbouring thresholds past each other by about lr = 1 >> their 1/15 spacing
    weights = torch.tensor([(-1.0) ** k * (k + 1) for k in range(15)])
    for _ in range(3):
        opt.zero_grad()
        (weights * model.thresholds()).sum().backward()
        opt.step()
    after = model.thresholds().detach()
    assert not torch.allclose(after, before, atol=1e-2)
    assert bool((after[1:] >= after[:-1]).all()) and float(after[0]) >= 0.0
    # so the hard map stays monotone in the input
    x = torch.linspace(0, 1, 101).view(1, 1, 1, -1).expand(1, 3, 32, -1).contiguous()
    model.eval()
    y = model.quantize(x)
    assert bool((y[..., 1:] >= y[..., :-1]).all())


def test_larger_sigma_removes_more_high_frequencies():
    model = build_anonymizer(name="bq")
    x = _noise(4, 32)
    energies = []
    for sigma in (0.5, 1.0, 1.9):
        _set_sigma(model, sigma)
        assert model.sigma().item() == pytest.approx(sigma, rel=1e-4)
        with torch.no_grad():
            energies.append(_high_frequency_energy(model.blur(x)))
    raw = _high_frequency_energy(x)
    assert raw > energies[0] > energies[1] > energies[2]
    assert energies[2] < 0.01 * raw
    # the blur keeps the mean (a normalised kernel) and sigma stays inside its bounds at any logit
    torch.testing.assert_close(model.blur(x).mean(), x.mean(), atol=1e-3, rtol=0)
    for logit in (-50.0, 50.0):
        with torch.no_grad():
            model.sigma_logit.fill_(logit)
        assert model.sigma_min <= model.sigma().item() <= model.sigma_max


def test_registry_builds_bq():
    assert "bq" in available_models("anonymizer")
    model = build_anonymizer(name="bq")
    assert isinstance(model, BlurQuantizeAnonymizer) and model.levels == 16
    assert sum(p.numel() for p in model.parameters()) == 16
    small = build_anonymizer(name="bq", levels=8, sigma_max=1.5, temperature=20.0)
    assert small.levels == 8 and small.radius == 5 and small.temperature == 20.0
    assert sum(p.numel() for p in small.parameters()) == 8
    with pytest.raises(TypeError, match="does not take"):
        build_anonymizer(name="bq", width=8)
    with pytest.raises(ValueError, match="levels"):
        build_anonymizer(name="bq", levels=1)


def test_stored_record_round_trip(tmp_path):
    spec = {"name": "bq", "levels": 8, "temperature": 20.0, "sigma_max": 1.5}
    model = build_anonymizer(**spec)
    with torch.no_grad():
        model.sigma_logit.add_(0.7)
        model.threshold_increments.add_(torch.linspace(-0.5, 0.5, 7))
    rebuilt = build_packed(pack_model("anonymizer", spec, model), source="test")
    assert isinstance(rebuilt, BlurQuantizeAnonymizer)
    assert (rebuilt.levels, rebuilt.temperature, rebuilt.sigma_max) == (8, 20.0, 1.5)
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    x = _noise(2, 32)
    for mode in (True, False):
        model.train(mode), rebuilt.train(mode)
        with torch.no_grad():
            assert torch.equal(model(x), rebuilt(x))
    # through a checkpoint file, as stages 2 and 3 load it (eval mode: the hard staircase)
    save_checkpoint({"models": {"anonymizer": pack_model("anonymizer", spec, model)}}, tmp_path / "best.pt")
    loaded, loaded_spec = load_stored_model(tmp_path / "best.pt", "anonymizer")
    assert loaded_spec == spec and not loaded.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --------------------------------------------------------------------------- stage 1 configs and the reproduce plan


@pytest.mark.parametrize("name, method", [("tedspad_bq.yaml", "tedspad"), ("spact_bq.yaml", "spact")])
def test_stage1_configs_build_a_fresh_bq(name, method):
    cfg = load_config(AnonymizationConfig, CONFIGS / name, [], check_paths=False)
    assert cfg.model.anonymizer == "bq" and cfg.init.anonymizer is None and cfg.init_path("anonymizer") is None
    assert cfg.loss.method == method and cfg.fresh_attacker.enabled and cfg.eval.select == "attacker_tradeoff"
    assert cfg.optim.lr_anonymizer == pytest.approx(1e-2)
    model, spec = fresh_anonymizer(cfg)
    # the base file's UNet width is not passed to bq
    assert spec == {"name": "bq", "levels": 16, "temperature": 50.0, "sigma_max": 2.0}
    assert isinstance(model, BlurQuantizeAnonymizer)


@pytest.mark.parametrize("override, message", [
    ("model.anonymizer_levels=1", "model.anonymizer_levels"),
    ("model.anonymizer_temperature=0", "model.anonymizer_temperature"),
    ("model.anonymizer_sigma_max=0.4", "model.anonymizer_sigma_max"),
])
def test_bad_bq_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(AnonymizationConfig, CONFIGS / "tedspad_bq.yaml", [override], check_paths=False)


def test_reproduce_plan_trains_bq_fresh():
    plan = build_plan(load_config(ReproduceConfig, "configs/synthetic/reproduce/default.yaml",
                                  ["methods=[raw,tedspad_bq,spact_bq]", "feature_probe=false"], check_paths=False))
    for m, method in (("tedspad_bq", "tedspad"), ("spact_bq", "spact")):
        step = plan.steps[f"anonymization/{m}"]
        assert {"model.anonymizer=bq", "init.anonymizer=null", f"loss.method={method}"} <= set(step.overrides)
        cfg = load_config(reproduce.schema_for_stage(step.stage), step.config, list(step.argv()[2:]), check_paths=False)
        assert cfg.model.anonymizer == "bq" and cfg.init.anonymizer is None
        assert cfg.fresh_attacker.enabled and cfg.optim.lr_anonymizer == pytest.approx(1e-2)
        assert fresh_anonymizer(cfg)[1]["name"] == "bq"
        # stages 2 and 3 load it as any trained fA
        for stage, run in (("privacy", m), ("extraction", f"ucf_crime-{m}")):
            s = plan.steps[f"{stage}/{run}"]
            assert {"anonymizer.method=unet", f"anonymizer.checkpoint=anonymization/{m}/best.pt"} <= set(s.overrides)


# --------------------------------------------------------------------------- end to end on the tiny world


def test_bq_minimax_then_stage2(init_runs, tiny_world, capsys):
    """1 epoch of the bq minimax through the stage-1 CLI, then stage 2 loads its fA by anonymizer.method=unet."""
    where = [*paths_args(tiny_world, init_runs), *FAST]
    minimax = ["--config", str(CONFIGS / "tedspad_bq.yaml"), *where, "model.anonymizer=bq", "loss.negative_distance=8",
               "fresh_attacker.steps=20", "fresh_attacker.batch_size=4", "fresh_attacker.attackers=1",
               "fresh_attacker.validation_fraction=0.4"]
    # a UNet init under a bq run's name is refused rather than trained
    assert anonymization_main([*minimax, "run.name=bq_wrong_init", "init.anonymizer=anonymization/identity/best.pt"]) == 2
    assert "set init.anonymizer = null" in capsys.readouterr().err
    assert anonymization_main([*minimax, "run.name=bq"]) == 0
    run_dir = init_runs / "anonymization" / "bq"
    record = load_checkpoint(run_dir / "best.pt")["models"]["anonymizer"]
    assert record["kind"] == "anonymizer" and record["spec"]["name"] == "bq"
    assert set(record["state_dict"]) == {"sigma_logit", "threshold_increments"}
    start = build_anonymizer(**record["spec"]).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in record["state_dict"].items())  # fA was trained
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["selected"]["attacker_cmap"] <= 1.0

    from privacy_training.__main__ import main as privacy_main

    privacy = ["--config", "configs/synthetic/privacy/default.yaml", f"paths.vispr={tiny_world / 'VISPR'}",
               f"paths.runs={init_runs}", "clip.resolution=32", "optim.epochs=1", "optim.batch_size=8",
               "data.anonymize_batch=16", "schedule.warmup_epochs=1", "leakage.enabled=false", "run.name=bq",
               "anonymizer.method=unet", "anonymizer.checkpoint=anonymization/bq/best.pt"]
    assert privacy_main(privacy) == 0
    out = json.loads((init_runs / "privacy" / "bq" / "results.json").read_text())
    assert out["anonymizer"]["method"] == "unet" and out["anonymizer"]["spec"]["name"] == "bq"
    assert 0.0 < out["test"]["cmap"] <= 1.0
