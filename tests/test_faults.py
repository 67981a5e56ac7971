"""Fault injection (issue 15): a kill at every checkpoint write point, a full disk on every kind of
write, changed ground truth. Each test reproduces one way a run used to publish a wrong number or
lose its work, and checks what happens now: the resumed run equals the uninterrupted one, a full
disk is one line naming the file and leaves nothing half-written, a changed annotation reruns
exactly what depends on it."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import aux_code.checkpoint as checkpoint
from anomaly_detection.__main__ import main as anomaly_main
from anomaly_detection.config import AnomalyConfig
from anomaly_detection.data import AnomalyDataError, account_for_missing
from anomaly_detection.fake_features import make_fake_feature_set
from anomaly_detection.train import run as anomaly_run
from aux_code.checkpoint import checkpoint_epoch, load_checkpoint
from aux_code.config import PROJECT_ROOT, ConfigError, PathsConfig, TrainRunConfig, load_config, opt
from aux_code.datasets import DatasetError, get_anomaly_dataset
from aux_code.features import read_manifest
from aux_code.fit import Selection, StoredModel, Task, fit
from aux_code.precision import Precision
from aux_code.training import start_run
from feature_extraction.__main__ import main as extraction_main
from scripts import reproduce
from scripts.reproduce import ReproduceConfig
from tests.test_extraction_stage import FAST as EXTRACTION_FAST
from tests.test_extraction_stage import make_checkpoints
from tests.test_reproduce import _fake_per_item, _fake_results
from tests.tiny import write_paths_file

# ------------------------------------------------------------------------------------ helpers


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler of the code under test catches it."""


class WriteLog:
    """Wraps aux_code.checkpoint.atomic_write (every atomic file write of the project goes through it):
    records each target, and at write number ``kill_at`` leaves a half-written temporary, as a real
    kill would, and raises Killed instead of writing."""

    def __init__(self, monkeypatch, kill_at: int | None = None, names: tuple[str, ...] = ("last.pt", "best.pt", "results.json")):
        self.targets: list[str] = []
        self.kill_at, self.names = kill_at, names
        real = checkpoint.atomic_write

        def wrapped(path, write):
            path = Path(path)
            if path.name in self.names:
                self.targets.append(path.name)
                if len(self.targets) == self.kill_at:
                    (path.parent / f".{path.name}.killed{TEMP}").write_bytes(b"half a file")
                    raise Killed(f"killed while writing {path}")
            return real(path, write)

        monkeypatch.setattr(checkpoint, "atomic_write", wrapped)


TEMP = checkpoint.TEMP_SUFFIX


