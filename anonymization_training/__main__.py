"""``python -m anonymization_training [--config FILE] key=value ...``

Parses the config and runs the stage's task (``task=utility_pretrain | identity | budget_ssl |
minimax``); an input problem found before training (a missing init checkpoint, an empty split,
an unreadable dataset file) ends the run with one message and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from anonymization_training.config import AnonymizationConfig
from anonymization_training.data import StageDataError
from anonymization_training.train import run
from aux_code.checkpoint import CheckpointError
from aux_code.config import ConfigError
from aux_code.datasets import DatasetError
from aux_code.stages import stage_main
from aux_code.video import VideoDecodeError

INPUT_ERRORS = (StageDataError, DatasetError, CheckpointError, VideoDecodeError, ConfigError)

PROG = "python -m anonymization_training"
DEFAULT_CONFIG = "configs/synthetic/anonymization/tedspad.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(AnonymizationConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
