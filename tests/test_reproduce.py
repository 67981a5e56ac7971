"""The reproduce script: its plan, reuse of finished steps, tables, plot, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aux_code.config import load_config
from scripts import reproduce
from scripts.reproduce import ReproduceConfig, build_plan

CONFIG = "configs/synthetic/reproduce/default.yaml"


@pytest.fixture(scope="module")
def tiny_paths(make_paths, tmp_path_factory):
    """A paths file pointing every dataset root at the session's tiny world, with runs / results
    in this module's tmp dir (shared by its tests, as the reproduce script shares them)."""
    return make_paths(tmp_path_factory.mktemp("reproduce"))


def _cfg(overrides=()):
    return load_config(ReproduceConfig, CONFIG, list(overrides), check_paths=False)


def test_plan_runs_each_shared_step_once_in_dependency_order():
    plan = build_plan(_cfg())
    keys = list(plan.steps)
    assert len(keys) == len(set(keys))
    for i, step in enumerate(plan.steps.values()):
        for need in step.needs:
            assert keys.index(need) < i, f"{step.key} runs before its input {need}"
    assert keys.count("anonymization/utility") == 1 and "anonymization/identity" in keys
    assert set(plan.tables["main"]) == {"raw", "downsample2x", "downsample4x", "blur", "blacken", "spact", "tedspad", "dpae_no_dp",
                                        "dpae_adam_nm0.5", "dpae_adam_nm1", "dpae_adagrad_nm0.5", "dpae_adagrad_nm1"}
    assert plan.points["dpae_adam_nm1"].dpae == "dpae/dpae_adam_nm1" and plan.points["tedspad"].dpae is None
    # TeD-SPAD's privacy and extraction read its own anonymizer; raw's extraction the pretrained fT.
    assert "anonymizer.checkpoint=anonymization/tedspad/best.pt" in plan.steps["privacy/tedspad"].overrides
    assert "utility.checkpoint=anonymization/tedspad/best.pt" in plan.steps["extraction/ucf_crime-tedspad"].overrides
    assert "utility.checkpoint=anonymization/utility/best.pt" in plan.steps["extraction/ucf_crime-raw"].overrides
    # MGFN once per anomaly seed on the same features
    for seed in (0, 1, 2):
        step = plan.steps[f"anomaly/ucf_crime-blur-s{seed}"]
        assert step.needs == ("extraction/ucf_crime-blur",) and f"run.seed={seed}" in step.overrides
    assert plan.points["blur"].anomaly == tuple(f"anomaly/ucf_crime-blur-s{seed}" for seed in (0, 1, 2))
    assert set(plan.probes.values()) == {("privacy/probe-raw", "raw"), ("privacy/probe-spact", "spact"), ("privacy/probe-tedspad", "tedspad")}


def test_sweeps_add_their_variants_and_tables():
    plan = build_plan(_cfg(["sweeps.run=[omega,negative_distance,utility_loss]", "sweeps.omega=[0,1]"]))
    assert plan.tables["omega"] == ["tedspad-omega0", "tedspad-omega1"]
    assert "loss.omega=1.0" in plan.steps["anonymization/tedspad-omega1"].overrides
    assert plan.tables["negative_distance"] == ["tedspad-negrandom", "tedspad-neg8", "tedspad-neg32"]
    assert plan.tables["utility_loss"] == ["spact", "tedspad", "temporal_invariance"]
    assert "loss.method=temporal_invariance" in plan.steps["anonymization/temporal_invariance"].overrides
    assert "mu" not in plan.tables


@pytest.mark.parametrize(
    "override, message",
    [("methods=[downsample2x]", "must include 'raw'"), ("methods=[raw,magic]", "unknown method 'magic'"), ("sweeps.run=[lr]", "unknown sweep"),
     ("anomaly_seeds=[]", "at least one seed"), ("anomaly_seeds=[1,1]", "each once")],
)
def test_bad_plans_are_config_errors(override, message):
    from aux_code.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _cfg([override])