def full_disk(monkeypatch, pattern: str, *, error: int = errno.ENOSPC) -> None:
    """From now on every atomic write whose target name matches ``pattern`` (fnmatch) fails as on a
    full disk: its file's write() raises OSError(``error``, ENOSPC by default) half-way."""
    from fnmatch import fnmatch

    real_fdopen = os.fdopen

    class FullFile:
        """The disk fills up during the first write: half its bytes land, then the error."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            raise OSError(error, os.strerror(error))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f
        # atomic_write's temporaries are ".<target>.<random>.tmp": match the target's name.
        base = Path(name).name
        target = base[1:].rsplit(".", 2)[0] if base.startswith(".") and base.endswith(TEMP) else base
        return FullFile(f) if fnmatch(target, pattern) else f

    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f".*{TEMP}"))


# ------------------------------------------------------------------------------------ kills in the loop


@dataclass
class LoopConfig:
    paths: PathsConfig = opt(PathsConfig(), "paths")
    run: TrainRunConfig = opt(TrainRunConfig(), "run")


class ScriptedTask(Task):
    """A one-weight regression whose validation scores are scripted: the best epoch (3 of 5) is
    followed by worse ones, so a resumed run that lost epoch 3's best.pt write has no later
    epoch to hide it."""

    name = "scripted"
    SCORES = (0.2, 0.5, 0.9, 0.4, 0.3)

    def __init__(self):
        self.epochs = len(self.SCORES)
        self.selection = Selection("score", "max", "max scripted score")
        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.model.weight)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.x = torch.linspace(-1, 1, 8)[:, None]

    def models(self):
        return {"m": StoredModel("probe", {}, self.model)}

    def optimizers(self):
        return {"m": self.optimizer}

    def batches(self, epoch):
        return [self.x[:4], self.x[4:]]

    def train_step(self, x, stepper):
        return stepper.update({"loss": ((self.model(x) - 3 * x) ** 2).mean()}, self.optimizer)

    def validate(self, epoch):
        return {"score": self.SCORES[epoch - 1], "weight": float(self.model.weight.detach())}

    def finish(self, selected):
        return {"test_weight": float(self.model.weight.detach())}


def _fit(root: Path, name: str) -> dict:
    cfg = LoopConfig()
    cfg.paths.runs, cfg.run.name = str(root), name
    ctx = start_run(cfg, stage="loop", tensorboard=False)
    try:
        return fit(ScriptedTask(), ctx, cfg=cfg, stage="loop", precision=Precision("fp32", torch.device("cpu")))
    finally:
        ctx.finish()


REPORTED = ("selection", "selected", "last", "test_weight", "epochs")


def _weights(path: Path) -> torch.Tensor:
    return load_checkpoint(path)["models"]["m"]["state_dict"]["weight"]


def test_a_kill_at_every_checkpoint_write_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    log = WriteLog(monkeypatch)
    straight = _fit(tmp_path, "straight")
    points = list(log.targets)
    # 5 last.pt, best.pt for the 3 improving epochs, results.json.
    assert points == ["last.pt", "best.pt", "last.pt", "best.pt", "last.pt", "best.pt", "last.pt", "last.pt", "results.json"]
    assert straight["selection"]["epoch"] == 3 and straight["selection"]["value"] == 0.9
    reference = _weights(tmp_path / "loop" / "straight" / "best.pt")
    monkeypatch.undo()
    for k, target in enumerate(points, 1):
        name = f"kill{k}"
        WriteLog(monkeypatch, kill_at=k)
        with pytest.raises(Killed):
            _fit(tmp_path, name)
        monkeypatch.undo()
        run_dir = tmp_path / "loop" / name
        assert temporaries(run_dir), "the simulated kill leaves a half-written file"
        resumed = _fit(tmp_path, name)
        where = f"killed at write {k} ({target})"
        assert {key: resumed[key] for key in REPORTED} == {key: straight[key] for key in REPORTED}, where
        # The reported epoch is the one the selected checkpoint holds, with the uninterrupted run's weights.
        assert checkpoint_epoch(run_dir / "best.pt") == resumed["selection"]["epoch"] == 3, where
        assert torch.equal(_weights(run_dir / "best.pt"), reference), where
        assert not temporaries(run_dir), where


def test_a_best_checkpoint_that_disagrees_with_the_selection_is_an_error_not_a_result(tmp_path):
    """A run dir left inconsistent by an older version (best.pt of epoch 2, last.pt selecting 3)
    cannot be repaired from last.pt (epoch 5): the run stops instead of reporting epoch 2's weights
    under epoch 3's score."""
    from aux_code.checkpoint import CheckpointError, save_checkpoint

    _fit(tmp_path, "old")
    run_dir = tmp_path / "loop" / "old"
    state = load_checkpoint(run_dir / "best.pt")
    save_checkpoint({**state, "epoch": 2}, run_dir / "best.pt")
    with pytest.raises(CheckpointError, match=r"best.pt holds epoch 2 but .*last.pt \(epoch 5\) selects epoch 3"):
        _fit(tmp_path, "old")


# ------------------------------------------------------------------------------------ stages 3 and 4 on the tiny world

ANOMALY_CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "anomaly" / "default.yaml"
ANNOTATION = "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"


def _extract(world: Path, runs: Path, *extra: str) -> int:
    return extraction_main([f"paths.ucf_crime={world / 'UCF_Crime'}", f"paths.runs={runs}", *EXTRACTION_FAST, *extra])


def _mgfn_args(world: Path, runs: Path, *extra: str) -> list[str]:
    """Stage 4 on the tiny world's features: one quick epoch, no plots."""
    return [f"paths.ucf_crime={world / 'UCF_Crime'}", f"paths.runs={runs}", "data.features=extraction/default",
            "model.feature_dim=null", "optim.epochs=1", "optim.batch_per_class=2", "eval.plot_videos=0", *extra]


def _mgfn(world: Path, runs: Path, *extra: str) -> dict:
    return anomaly_run(load_config(AnomalyConfig, ANOMALY_CONFIG, _mgfn_args(world, runs, *extra)))


