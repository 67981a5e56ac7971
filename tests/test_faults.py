"""Fault injection (issue 15): a kill at every checkpoint write point, a full disk on every kind of
write, changed ground truth. Each test reproduces one way a run used to publish a wrong number or
lose its work, and checks what happens now: the resumed run equals the uninterrupted one, a full
disk is one line naming the file and leaves nothing half-written, a changed annotation reruns
exactly what depends on it."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import aux_code.checkpoint as checkpoint
from aux_code.checkpoint import checkpoint_epoch, load_checkpoint
from aux_code.config import PathsConfig, TrainRunConfig, opt
from aux_code.fit import Selection, StoredModel, Task, fit
from aux_code.precision import Precision
from aux_code.training import start_run

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


def full_disk(monkeypatch, pattern: str) -> None:
    """From now on every atomic write whose target name matches ``pattern`` (fnmatch) fails as on a
    full disk: its file's write() raises OSError(ENOSPC) after the first bytes."""
    from fnmatch import fnmatch

    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += 1
            if self.written > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data[: max(1, len(data) // 2)]) and len(data)

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