def _fake_results(stage: str, name: str) -> dict:
    """What the stages' results.json hold, with numbers that depend on the method."""
    parts = name.split("-")  # privacy: <method>; anomaly: <dataset>-<method>-s<seed>
    method = parts[1] if stage in ("extraction", "anomaly") else parts[0]
    hidden = {"raw": 0.0, "tedspad": 0.3}.get(method, 0.1)
    if stage == "privacy":
        return {"test": {"cmap": 0.8 - hidden}}
    if stage == "anomaly":
        seed = int(parts[-1][1:])  # seeds 0, 1, 2 move the AUC by -1, 0, +1 points: the mean is unmoved
        return {"test": {"headline": {"metric": "auc", "value": 0.9 - hidden / 10 + (seed - 1) / 100}}}
    return {}


# Test labels of 10 privacy images (one attribute, logits falling with the index) whose AP is exactly the fake cMAP.
_FAKE_IMAGES = {0.8: [1, 0, 1, 1, 1, 1, 0, 1, 0, 0], 0.7: [1, 0, 0, 1, 1, 0, 0, 0, 0, 0], 0.5: [0, 1, 0, 1, 0, 1, 0, 1, 0, 0]}


def _fake_per_item(stage: str, run_dir: Path, results: dict) -> None:
    """The per-item test files of a fake run, giving exactly its results.json figure."""
    if stage == "privacy":
        labels = np.array(_FAKE_IMAGES[round(results["test"]["cmap"], 6)])[:, None]
        np.savez(run_dir / "test_predictions.npz", labels=labels, logits=-np.arange(10.0)[:, None], attributes=np.array(["a"]))
    elif stage == "anomaly":
        # 10 anomalous videos (one anomalous frame, score 0.5) and 10 normal ones (10 frames each); k of the
        # 100 normal frames score 1.0, the rest 0.0: frame AUC = (100 - k) / 100.
        k = round(100 * (1 - results["test"]["headline"]["value"]))
        normal = np.where(np.arange(100) < k, 1.0, 0.0)
        clips = np.concatenate([np.full(10, 0.5), normal])
        counts = np.array([1] * 10 + [10] * 10)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        np.savez(run_dir / "test_scores.npz", names=np.array([f"v{i:02d}" for i in range(20)]), labels=np.repeat([1, 0], 10),
                 num_clips=counts, offsets=offsets, clip_scores=clips, clip_span=np.array(1),
                 frame_labels=np.concatenate([np.ones(10, np.int8), np.zeros(100, np.int8)]), frame_offsets=offsets,
                 robust_rescale=np.array(False))