@pytest.fixture()
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    make_checkpoints(root)
    return root


def test_stage4_refuses_a_feature_set_with_a_failed_video_unless_told_and_records_it(tiny_world_copy, runs, capsys):
    """Item 1 and 9: 3 of 4 test videos extracted used to give an AUC without a word."""
    world = tiny_world_copy
    adapter = get_anomaly_dataset("ucf_crime", world / "UCF_Crime")
    victim = next(v for v in adapter.items("test") if v.label == 0)
    victim.path.write_bytes(b"\x00broken" * 50)
    assert _extract(world, runs) == 1
    feature_dir = runs / "extraction" / "default"
    missing = read_manifest(feature_dir).missing
    assert list(missing) == [victim.name] and missing[victim.name]["why"] == "failed" and missing[victim.name]["split"] == "test"

    with pytest.raises(AnomalyDataError, match=rf"lacks 1 video\(s\).*{victim.name} \(test, failed: .*data.exclude_failed=true"):
        _mgfn(world, runs)
    assert not (runs / "anomaly").exists()
    accepted = _mgfn(world, runs, "data.exclude_failed=true", "run.name=accepted")
    assert accepted["partial"] is False and [v["name"] for v in accepted["videos_left_out"]] == [victim.name]
    assert accepted["counts"]["test_normal"] == 1 and accepted["videos_left_out"][0]["why"] == "failed"
    partial = _mgfn(world, runs, "data.allow_partial=true", "run.name=partial")
    assert partial["partial"] is True and "PARTIAL result: 1 video(s) left out" in capsys.readouterr().out
    assert json.loads((runs / "anomaly" / "partial" / "results.json").read_text())["partial"] is True
    # The extraction can leave a named broken video out itself: exit 0, recorded in the manifest (which stage 4
    # accepts as it stands: test_missing_videos_are_accounted_for_by_name_by_failure_or_as_partial).
    assert _extract(world, runs, f"data.exclude=[{victim.name}]", "run.name=excluded") == 0
    assert read_manifest(runs / "extraction" / "excluded").missing[victim.name]["why"] == "excluded"


def test_missing_videos_are_accounted_for_by_name_by_failure_or_as_partial(tmp_path):
    missing = {"a": {"split": "test", "why": "failed", "detail": "decode"}, "b": {"split": "train", "why": "limit", "detail": "x"},
               "c": {"split": "test", "why": "excluded", "detail": "named"}}
    present = {"d": "train"}
    m = tmp_path / "manifest.json"
    with pytest.raises(AnomalyDataError, match=r"lacks 2 video\(s\) of its dataset's splits: a .*; b "):
        account_for_missing(missing, present, manifest=m)
    with pytest.raises(AnomalyDataError, match=r"lacks 1 video\(s\) of its dataset's splits: b "):
        account_for_missing(missing, present, exclude_failed=True, manifest=m)
    left, partial = account_for_missing(missing, present, exclude=["a", "b", "d"], manifest=m)
    assert [r["name"] for r in left] == ["a", "b", "c", "d"] and not partial and left[3]["split"] == "train"
    left, partial = account_for_missing(missing, present, allow_partial=True, manifest=m)
    assert partial and len(left) == 3
    with pytest.raises(AnomalyDataError, match="data.exclude names zzz"):
        account_for_missing(missing, present, exclude=["zzz"], manifest=m)


def test_an_empty_split_is_an_error_in_every_reader(tiny_world_copy, runs, capsys):
    from aux_code.datasets import UCF101, VISPR

    world = tiny_world_copy
    (world / "UCF_Crime" / "Anomaly_Train.txt").write_text("")
    assert _extract(world, runs) == 2
    assert "UCF-Crime: the train split" in capsys.readouterr().err and not (runs / "extraction").exists()
    (world / "UCF101" / "ucfTrainTestlist" / "trainlist01.txt").write_text("\n")
    with pytest.raises(DatasetError, match="UCF101: the train split .*trainlist01.txt.* has no usable item"):
        UCF101(world / "UCF101").items("train")
    for label_file in (world / "VISPR").glob("test_labels.*"):
        label_file.unlink()
    (world / "VISPR" / "test_labels.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"VISPR: the test split .*test_labels.json\) has no usable item; 1 item\(s\) were skipped"):
        VISPR(world / "VISPR", on_error="skip").items("test")


