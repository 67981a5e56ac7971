"""``python -m anomaly_detection [--config FILE] key=value ...`` (also under torchrun).

Parses the config and runs the stage; an input problem found before training (feature
set, manifest, annotation, an incomplete set or changed dataset files, checkpoint), a diverged
training or an environment fault (disk full, no permission) ends the run with one message and
exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from anomaly_detection.config import AnomalyConfig
from anomaly_detection.data import AnomalyDataError
from anomaly_detection.train import run
from aux_code.checkpoint import CheckpointError
from aux_code.features import FeatureSetError
from aux_code.segments import LengthMismatchError
from aux_code.stages import stage_main

INPUT_ERRORS = (AnomalyDataError, FeatureSetError, LengthMismatchError, CheckpointError)

PROG = "python -m anomaly_detection"
DEFAULT_CONFIG = "configs/synthetic/anomaly/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(AnomalyConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
