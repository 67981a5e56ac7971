"""``python -m anonymization_training.dpae [--config FILE] key=value ...``: train the DP autoencoder.

An input problem found before training (a dataset layout, a class the split lacks, DP settings
the accountant refuses, a video that does not decode) ends the run with one message and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from anonymization_training.dpae.config import DPAEStageConfig
from anonymization_training.dpae.train import run
from aux_code.checkpoint import CheckpointError
from aux_code.datasets import DatasetError
from aux_code.dp import DPError
from aux_code.stages import stage_main
from aux_code.video import VideoDecodeError

INPUT_ERRORS = (DatasetError, CheckpointError, VideoDecodeError, DPError)
PROG = "python -m anonymization_training.dpae"
DEFAULT_CONFIG = "configs/synthetic/dpae/dp_adam.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(DPAEStageConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