def _shift_annotation(world: Path) -> str:
    """Move the first annotated event of the first anomalous test video one frame later; returns the video."""
    path = world / "UCF_Crime" / ANNOTATION
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        parts = line.split()
        if parts[1] != "Normal":
            parts[2] = str(int(parts[2]) + 1)
            lines[i] = "  ".join(parts)
            path.write_text("\n".join(lines) + "\n")
            return parts[0][: -len(".mp4")]
    raise AssertionError("no anomalous test video")


def test_a_changed_annotation_refreshes_the_manifest_without_reextracting_and_stale_labels_are_refused(tiny_world_copy, runs):
    """Item 3, stage level: stage 3 used to keep the old intervals of finished videos."""
    world = tiny_world_copy
    assert _extract(world, runs) == 0
    feature_dir = runs / "extraction" / "default"
    before = read_manifest(feature_dir)
    stamps = {p.name: p.stat().st_mtime_ns for p in feature_dir.glob("*.npy")}
    assert before.dataset_files.keys() == {"Anomaly_Train.txt", "Anomaly_Test.txt", ANNOTATION}
    assert _mgfn(world, runs, "run.name=before")["dataset_files"]["checked_against"] == str(world / "UCF_Crime")

    video = _shift_annotation(world)
    with pytest.raises(AnomalyDataError, match=rf"{ANNOTATION} \(changed\).*Rerun feature extraction"):
        _mgfn(world, runs, "run.name=stale")
    assert _extract(world, runs) == 0
    after = read_manifest(feature_dir)
    assert {p.name: p.stat().st_mtime_ns for p in feature_dir.glob("*.npy")} == stamps  # nothing re-extracted
    assert after.videos[video].intervals[0][0] == before.videos[video].intervals[0][0] + 1
    assert after.dataset_files[ANNOTATION] != before.dataset_files[ANNOTATION]
    assert {n: e for n, e in after.videos.items() if n != video} == {n: e for n, e in before.videos.items() if n != video}
    assert _mgfn(world, runs, "run.name=after")["counts"]["test_abnormal"] == 2


def test_a_finished_extraction_rerun_says_nothing_was_left_to_extract(tiny_world, runs, capsys):
    """Item 10: a rerun used to print '0 clips at None clips/s'."""
    assert _extract(tiny_world, runs) == 0
    capsys.readouterr()
    assert _extract(tiny_world, runs) == 0
    out = capsys.readouterr().out
    assert "0 extracted, 8 finished earlier" in out and "nothing left to extract" in out and "None" not in out