def test_reuse_resume_and_failure_handling(tiny_paths, monkeypatch, tmp_path):
    monkeypatch.setenv("TEDSPAD_PATHS", str(tiny_paths))
    runs = tiny_paths.parent / "runs"
    launched: list[str] = []
    fail = {"privacy/blur"}

    def launcher(step):
        launched.append(step.key)
        if step.key in fail:
            return 2
        d = runs / step.stage / step.name
        results = _fake_results(step.stage, step.name)
        (d / "results.json").write_text(json.dumps(results))
        _fake_per_item(step.stage, d, results)
        return 0

    cfg = _cfg(["methods=[raw,blur,tedspad]", "run.name=fake"])
    bad = reproduce.run(cfg, launcher=launcher)
    assert bad == 1  # privacy/blur failed; nothing needs it, so nothing else is skipped
    out = tiny_paths.parent / "results" / "reproduce" / "fake"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["points"]["tedspad"]["cmap"] == pytest.approx(0.5)
    assert summary["points"]["tedspad"]["privacy_reduction_pct"] == pytest.approx(37.5)
    assert summary["points"]["tedspad"]["anomaly_change_pct"] == pytest.approx(100 * (0.87 - 0.9) / 0.9)
    assert summary["points"]["blur"]["cmap"] is None and summary["steps"]["privacy/blur"]["status"] == "failed"
    tables = (out / "tables.md").read_text()
    # cMAP and AUC cells: mean [95% bootstrap CI] over the fakes' 10 images / 20 videos (and the 3 seeds for AUC).
    assert "| TeD-SPAD (CE + L_D) | 50.00 [19.96, 96.67] | +37.50 | 87.00 [66.66, 100.00] | 86.00-88.00 | -3.33 |" in tables, tables
    assert "| Raw (no anonymization) | 80.00 [47.78, 100.00] | +0.00 | 90.00 [70.67, 100.00] | 89.00-91.00 | +0.00 |" in tables
    assert "| Blurring (people) | n/a | n/a | 89.00 [68.99, 100.00] | 88.00-90.00 | -1.11 |" in tables
    assert "| TeD-SPAD (CE + L_D) | 70.00 [25.00, 100.00] |" in tables  # Table 1
    assert "privacy cMAP (%) [95% CI]" in tables and "anomaly AUC (%), mean [95% CI]" in tables
    ted = summary["points"]["tedspad"]
    assert ted["anomaly_runs"] == pytest.approx([0.86, 0.87, 0.88]) and ted["cmap_runs"] == pytest.approx([0.5])
    assert ted["anomaly_ci"]["per_seed"] == pytest.approx([0.86, 0.87, 0.88]) and len(ted["anomaly_ci"]["per_seed_ci"]) == 3
    assert (ted["anomaly_ci"]["low"], ted["anomaly_ci"]["high"]) == pytest.approx((0.6666, 1.0), abs=1e-4)
    assert ted["anomaly_ci"]["estimate"] == pytest.approx(ted["anomaly"]) and ted["anomaly_ci"]["resamples"] == 1000
    assert ted["cmap_ci"]["per_seed"] == pytest.approx([0.5]) and ted["cmap_ci"]["unit"] == "image"
    assert summary["bootstrap"] == {"resamples": 1000, "level": 0.95, "seed": 0} and "ci_missing" not in ted
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Second run: finished steps are reused, only the failed one is retried, and a finished run that lost
    # its per-item test file (made before the file existed) is run again so that its interval exists.
    launched.clear()
    fail.clear()
    (runs / "anomaly" / "ucf_crime-raw-s1" / "test_scores.npz").unlink()
    assert reproduce.run(cfg, launcher=launcher) == 0
    assert sorted(launched) == ["anomaly/ucf_crime-raw-s1", "privacy/blur"]

    # A changed upstream config reruns that step and everything that reads it, not the rest.
    launched.clear()
    cfg2 = _cfg(["methods=[raw,blur,tedspad]", "run.name=fake", "overrides.extraction=[extract.prefetch=7]"])
    reproduce.run(cfg2, launcher=launcher)
    assert sorted(launched) == sorted(k for k in build_plan(cfg2).steps if k.split("/")[0] in ("extraction", "anomaly"))
    assert any(p.name.startswith("ucf_crime-raw.stale-") for p in (runs / "extraction").iterdir())


