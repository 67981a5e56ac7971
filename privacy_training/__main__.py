"""``python -m privacy_training [--config FILE] key=value ...``

Parses the config and runs the stage; an input problem (label file, undecodable images
beyond the allowed fraction, a checkpoint without the requested model, missing weights)
ends the run with one message and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from aux_code.checkpoint import CheckpointError
from aux_code.datasets.common import DatasetError
from aux_code.stages import stage_main
from privacy_training.config import PrivacyConfig
from privacy_training.data import PrivacyDataError
from privacy_training.train import run

INPUT_ERRORS = (DatasetError, PrivacyDataError, CheckpointError)

PROG = "python -m privacy_training"
DEFAULT_CONFIG = "configs/synthetic/privacy/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(PrivacyConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