# ------------------------------------------------------------------------------------ stage 4 on a fake feature set


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> Path:
    """A paths file with runs under tmp_path, and a small fake feature set in runs/extraction/fake."""
    paths = tmp_path / "paths.yaml"
    paths.write_text("runs: runs\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(paths))
    make_fake_feature_set(tmp_path / "runs" / "extraction" / "fake", train=(5, 5), test=(3, 3), clips=(8, 12))
    return tmp_path / "runs"


FAKE_ARGS = ["data.features=extraction/fake", "optim.batch_per_class=4", "optim.epochs=1", "eval.plot_videos=0"]


def _one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_stage4_results_name_the_anonymizer_of_the_manifest(fake):
    """Item 10: results.json said "anonymizer": "unknown" (it read 'kind', the manifest stores 'method')."""
    results = anomaly_run(load_config(AnomalyConfig, ANOMALY_CONFIG, FAKE_ARGS))
    assert results["anonymizer"] == read_manifest(fake / "extraction" / "fake").anonymizer["method"] == "fake"


def test_a_diverging_training_is_one_line_and_exit_2(fake, capsys):
    """Item 5: a NaN loss used to surface as a traceback (or inside BCE)."""
    assert anomaly_main([*FAKE_ARGS, "optim.lr=1e6", "optim.epochs=20", "run.name=diverge"]) == 2
    _one_error_line(capsys.readouterr().err, "python -m anomaly_detection: error: anomaly", "non-finite loss at step")


def test_a_run_name_that_leaves_the_runs_root_writes_nothing(fake, capsys):
    """Item 4: run.name=../x used to write (and overwrite) outside <paths.runs>/<stage>."""
    assert anomaly_main([*FAKE_ARGS, "run.name=../extraction/fake"]) == 2
    _one_error_line(capsys.readouterr().err, "run.name = '../extraction/fake' must name a place inside")
    assert not (fake / "extraction" / "fake" / "config.yaml").exists() and not (fake / "anomaly").exists()


def test_a_full_disk_on_any_stage4_write_is_one_line_and_leaves_nothing_half_written(fake, monkeypatch, capsys):
    """Item 6: a full disk used to surface as torch's 'enforce fail at inline_container.cc'."""
    assert anomaly_main([*FAKE_ARGS, "run.name=straight"]) == 0
    reference = json.loads((fake / "anomaly" / "straight" / "results.json").read_text())
    for target in ("last.pt", "best.pt", "results.json"):
        capsys.readouterr()
        full_disk(monkeypatch, target)
        run_dir = fake / "anomaly" / f"full-{target}"
        assert anomaly_main([*FAKE_ARGS, f"run.name={run_dir.name}"]) == 2, target
        _one_error_line(capsys.readouterr().err, f"{target}: No space left on device [ENOSPC]", "the disk is full")
        assert not temporaries(fake) and not (run_dir / target).exists() and not (run_dir / "results.json").exists()
        if (run_dir / "last.pt").exists():  # what was saved before the fault is whole, and best.pt holds its selection
            state = load_checkpoint(run_dir / "last.pt")  # or last.pt is the selected epoch itself (repaired on resume)
            assert state["best"]["best_epoch"] in (checkpoint_epoch(run_dir / "best.pt"), state["epoch"]), target
        monkeypatch.undo()
        # Space again: the same command finishes, with the uninterrupted run's result.
        monkeypatch.setenv("TEDSPAD_PATHS", str(fake.parent / "paths.yaml"))
        assert anomaly_main([*FAKE_ARGS, f"run.name={run_dir.name}"]) == 0, target
        done = json.loads((run_dir / "results.json").read_text())
        assert (done["test"], done["selection"]) == (reference["test"], reference["selection"]), target


def test_permission_denied_and_a_paths_file_that_is_a_directory_are_one_line(fake, monkeypatch, tmp_path, capsys):
    full_disk(monkeypatch, "last.pt", error=errno.EACCES)
    assert anomaly_main([*FAKE_ARGS, "run.name=denied"]) == 2
    _one_error_line(capsys.readouterr().err, "last.pt: Permission denied [EACCES]", "no permission")
    monkeypatch.undo()
    monkeypatch.setenv("TEDSPAD_PATHS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        anomaly_main(FAKE_ARGS)
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, f"paths file ($TEDSPAD_PATHS) {tmp_path} is a directory")


def test_a_full_disk_on_a_feature_write_is_one_line_and_leaves_no_feature_file(tiny_world, runs, monkeypatch, capsys):
    full_disk(monkeypatch, "*.npy")
    assert _extract(tiny_world, runs) == 2
    _one_error_line(capsys.readouterr().err, ".npy: No space left on device [ENOSPC]")
    out = runs / "extraction" / "default"
    assert not list(out.glob("*.npy")) and not temporaries(out) and not (out / "results.json").exists()
    monkeypatch.undo()
    assert _extract(tiny_world, runs) == 0 and len(list(out.glob("*.npy"))) == 8


# ------------------------------------------------------------------------------------ config files


def test_an_empty_paths_file_and_a_dotted_paths_key_are_errors_that_blame_the_right_file(tmp_path, monkeypatch):
    paths = tmp_path / "paths.yaml"
    paths.write_text("# every root commented out\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(paths))
    with pytest.raises(ConfigError, match=r"paths file \(\$TEDSPAD_PATHS\) .*paths.yaml is empty"):
        load_config(AnomalyConfig, ANOMALY_CONFIG)
    paths.write_text("runs: runs\n")
    stage = tmp_path / "anomaly.yaml"
    stage.write_text(f"_base_: {ANOMALY_CONFIG}\npaths.runs: /elsewhere\n")
    with pytest.raises(ConfigError, match=rf"config file {stage} sets 'paths.runs'; a stage config may not set paths"):
        load_config(AnomalyConfig, stage)


# ------------------------------------------------------------------------------------ the reproduce driver

REPRODUCE = "configs/synthetic/reproduce/default.yaml"
SMALL = ["methods=[raw,blur]", "anomaly_seeds=[0]", "feature_probe=false", "run.name=faults"]


class FakeLauncher:
    """Stands in for the stages: writes the results.json and per-item files a finished run leaves."""

    def __init__(self, runs: Path):
        self.runs, self.launched, self.fail = runs, [], set()

    def __call__(self, step) -> int:
        self.launched.append(step.key)
        if step.key in self.fail:
            return 2
        d = self.runs / step.stage / step.name
        results = _fake_results(step.stage, step.name)
        (d / "results.json").write_text(json.dumps(results))
        _fake_per_item(step.stage, d, results)
        return 0


@pytest.fixture()
def driver(tiny_world_copy, tmp_path, monkeypatch):
    """(world copy, runs root, results root, launcher) with $TEDSPAD_PATHS at the copy."""
    monkeypatch.setenv("TEDSPAD_PATHS", str(write_paths_file(tmp_path / "setup", tiny_world_copy)))
    runs = tmp_path / "setup" / "runs"
    return tiny_world_copy, runs, tmp_path / "setup" / "results" / "reproduce" / "faults", FakeLauncher(runs)


def _reproduce_cfg(*overrides: str, config: str = REPRODUCE) -> ReproduceConfig:
    return load_config(ReproduceConfig, config, [*SMALL, *overrides], check_paths=False)


def test_a_changed_annotation_reruns_exactly_the_steps_that_read_it(driver):
    """Item 3, driver level: the fingerprint covered configs, not dataset files, so every step was reused."""
    world, _, _, launcher = driver
    cfg = _reproduce_cfg()
    assert reproduce.run(cfg, launcher=launcher) == 0
    everything = set(launcher.launched)
    launcher.launched.clear()
    assert reproduce.run(cfg, launcher=launcher) == 0 and launcher.launched == []
    _shift_annotation(world)
    assert reproduce.run(cfg, launcher=launcher) == 0
    assert sorted(launcher.launched) == sorted(k for k in everything if k.split("/")[0] in ("extraction", "anomaly"))
    # A changed privacy label file reruns what reads VISPR (stage 1's identity / budget, stage 2), not the utility model.
    launcher.launched.clear()
    labels = next((world / "VISPR").glob("test_labels.*"))
    labels.write_bytes(labels.read_bytes() + (b"\n" if labels.suffix == ".json" else b""))
    if labels.suffix != ".json":  # a pickle with a trailing byte still loads the same dict
        labels.write_bytes(labels.read_bytes() + b".")
    assert reproduce.run(cfg, launcher=launcher) == 0
    assert "anonymization/utility" not in launcher.launched and "privacy/raw" in launcher.launched
    assert not any(k.startswith(("extraction/", "anomaly/")) for k in launcher.launched)


def test_every_steps_overrides_are_checked_before_the_first_step(driver):
    """Item 7: a typo in a per-stage override list was found only when that step was reached."""
    _, _, _, launcher = driver
    cfg = _reproduce_cfg("overrides.anomaly=[optim.epocs=1]", "overrides.privacy=[optim.lr=inf]")
    with pytest.raises(reproduce.PreflightError, match=r"2 problem\(s\) found before the first step") as e:
        reproduce.run(cfg, launcher=launcher)
    assert "unknown key 'optim.epocs'" in str(e.value) and "optim.lr = inf" in str(e.value) and launcher.launched == []


def test_missing_weight_files_are_listed_all_at_once_before_any_step(driver, capsys):
    """Item 8: the paper plan trained five privacy models before extraction found i3d_r50_kinetics.pth missing."""
    _, _, _, launcher = driver
    cfg = load_config(ReproduceConfig, "configs/reproduce/ucf_crime.yaml", ["run.name=faults"], check_paths=False)
    with pytest.raises(reproduce.PreflightError) as e:
        reproduce.run(cfg, launcher=launcher)
    message = str(e.value)
    assert "model.utility_weights = " in message and "utility.weights = " in message and "i3d_r50_kinetics.pth does not exist" in message
    assert "model.budget_weights = " in message and "model_final_checkpoint_phase999.torch" in message
    assert launcher.launched == []
    # The stage-1 checkpoints the plan makes itself are not missing.
    assert "anonymization/identity/best.pt" not in message


def test_a_worse_rerun_never_replaces_good_tables_and_a_smoke_run_says_so(driver, capsys):
    """Item 7 and 10: a failed run overwrote tables.md / summary.json with n/a; one-step smoke tables looked like results."""
    _, _, out, launcher = driver
    cfg = _reproduce_cfg()
    assert reproduce.run(cfg, launcher=launcher) == 0
    good = {n: (out / n).read_bytes() for n in ("tables.md", "summary.json", "tradeoff.png")}
    summary = json.loads(good["summary.json"])
    assert summary["smoke_run"] is None and "Smoke run" not in good["tables.md"].decode()
    launcher.fail = {"privacy/blur"}
    assert reproduce.run(_reproduce_cfg("overrides.privacy=[optim.lr=0.002]"), launcher=launcher) == 1  # stage 2 reruns
    assert {n: (out / n).read_bytes() for n in good} == good
    incomplete = (out / "tables.incomplete.md").read_text()
    assert "| Blurring (people) | n/a |" in incomplete
    assert "lacks Blurring (people): cmap" in capsys.readouterr().err
    launcher.fail = set()
    # A smoke config (one epoch per training stage) is labelled in the tables and the summary.
    smoke = _reproduce_cfg(config="configs/synthetic/reproduce/smoke.yaml")
    assert reproduce.run(smoke, launcher=launcher) == 0
    tables = (out / "tables.md").read_text()
    assert tables.startswith("> **Smoke run: these figures are not results.**") and "optim.epochs 30 -> 1" in tables
    note = json.loads((out / "summary.json").read_text())["smoke_run"]
    assert "anomaly/ucf_crime-raw-s0" in note["steps"] and any(c.startswith("anonymization optim.epochs") for c in note["changes"])


def test_a_full_disk_on_the_driver_outputs_is_one_line_and_keeps_the_earlier_ones(driver, monkeypatch, capsys):
    _, _, out, launcher = driver
    cfg = _reproduce_cfg()
    assert reproduce.run(cfg, launcher=launcher) == 0
    good = (out / "tables.md").read_bytes()
    full_disk(monkeypatch, "tables.md")
    with pytest.raises(OSError, match="tables.md"):
        reproduce.run(cfg, launcher=launcher)
    assert (out / "tables.md").read_bytes() == good and not temporaries(out)
    monkeypatch.setattr(reproduce, "run", lambda cfg: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device",
                                                                                  str(out / "tables.md"))))
    assert reproduce.main(SMALL) == 2
    _one_error_line(capsys.readouterr().err, "python -m scripts.reproduce: error:", "tables.md: No space left on device [ENOSPC]")