def test_interval_is_na_without_a_per_item_file(tmp_path):
    """A run whose per-item file is missing or disagrees with results.json gets no interval, and says why."""
    plan = reproduce.Plan(points={"raw": reproduce.Point("Raw", "privacy/raw", ("anomaly/a-s0",))}, tables={"main": ["raw"]})
    for key in ("privacy/raw", "anomaly/a-s0"):
        (tmp_path / key).mkdir(parents=True)
    results = {"privacy/raw": {"test": {"cmap": 0.8}}, "anomaly/a-s0": {"test": {"headline": {"metric": "auc", "value": 0.9}}}}
    done = {k: {"status": "ran", "results": r, "run_dir": str(tmp_path / k)} for k, r in results.items()}
    _fake_per_item("anomaly", tmp_path / "anomaly/a-s0", {"test": {"headline": {"metric": "auc", "value": 0.8}}})  # not 0.9
    summary = reproduce.collect(plan, done, reproduce.BootstrapSection(resamples=50))
    point = summary["points"]["raw"]
    assert point["cmap_ci"] is None and "test_predictions.npz" in point["ci_missing"]["cmap_ci"]
    assert point["anomaly_ci"] is None and "results.json 0.900000" in point["ci_missing"]["anomaly_ci"]
    assert "| Raw | 80.00 [n/a] | +0.00 | 90.00 [n/a] | 90.00-90.00 | +0.00 |" in reproduce.render_tables(summary)
    reproduce.draw_tradeoff(summary, tmp_path / "t.png")  # no error bars, still a plot
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_remedies_face_methods_and_attackers_plug_in_like_the_others():
    plan = build_plan(_cfg(["methods=[raw,face_blur,tedspad,tedspad_ens,spact_entropy]", "attackers=[scratch,finetune_raw,other_arch]"]))
    ens = plan.steps["anonymization/tedspad_ens"].overrides
    for o in ("loss.method=tedspad", "budget.ensemble=3", "budget.restart_every=44", "fresh_attacker.enabled=true", "eval.select=attacker_tradeoff"):
        assert o in ens
    assert "loss.privacy=entropy" in plan.steps["anonymization/spact_entropy"].overrides
    assert "budget.ensemble=3" not in plan.steps["anonymization/tedspad"].overrides  # the paper's method is untouched
    assert "anonymizer.method=face_blur" in plan.steps["privacy/face_blur"].overrides
    for m in ("raw", "face_blur", "tedspad_ens"):
        assert "attackers.run=[scratch,finetune_raw,other_arch]" in plan.steps[f"privacy/{m}"].overrides
    # the paper's protocol alone adds no override: the stage config decides
    assert not any(o.startswith("attackers.") for o in build_plan(_cfg()).steps["privacy/raw"].overrides)
    # every remedy's stage-1 overrides are keys stage 1 knows
    from anonymization_training.config import AnonymizationConfig

    for m in ("tedspad_select", "spact_select", "tedspad_ens", "spact_ens", "tedspad_entropy", "spact_entropy"):
        load_config(AnonymizationConfig, "configs/synthetic/anonymization/tedspad.yaml", list(reproduce.LEARNED[m][1]), check_paths=False)


def test_attribute_budget_methods_start_from_their_own_supervised_budget():
    plan = build_plan(_cfg(["methods=[raw,tedspad,tedspad_attributes,spact_attributes]", "feature_probe=false"]))
    step = plan.steps["anonymization/budget_attributes"]
    assert step.config == "configs/synthetic/anonymization/budget_attributes.yaml"
    for m in ("tedspad_attributes", "spact_attributes"):
        minimax = plan.steps[f"anonymization/{m}"]
        assert "anonymization/budget_attributes" in minimax.needs and "anonymization/budget" not in minimax.needs
        assert {"budget.task=attributes", "init.budget=anonymization/budget_attributes/best.pt",
                "loss.privacy=entropy"} <= set(minimax.overrides)
    # the paper's method keeps the self-supervised budget
    assert "anonymization/budget" in plan.steps["anonymization/tedspad"].needs
    keys = list(plan.steps)
    assert keys.index("anonymization/budget_attributes") < keys.index("anonymization/tedspad_attributes")
    for k in ("anonymization/budget_attributes", "anonymization/tedspad_attributes"):
        step = plan.steps[k]
        cfg = load_config(reproduce.schema_for_stage(step.stage), step.config, list(step.argv()[2:]), check_paths=False)
        assert cfg.budget.task == "attributes"


