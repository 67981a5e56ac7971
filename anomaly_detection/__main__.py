"""``python -m anomaly_detection [--config FILE] key=value ...`` (also under torchrun).

Parses the config and runs the stage; an input problem found before training (feature
set, manifest, annotation, checkpoint) ends the run with one message and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from anomaly_detection.config import AnomalyConfig
from anomaly_detection.data import AnomalyDataError
from aux_code.checkpoint import CheckpointError
from aux_code.config import parse_cli
from aux_code.features import FeatureSetError
from aux_code.runtime import shutdown_runtime
from aux_code.segments import LengthMismatchError
from anomaly_detection.train import run

PROG = "python -m anomaly_detection"
DEFAULT_CONFIG = "configs/synthetic/anomaly/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(AnomalyConfig, argv, default_config=DEFAULT_CONFIG, prog=PROG)
    try:
        run(cfg)
    except (AnomalyDataError, FeatureSetError, LengthMismatchError, CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