def test_list_entries_that_leave_the_videos_folder_are_refused(tiny_world_copy, tmp_path):
    """Item 4's rule for list entries: 'Folder/../../x.mp4' must not name a file outside the dataset."""
    from aux_code.datasets import UCF101

    outside = tiny_world_copy / "outside.mp4"
    outside.write_bytes(b"x")
    crime = tiny_world_copy / "UCF_Crime" / "Anomaly_Train.txt"
    crime.write_text(crime.read_text() + "../outside.mp4\n")
    with pytest.raises(DatasetError, match=r"Anomaly_Train.txt:\d+: '../outside.mp4' leaves .*Videos"):
        get_anomaly_dataset("ucf_crime", tiny_world_copy / "UCF_Crime").items("train")
    lists = tiny_world_copy / "UCF101" / "ucfTrainTestlist" / "testlist01.txt"
    first_class = lists.read_text().split("/")[0]
    lists.write_text(lists.read_text() + f"{first_class}/..\n")
    with pytest.raises(DatasetError, match=r"testlist01.txt:\d+: .* leaves .*Videos"):
        UCF101(tiny_world_copy / "UCF101").items("test")


def test_tables_mark_rows_whose_feature_sets_left_videos_out(tmp_path):
    """Item 9 in the driver's outputs: every row made from a set with videos left out says which."""
    plan = reproduce.Plan(points={"raw": reproduce.Point("Raw", "privacy/raw", ("anomaly/a-s0",)),
                                  "blur": reproduce.Point("Blur", "privacy/blur", ("anomaly/b-s0",))}, tables={"main": ["raw", "blur"]})
    anomaly = {"test": {"headline": {"metric": "auc", "value": 0.9}}}
    results = {"privacy/raw": {"test": {"cmap": 0.8}}, "privacy/blur": {"test": {"cmap": 0.7}},
               "anomaly/a-s0": {**anomaly, "partial": True, "videos_left_out": [{"name": "v1", "why": "failed"}]},
               "anomaly/b-s0": {**anomaly, "partial": False, "videos_left_out": [{"name": "v2", "why": "excluded"}]}}
    for key in results:
        (tmp_path / key).mkdir(parents=True)
    done = {k: {"status": "ran", "results": r, "run_dir": str(tmp_path / k)} for k, r in results.items()}
    summary = reproduce.collect(plan, done, reproduce.BootstrapSection(resamples=10))
    assert summary["points"]["raw"]["partial"] is True and summary["points"]["raw"]["videos_left_out"] == ["v1"]
    assert summary["points"]["blur"]["partial"] is False and summary["points"]["blur"]["videos_left_out"] == ["v2"]
    tables = reproduce.render_tables(summary)
    assert "| Raw (partial) |" in tables and "| Blur * |" in tables
    assert "Raw (partial: videos missing from its feature set): 1 video(s): v1" in tables
    assert "Blur (* videos left out by name): 1 video(s): v2" in tables