def test_dpae_points_train_the_pair_and_run_it_as_the_anonymizer():
    plan = build_plan(_cfg(["methods=[raw,dpae_no_dp,dpae_adam_nm1]", "feature_probe=false"]))
    step = plan.steps["dpae/dpae_adam_nm1"]
    assert step.config == "configs/synthetic/dpae/dp_adam.yaml" and "dp.noise_multiplier=1.0" in step.overrides
    assert plan.steps["dpae/dpae_no_dp"].config.endswith("no_dp_adam.yaml")
    for stage, run in (("privacy", "dpae_adam_nm1"), ("extraction", "ucf_crime-dpae_adam_nm1")):
        s = plan.steps[f"{stage}/{run}"]
        assert "dpae/dpae_adam_nm1" in s.needs
        assert {"anonymizer.method=dpae", "anonymizer.encoder=dpae/dpae_adam_nm1/encoder.pt",
                "anonymizer.decoder=dpae/dpae_adam_nm1/decoder.pt"} <= set(s.overrides)
    # its features come from the baselines' fT, its table row from its own privacy and MGFN runs
    assert "utility.checkpoint=anonymization/utility/best.pt" in plan.steps["extraction/ucf_crime-dpae_adam_nm1"].overrides
    assert plan.points["dpae_adam_nm1"].privacy == "privacy/dpae_adam_nm1"
    keys = list(plan.steps)
    assert keys.index("dpae/dpae_adam_nm1") < keys.index("privacy/dpae_adam_nm1")
    # the steps parse in their stages' schemas (as the pre-flight does)
    for k in ("dpae/dpae_adam_nm1", "privacy/dpae_adam_nm1", "extraction/ucf_crime-dpae_adam_nm1"):
        step = plan.steps[k]
        load_config(reproduce.schema_for_stage(step.stage), step.config, list(step.argv()[2:]), check_paths=False)


def test_dpae_privacy_table_shows_epsilon_and_image_quality_per_method(tmp_path):
    plan = reproduce.Plan(points={"raw": reproduce.Point("Raw", "privacy/raw", ("anomaly/raw-s0",)),
                                  "dpae_no_dp": reproduce.Point("DP-AE, no DP", "privacy/n", ("anomaly/n-s0",), "dpae/n"),
                                  "dpae_adam_nm1": reproduce.Point("DP-AE, DP-Adam", "privacy/d", ("anomaly/d-s0",), "dpae/d")},
                          tables={"main": ["raw", "dpae_no_dp", "dpae_adam_nm1"]})
    done = {}
    quality = {"raw": (1.0, None, 0.0, 3), "n": (0.317, 16.06, 0.025, 1), "d": (0.205, 15.41, 0.0296, 0)}
    for key, (ssim, psnr, mse, after) in quality.items():
        leakage = {"similarity": {"images": 10, "ssim": ssim, "psnr_db": psnr, "mse": mse},
                   "faces": {"before": {"images_with_face": 3}, "after": {"images_with_face": after}},
                   "astronaut": {"faces_before": 1, "faces_after": min(after, 1)}}
        done[f"privacy/{key}"] = {"status": "ran", "results": {"test": {"cmap": 0.6}, "leakage": leakage},
                                  "run_dir": str(tmp_path / key)}
        done[f"anomaly/{key}-s0"] = {"status": "ran", "results": {"test": {"headline": {"metric": "auc", "value": 0.8}}},
                                     "run_dir": str(tmp_path / f"a{key}")}
    done["dpae/n"] = {"status": "ran", "results": {"privacy": {"private": False, "optimizer": "adam", "epsilon": None, "delta": 1e-5}}}
    done["dpae/d"] = {"status": "ran", "results": {"privacy": {"private": True, "optimizer": "dp-adam", "noise_multiplier": 1.0,
                                                                  "epsilon": 11.6759, "delta": 1e-5, "steps": 180},
                                                      "test": {"ssim": 0.289, "psnr": 16.558, "mse": 0.0227}}}
    summary = reproduce.collect(plan, done, reproduce.BootstrapSection(resamples=20))
    assert summary["points"]["dpae_adam_nm1"]["dp"]["epsilon"] == 11.6759 and summary["points"]["raw"]["dp"] is None
    rows = {line.split(" | ")[0]: line for line in reproduce.render_tables(summary).splitlines() if line.startswith("| ")}
    assert ("| 11.7 (1e-05; dp-adam, noise 1) | 0.289 / 16.56 | 0.205 | 15.41 | 0.0296 | 3 -> 0 of 10 | 1 -> 0 |"
            in rows["| DP-AE, DP-Adam"])
    assert "| none (not private) | - | 0.317 | 16.06 | 0.0250 | 3 -> 1 of 10 | 1 -> 1 |" in rows["| DP-AE, no DP"]
    assert "| - | - | 1.000 | - | 0.0000 | 3 -> 3 of 10 |" in rows["| Raw"]
    # without a DP point the table is not printed
    plan.tables["main"] = ["raw"]
    del plan.points["dpae_no_dp"], plan.points["dpae_adam_nm1"]
    assert "privacy table" not in reproduce.render_tables(reproduce.collect(plan, done, reproduce.BootstrapSection(resamples=20)))


