"""The one training loop (aux_code.fit): selection, resume, early stopping, the non-finite guard."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from aux_code.config import PathsConfig, TrainRunConfig, opt
from aux_code.fit import Selection, Stepper, StoredModel, Task, fit
from aux_code.precision import Precision
from aux_code.training import NonFiniteLossError, start_run


@dataclass
class ToyConfig:
    paths: PathsConfig = opt(PathsConfig(), "paths")
    run: TrainRunConfig = opt(TrainRunConfig(), "run")


class ToyTask(Task):
    """Fit y = 3x with one weight; validation loss on fixed points; stops after ``stop_after`` epochs."""

    name = "toy"

    def __init__(self, epochs: int, *, stop_after: int | None = None, lr: float = 0.5, poison_step: int | None = None):
        self.epochs, self.stop_after, self.poison_step = epochs, stop_after, poison_step
        self.selection = Selection("loss", "min", "min validation loss")
        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.model.weight)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.x = torch.linspace(-1, 1, 8)[:, None]
        self.epochs_trained = 0

    def models(self):
        return {"toy": StoredModel("probe", {}, self.model)}  # a record kind; the loop itself never rebuilds it

    def optimizers(self):
        return {"toy": self.optimizer}

    def task_state(self):
        return {"epochs_trained": self.epochs_trained}

    def load_task_state(self, state):
        self.epochs_trained = state["epochs_trained"]

    def batches(self, epoch):
        self.epochs_trained += 1
        return [self.x[:4], self.x[4:]]

    def train_step(self, x, stepper):
        loss = ((self.model(x) - 3 * x) ** 2).mean()
        if stepper.step == self.poison_step:
            loss = loss * float("nan")
        return stepper.update({"loss": loss}, self.optimizer, half="toy half")

    def validate(self, epoch):
        with torch.no_grad():
            return {"loss": float(((self.model(self.x) - 3 * self.x) ** 2).mean())}

    def should_stop(self):
        return self.stop_after is not None and self.epochs_trained >= self.stop_after


def _run(tmp_path, name, task, seed=0):
    cfg = ToyConfig()
    cfg.paths.runs, cfg.run.name, cfg.run.seed = str(tmp_path), name, seed
    ctx = start_run(cfg, stage="toy", tensorboard=False)
    try:
        return fit(task, ctx, cfg=cfg, stage="toy", precision=Precision("fp32", torch.device("cpu")))
    finally:
        ctx.finish()


def test_fit_learns_selects_on_validation_and_writes_one_results_schema(tmp_path):
    results = _run(tmp_path, "a", ToyTask(5))
    assert results["selection"]["metric"] == "val_loss" and results["selection"]["mode"] == "min"
    assert results["selection"]["epoch"] == 5 and results["selected"]["loss"] < 0.05  # it learned
    assert json.loads((tmp_path / "toy" / "a" / "results.json").read_text()) == results
    history = torch.load(tmp_path / "toy" / "a" / "last.pt", weights_only=True)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_resume_with_more_epochs_equals_a_straight_run(tmp_path):
    straight = _run(tmp_path, "straight", ToyTask(4))
    _run(tmp_path, "split", ToyTask(2))
    resumed = _run(tmp_path, "split", ToyTask(4))
    assert resumed["selected"] == straight["selected"] and resumed["selection"] == {**straight["selection"]}
    a = torch.load(tmp_path / "toy" / "straight" / "last.pt", weights_only=True)["models"]["toy"]["state_dict"]
    b = torch.load(tmp_path / "toy" / "split" / "last.pt", weights_only=True)["models"]["toy"]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_should_stop_ends_training_and_a_rerun_does_not_train_on(tmp_path):
    task = ToyTask(10, stop_after=3)
    results = _run(tmp_path, "stop", task)
    assert task.epochs_trained == 3 and results["last"] and results["selection"]["epoch"] <= 3
    again = ToyTask(10, stop_after=3)
    _run(tmp_path, "stop", again)
    assert again.epochs_trained == 3  # restored from last.pt, no fourth epoch


def test_non_finite_loss_names_stage_half_step_and_terms(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"toy \(toy half step\): non-finite loss at step 3: loss=nan"):
        _run(tmp_path, "nan", ToyTask(3, poison_step=3))


def test_stepper_scales_fp16_only():
    cpu = Precision("fp32", torch.device("cpu"))
    assert Stepper(cpu, stage="s").precision.scaler() is None


def test_run_names_and_manifest_entries_stay_under_their_roots(tmp_path):
    from aux_code.config import ConfigError
    from aux_code.features import FeatureSetError, VideoEntry, load_video_features
    from aux_code.runtime import run_dir_for

    assert run_dir_for(tmp_path, "anomaly", "a-b") == tmp_path / "anomaly" / "a-b"
    for bad in ("../other", "/tmp/elsewhere", "x/../../y", "."):
        with pytest.raises(ConfigError, match="run.name"):
            run_dir_for(tmp_path, "anomaly", bad)
    entry = VideoEntry(name="v", file="../../secret.npy", split="test", label=0, class_name="Normal", num_frames=32, num_clips=1)
    with pytest.raises(FeatureSetError, match="manifest's file of video v"):
        load_video_features(tmp_path, entry, feature_dim=4)


def test_a_truncated_feature_file_names_the_video(tmp_path):
    import numpy as np

    from aux_code.features import FeatureSetError, VideoEntry, load_video_features

    np.save(tmp_path / "v.npy", np.zeros((2, 4), dtype=np.float32))
    (tmp_path / "v.npy").write_bytes((tmp_path / "v.npy").read_bytes()[:-8])
    entry = VideoEntry(name="v", file="v.npy", split="test", label=0, class_name="Normal", num_frames=64, num_clips=2)
    with pytest.raises(FeatureSetError, match="video v .* cannot be read"):
        load_video_features(tmp_path, entry, feature_dim=4)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_floats_are_config_errors(value):
    from aux_code.config import ConfigError, load_config
    from anomaly_detection.config import AnomalyConfig

    with pytest.raises(ConfigError, match="optim.lr = .* must be a finite number"):
        load_config(AnomalyConfig, "configs/synthetic/anomaly/default.yaml", [f"optim.lr={value}"], check_paths=False)