@pytest.mark.slow
def test_stage4_killed_at_every_checkpoint_write_reports_the_uninterrupted_selection(fake, monkeypatch):
    """The issue's stage-4 case (epoch 2's weights tested under epoch 4's validation score), through the real
    MGFN task: a kill at each write of last.pt / best.pt / results.json, then the same command again."""
    args = [*FAKE_ARGS, "optim.epochs=4", "eval.every=1"]
    log = WriteLog(monkeypatch)
    assert anomaly_main([*args, "run.name=straight"]) == 0
    monkeypatch.undo()
    straight = json.loads((fake / "anomaly" / "straight" / "results.json").read_text())
    for k, target in enumerate(log.targets, 1):
        monkeypatch.setenv("TEDSPAD_PATHS", str(fake.parent / "paths.yaml"))
        WriteLog(monkeypatch, kill_at=k)
        with pytest.raises(Killed):
            anomaly_main([*args, f"run.name=kill{k}"])
        monkeypatch.undo()
        monkeypatch.setenv("TEDSPAD_PATHS", str(fake.parent / "paths.yaml"))
        assert anomaly_main([*args, f"run.name=kill{k}"]) == 0, (k, target)
        resumed = json.loads((fake / "anomaly" / f"kill{k}" / "results.json").read_text())
        assert (resumed["selection"], resumed["test"]) == (straight["selection"], straight["test"]), (k, target)
        assert checkpoint_epoch(fake / "anomaly" / f"kill{k}" / "best.pt") == resumed["selection"]["epoch"], (k, target)


