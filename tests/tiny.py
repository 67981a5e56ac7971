"""What the tests that run stages on the tiny synthetic world share: the stage-1 quick settings
and the paths file. The fixtures built on them (one world per session, one paths file per
user of it, stage 1's init runs) live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from aux_code.config import PROJECT_ROOT

ANONYMIZATION_CONFIGS = PROJECT_ROOT / "configs" / "synthetic" / "anonymization"
ANONYMIZATION_SIZE = 32
# Tiny and quick: 1 epoch of 2 steps, small batches, per-video validation carve (the tiny world has
# one train group per class).
ANONYMIZATION_FAST = [
    "data.action_validation_by=video", "data.action_validation_fraction=0.5", "data.privacy_validation_fraction=0.25",
    f"clip.resolution={ANONYMIZATION_SIZE}", "model.anonymizer=unet_tiny", "model.anonymizer_width=null", "optim.epochs=1",
    "optim.steps_per_epoch=2", "optim.batch_size=2", "optim.image_batch_size=4", "eval.budget_batch=6", "eval.grid_images=3",
    "run.log_every=1",
]
# The stage-1 tasks the minimax starts from, as (config file stem, run name, model key).
INIT_TASKS = (("utility_pretrain", "utility", "utility"), ("identity", "identity", "anonymizer"), ("budget_ssl", "budget", "budget"))


def anonymization_paths(world: Path, runs: Path) -> list[str]:
    """Stage-1 path overrides: the world's action and privacy sets, runs under ``runs``."""
    return [f"paths.ucf101={world / 'UCF101'}", f"paths.vispr={world / 'VISPR'}", f"paths.runs={runs}"]


def write_paths_file(root: Path, world: Path) -> Path:
    """``root/paths.yaml`` pointing every dataset root at ``world`` and weights / runs / results
    under ``root``; returns its path (set it as $TEDSPAD_PATHS)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = {
        "ucf101": world / "UCF101",
        "vispr": world / "VISPR",
        "ucf_crime": world / "UCF_Crime",
        "xd_violence": world / "XD_Violence",
        "shanghaitech": world / "ShanghaiTech",
        "synthetic": world,
        "weights": root / "weights",
        "runs": root / "runs",
        "results": root / "results",
    }
    path = root / "paths.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in entries.items()))
    return path
