"""``python -m remote.score [--config FILE] key=value ...``: decode latent codes on the server and score them online.

An input problem (a missing decoder / fT / detector file, a code file of another encoder, format version
or shape) ends the run with one message and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from aux_code.stages import stage_main
from remote.config import ScoreConfig
from remote.server import INPUT_ERRORS, run

PROG = "python -m remote.score"
DEFAULT_CONFIG = "configs/synthetic/server/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(ScoreConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