def test_a_run_resumed_by_hand_after_its_dataset_files_changed_is_refused(tiny_world_copy, tmp_path, monkeypatch, capsys):
    """Item 3 for the stages the driver does not guard: a stage-2 run resumed by hand after the
    privacy labels changed would finish on other labels than its first epochs saw."""
    from privacy_training.__main__ import main as privacy_main

    monkeypatch.setenv("TEDSPAD_PATHS", str(write_paths_file(tmp_path / "root", tiny_world_copy)))
    args = ["--config", str(PROJECT_ROOT / "configs/synthetic/privacy/default.yaml"), "clip.resolution=32",
            "optim.batch_size=8", "data.anonymize_batch=16", "schedule.warmup_epochs=1", "run.name=labels"]
    assert privacy_main([*args, "optim.epochs=1"]) == 0
    boxes = tiny_world_copy / "VISPR" / "person_boxes_train2017.json"
    boxes.write_text(json.dumps(json.loads(boxes.read_text()), indent=1))  # same boxes, another file
    capsys.readouterr()
    assert privacy_main([*args, "optim.epochs=2"]) == 2
    err = capsys.readouterr().err
    _one_error_line(err, "dataset files changed since the run started", "paths.vispr/person_boxes_train2017.json (changed)", "run.name")
    # unchanged files resume as before
    assert privacy_main([*args, "optim.epochs=2", "run.name=labels2"]) == 0
    assert privacy_main([*args, "optim.epochs=3", "run.name=labels2"]) == 0


def test_a_partial_metrics_line_from_a_full_disk_is_dropped_when_the_run_resumes(tmp_path):
    from aux_code.runtime import MetricLogger, read_metrics

    logger = MetricLogger(tmp_path, tensorboard=False)
    logger.log(1, {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"time": 1, "phase": "train", "st')  # the write a full disk cut off
    resumed = MetricLogger(tmp_path, tensorboard=False)
    resumed.log(2, {"loss": 0.5})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 0.5)]
