"""The shared config vocabulary: one name per idea, one meaning per name, in every stage.

A key that several stages have is declared here once (its help text is its meaning), and each
stage's schema uses these fields and sections instead of writing its own. ``--help-config``
therefore shows the same line for ``clip.resolution`` in stages 1, 2 and 3, and
tests/test_vocabulary.py fails when two stages document one key differently.

Sections: ``clip`` (how frames become model input), ``utility`` (where fT comes from),
``schedule`` (aux_code.schedule) and ``precision`` (aux_code.precision); the validation carve is
``validation_fraction`` (with a prefix naming the set where a stage carves two).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from aux_code.checkpoint import file_digest
from aux_code.config import ConfigError, opt, resolve_under
from aux_code.models import build_utility
from aux_code.models.stored import load_stored_model

HELP = {
    "clip_len": "Frames per clip fed to the video model (paper: 16).",
    "skip": "Read every skip-th frame: a clip spans clip_len * skip raw frames (paper: 2).",
    "resolution": "Side of the square model input after the centre crop, in pixels (paper: 224).",
    "crop_scale": "Centre crop as a fraction of the short side before resizing to clip.resolution (1.0: the largest centred square).",
    "validation_fraction": "Fraction of the training items held out (seeded) to select the reported epoch (0, where the stage allows it: no validation, the last epoch is reported); the test split never selects.",
    "validation_seed": "Seed of the validation carve (independent of run.seed, so every method sees the same split).",
    "optim.lr": "Learning rate of the trained model's optimiser (Adam unless the stage's optim.optimizer names another; a schedule section, where the stage has one, shapes it over epochs).",
    "optim.weight_decay": "Adam weight decay.",
    "optim.epochs": "Training epochs.",
    "optim.batch_size": "Training items (clips, images, frames or windows: the stage's unit) per optimiser step.",
    "optim.steps_per_epoch": "Train steps per epoch (stage 1's minimax: Step-1 + Step-2 pairs); null: one pass over the training items.",
    "eval.every": "Validate every N epochs (and always after the last epoch).",
    "eval.batch_size": "Items per forward pass when scoring (speed and memory only).",
    "eval.plot_videos": "Test videos whose score curves are drawn as PNG (anomalous ones first; null: all).",
    "model.preset": "Model size: 'paper' (the published architecture) or 'tiny' (CPU tests, the synthetic world).",
    "task": "Which of this stage's trainings runs (the values are listed in the stage's module docstring).",
    "data.dataset": "Dataset this run reads; its adapter reads paths.<dataset> (see configs/paths.yaml).",
    "data.exclude": "Videos (by name, e.g. files known to be broken) deliberately left out; every result made from them lists them as left out.",
}


def shared(key: str, default: Any) -> Any:
    """A config field whose meaning is HELP[key], the same in every stage that has it."""
    return opt(default, HELP[key])


@dataclass
class ClipSection:
    """How decoded frames become the video model's input clips (REFERENCE.md section 4)."""

    clip_len: int = shared("clip_len", 16)
    skip: int = shared("skip", 2)
    resolution: int = shared("resolution", 224)
    crop_scale: float = shared("crop_scale", 0.8)

    def validate(self) -> None:
        _check_clip(self)
        if self.skip < 1:
            raise ConfigError(f"clip.skip = {self.skip} must be >= 1")


@dataclass
class StillClipSection:
    """Stage 2's images as model input: square resize, and (the feature probe) T repeats into a still clip."""

    clip_len: int = shared("clip_len", 16)
    resolution: int = shared("resolution", 224)
    crop_scale: float = shared("crop_scale", 0.8)

    def validate(self) -> None:
        _check_clip(self)


def _check_clip(c: Any) -> None:
    if c.clip_len < 1:
        raise ConfigError(f"clip.clip_len = {c.clip_len} must be >= 1")
    if c.resolution < 8:
        raise ConfigError(f"clip.resolution = {c.resolution} must be >= 8")
    if not 0.0 < c.crop_scale <= 1.0:
        raise ConfigError(f"clip.crop_scale = {c.crop_scale} must be in (0, 1]")


@dataclass
class UtilitySource:
    """Where the utility model fT comes from: a stage-1 checkpoint, or a public weights file."""

    checkpoint: Optional[str] = opt(
        None,
        "Stage-1 checkpoint holding fT (e.g. anonymization/tedspad/best.pt; relative paths resolve under paths.runs). "
        "When set, utility.name and utility.weights are ignored.",
    )
    model_key: str = opt("utility", "Key of fT inside the checkpoint's 'models'.")
    name: str = opt("i3d_r50", "Without a checkpoint: registry name of fT (i3d_r50, i3d_r50_tiny, i3d_inception, ...).")
    weights: Optional[str] = opt(
        None,
        "Without a checkpoint: local pretrained weights file (e.g. Kinetics-400 i3d_r50_kinetics.pth; relative paths "
        "resolve under paths.weights). null = random init, only sensible for tests.",
    )
    num_classes: int = opt(400, "Without a checkpoint: classifier size the weights file was trained with.")

    def checkpoint_path(self, paths: Any) -> Path | None:
        return None if self.checkpoint is None else resolve_under(paths.runs, self.checkpoint)

    def weights_path(self, paths: Any) -> Path | None:
        return None if self.weights is None else resolve_under(paths.weights, self.weights)

    def files(self, paths: Any) -> list[tuple[str, Path]]:
        """(config key, path) of every file this source reads, for pre-flight checks."""
        ckpt = self.checkpoint_path(paths)
        if ckpt is not None:
            return [("utility.checkpoint", ckpt)]
        weights = self.weights_path(paths)
        return [] if weights is None else [("utility.weights", weights)]

    def load(self, paths: Any) -> tuple[nn.Module, dict]:
        """fT in eval mode and its description (name, checkpoint or weights, file digest)."""
        ckpt = self.checkpoint_path(paths)
        if ckpt is not None:
            model, spec = load_stored_model(ckpt, self.model_key, config_key="utility.checkpoint")
            return model, {"name": spec.get("name", type(model).__name__), "checkpoint": self.checkpoint,
                           "model_key": self.model_key, "checkpoint_sha": file_digest(ckpt)}
        weights = self.weights_path(paths)
        model = build_utility(name=self.name, num_classes=self.num_classes, weights=weights)
        return model.eval(), {"name": self.name, "weights": self.weights,
                              "checkpoint_sha": file_digest(weights) if weights is not None else None}