@pytest.mark.parametrize("override, message", [("attackers=[scratch,oracle]", "unknown attacker 'oracle'"),
                                               ("attackers=[finetune_raw]", "must include 'scratch'"),
                                               ("attackers=[scratch,scratch]", "each attacker once")])
def test_bad_attacker_lists_are_config_errors(override, message):
    from aux_code.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _cfg([override])


def test_worst_case_is_the_strongest_attacker_and_the_plot_uses_it(tmp_path, monkeypatch):
    plan = reproduce.Plan(points={m: reproduce.Point(m.title(), f"privacy/{m}", (f"anomaly/{m}-s0",)) for m in ("raw", "unet")},
                          tables={"main": ["raw", "unet"]})
    # attacker cMAPs: raw scratch 0.8 / finetune_raw 0.7; unet scratch 0.5 / finetune_raw 0.7 (the worst case)
    cmaps = {"raw": {"scratch": 0.8, "finetune_raw": 0.7}, "unet": {"scratch": 0.5, "finetune_raw": 0.7}}
    done = {}
    for m, per in cmaps.items():
        run_dir = tmp_path / "privacy" / m
        for attacker, value in per.items():
            where = run_dir if attacker == "scratch" else run_dir / "attackers" / attacker
            where.mkdir(parents=True, exist_ok=True)
            _fake_per_item("privacy", where, {"test": {"cmap": value}})
        results = {"test": {"cmap": per["scratch"]}, "attackers": {a: {"cmap": v} for a, v in per.items()}}
        done[f"privacy/{m}"] = {"status": "ran", "results": results, "run_dir": str(run_dir)}
        a_dir = tmp_path / "anomaly" / m
        a_dir.mkdir(parents=True)
        a_res = {"test": {"headline": {"metric": "auc", "value": 0.9}}}
        _fake_per_item("anomaly", a_dir, a_res)
        done[f"anomaly/{m}-s0"] = {"status": "ran", "results": a_res, "run_dir": str(a_dir)}
    summary = reproduce.collect(plan, done, reproduce.BootstrapSection(resamples=50))
    unet = summary["points"]["unet"]
    assert unet["worst_case"]["attacker"] == "finetune_raw" and unet["worst_case"]["cmap"] == 0.7
    assert summary["points"]["raw"]["worst_case"]["attacker"] == "scratch"
    assert unet["worst_case"]["cmap_ci"]["per_seed"] == [0.7]  # recomputed from that attacker's own predictions
    assert unet["privacy_reduction_pct"] == pytest.approx(37.5) and unet["worst_case_reduction_pct"] == pytest.approx(12.5)
    tables = reproduce.render_tables(summary)
    assert "worst-case attacker cMAP" in tables and "(finetune_raw) | +12.50 |" in tables
    drawn = {}

    class Axes:  # records what the plot puts on the x axis
        def __getattr__(self, name):
            return lambda *a, **k: drawn.setdefault(name, []).append((a, k))

    import matplotlib.pyplot as plt

    class Fig:
        def tight_layout(self):
            pass

        def savefig(self, f, **k):
            f.write(b"png")

    monkeypatch.setattr(plt, "subplots", lambda *a, **k: (Fig(), Axes()))
    monkeypatch.setattr(plt, "close", lambda fig: None)
    reproduce.draw_tradeoff(summary, tmp_path / "t.png")
    xs = [round(a[0][0], 6) for a, _ in drawn["scatter"]]
    assert xs == [80.0, 70.0]  # raw's worst case is its scratch 0.8, unet's is finetune_raw's 0.7, not its 0.5
    assert "worst-case" in drawn["set_xlabel"][0][0][0]


