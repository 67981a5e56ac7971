"""``python -m anomaly_detection.luss [--config FILE] key=value ...``: LUSS-AE on Ped2 / Avenue / ShanghaiTech.

An input problem (dataset layout, ground truth, checkpoint) ends the run with one message and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from anomaly_detection.luss.config import LussConfig
from anomaly_detection.luss.train import run
from aux_code.checkpoint import CheckpointError
from aux_code.datasets.common import DatasetError
from aux_code.stages import stage_main
from aux_code.video import VideoDecodeError

INPUT_ERRORS = (DatasetError, CheckpointError, VideoDecodeError)
PROG = "python -m anomaly_detection.luss"
DEFAULT_CONFIG = "configs/synthetic/luss/ped2.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(LussConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
