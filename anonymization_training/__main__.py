"""``python -m anonymization_training [--config FILE] key=value ...``

Parses the config and runs the stage's task (``task=utility_pretrain | identity | budget_ssl |
minimax``); an input problem found before training (a missing init checkpoint, an empty split,
an unreadable dataset file) ends the run with one message and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from anonymization_training.config import AnonymizationConfig
from anonymization_training.data import StageDataError
from anonymization_training.train import run
from aux_code.checkpoint import CheckpointError
from aux_code.config import ConfigError, parse_cli
from aux_code.datasets import DatasetError
from aux_code.runtime import shutdown_runtime
from aux_code.video import VideoDecodeError

PROG = "python -m anonymization_training"
DEFAULT_CONFIG = "configs/synthetic/anonymization/tedspad.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(AnonymizationConfig, argv, default_config=DEFAULT_CONFIG, prog=PROG)
    try:
        run(cfg)
    except (StageDataError, DatasetError, CheckpointError, VideoDecodeError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