def test_end_to_end_on_a_tiny_world(tiny_paths, monkeypatch):
    """The real stages, two methods, one epoch each: every table, the plot and the summary exist."""
    monkeypatch.setenv("TEDSPAD_PATHS", str(tiny_paths))
    cfg = load_config(ReproduceConfig, "configs/synthetic/reproduce/smoke.yaml", ["run.name=tiny", "run.device=cpu"], check_paths=False)
    # The tiny world has one training group per action class and a handful of items per split.
    cfg.overrides.anonymization += [
        "data.action_validation_by=video", "data.action_validation_fraction=0.5", "data.privacy_validation_fraction=0.25",
        "optim.steps_per_epoch=2", "optim.batch_size=2", "optim.image_batch_size=4", "eval.budget_batch=6",
        "eval.grid_images=3",
    ]
    cfg.overrides.privacy += ["optim.batch_size=8", "probe.batch_size=8", "probe.hidden=16"]
    assert reproduce.run(cfg) == 0
    out = tiny_paths.parent / "results" / "reproduce" / "tiny"
    summary = json.loads((out / "summary.json").read_text())
    for name in ("raw", "tedspad"):
        point = summary["points"][name]
        assert 0.0 <= point["cmap"] <= 1.0 and 0.0 <= point["anomaly"] <= 1.0
    assert all(p["cmap"] is not None for p in summary["probes"].values())
    tables = (out / "tables.md").read_text()
    assert "Table 1" in tables and "Privacy-utility trade-off" in tables
    assert (out / "tradeoff.png").stat().st_size > 1000
    _check_wiring(tiny_paths.parent / "runs", summary, tables)


