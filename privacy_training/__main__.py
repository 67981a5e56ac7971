"""``python -m privacy_training [--config FILE] key=value ...``

Parses the config and runs the stage; an input problem (label file, undecodable images
beyond the allowed fraction, a checkpoint without the requested model, missing weights)
ends the run with one message and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from aux_code.checkpoint import CheckpointError
from aux_code.config import parse_cli
from aux_code.datasets.common import DatasetError
from aux_code.runtime import shutdown_runtime
from privacy_training.config import PrivacyConfig
from privacy_training.data import PrivacyDataError
from privacy_training.train import run

PROG = "python -m privacy_training"
DEFAULT_CONFIG = "configs/synthetic/privacy/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(PrivacyConfig, argv, default_config=DEFAULT_CONFIG, prog=PROG)
    try:
        run(cfg)
    except (DatasetError, PrivacyDataError, CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