def _check_wiring(runs: Path, summary: dict, tables: str) -> None:
    """Each figure comes from the run it names, and each run read the models of its method.

    A step key ``<stage>/<name>`` is the run directory ``<paths.runs>/<stage>/<name>``; the
    expected names are the plan's (test_plan_runs_each_shared_step_once_in_dependency_order)."""
    import numpy as np
    import yaml

    from aux_code.checkpoint import file_digest
    from aux_code.features import read_manifest
    from aux_code.stats import cmap_ci, frame_metric_ci

    def results(key: str) -> dict:
        return json.loads((runs / key / "results.json").read_text())

    tedspad_ckpt, utility_ckpt = "anonymization/tedspad/best.pt", "anonymization/utility/best.pt"
    tedspad_digest = file_digest(runs / tedspad_ckpt)
    assert tedspad_digest != file_digest(runs / "anonymization/identity/best.pt")

    # Stage 2: TeD-SPAD's images went through its trained fA, raw's through none.
    anonymizer = results("privacy/tedspad")["anonymizer"]
    assert (anonymizer.get("method"), anonymizer.get("checkpoint"), anonymizer.get("digest")) == ("unet", tedspad_ckpt, tedspad_digest)
    assert results("privacy/raw")["anonymizer"]["method"] == "raw"
    # Stage 3: TeD-SPAD's features are fT(fA(x)) with both models of its own minimax checkpoint.
    ted, raw = read_manifest(runs / "extraction/ucf_crime-tedspad"), read_manifest(runs / "extraction/ucf_crime-raw")
    assert (ted.anonymizer.get("method"), ted.anonymizer.get("checkpoint"), ted.anonymizer.get("digest")) == (
        "unet", tedspad_ckpt, tedspad_digest)
    assert ted.utility["checkpoint"] == tedspad_ckpt and ted.utility["checkpoint_sha"] == tedspad_digest
    assert raw.anonymizer == {"method": "raw"}
    assert raw.utility["checkpoint"] == utility_ckpt and raw.utility["checkpoint_sha"] == file_digest(runs / utility_ckpt)
    assert ted.videos.keys() == raw.videos.keys() and len(ted.videos) == 8
    for name in ted.videos:
        a = np.load(runs / "extraction/ucf_crime-tedspad" / ted.videos[name].file)
        b = np.load(runs / "extraction/ucf_crime-raw" / raw.videos[name].file)
        assert a.shape == b.shape and not np.allclose(a, b, atol=1e-4), name

    # Every row of the main table: the numbers of the privacy run and the MGFN runs it names,
    # which read the features of the same method.
    points = summary["points"]
    raw_cmap, raw_auc = results("privacy/raw")["test"]["cmap"], None
    for name, label in (("raw", "Raw (no anonymization)"), ("tedspad", "TeD-SPAD (CE + L_D)")):
        point = points[name]
        assert point["label"] == label and point["privacy_step"] == f"privacy/{name}"
        assert point["anomaly_steps"] == [f"anomaly/ucf_crime-{name}-s0"]
        config = yaml.safe_load((runs / point["anomaly_steps"][0] / "config.yaml").read_text())
        assert config["data"]["features"] == f"extraction/ucf_crime-{name}"
        cmap = results(point["privacy_step"])["test"]["cmap"]
        aucs = [results(key)["test"]["headline"]["value"] for key in point["anomaly_steps"]]
        auc = sum(aucs) / len(aucs)
        raw_auc = auc if name == "raw" else raw_auc
        reduction = -100.0 * (cmap - raw_cmap) / raw_cmap + 0.0
        change = 100.0 * (auc - raw_auc) / raw_auc + 0.0
        assert point["cmap"] == pytest.approx(cmap, abs=1e-12) and point["anomaly"] == pytest.approx(auc, abs=1e-12)
        assert point["privacy_reduction_pct"] == pytest.approx(reduction) and point["anomaly_change_pct"] == pytest.approx(change)
        # The intervals come from the runs' own per-item files (stage 2's images, stage 4's videos).
        z = np.load(runs / point["privacy_step"] / "test_predictions.npz", allow_pickle=False)
        c_ci = cmap_ci(z["labels"], [z["logits"]])
        items = [reproduce.anomaly_test_items(runs / key) for key in point["anomaly_steps"]]
        a_ci = frame_metric_ci(items[0][1], [s for _, _, s in items])
        assert c_ci.per_seed == pytest.approx([cmap], abs=1e-12) and a_ci.per_seed == pytest.approx(aucs, abs=1e-12)
        assert point["cmap_ci"]["low"] == c_ci.low and point["anomaly_ci"]["high"] == a_ci.high
        row = (f"| {label} | {100 * cmap:.2f} [{100 * c_ci.low:.2f}, {100 * c_ci.high:.2f}] | {reduction:+.2f} | "
               f"{100 * auc:.2f} [{100 * a_ci.low:.2f}, {100 * a_ci.high:.2f}] | {100 * min(aucs):.2f}-{100 * max(aucs):.2f} "
               f"| {change:+.2f} |")
        assert row in tables, (row, tables)
    # Table 1: each probe's cMAP is its run's, and the TeD-SPAD probe read TeD-SPAD's fA.
    assert {p["step"] for p in summary["probes"].values()} == {"privacy/probe-raw", "privacy/probe-tedspad"}
    for label, probe in summary["probes"].items():
        cmap = results(probe["step"])["test"]["cmap"]
        assert probe["cmap"] == pytest.approx(cmap, abs=1e-12) and probe["cmap_ci"]["per_seed"] == pytest.approx([cmap], abs=1e-12)
        assert f"| {label} | {100 * cmap:.2f} [{100 * probe['cmap_ci']['low']:.2f}, {100 * probe['cmap_ci']['high']:.2f}] |" in tables
    assert results("privacy/probe-tedspad")["anonymizer"].get("digest") == tedspad_digest
