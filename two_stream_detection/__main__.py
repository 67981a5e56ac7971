"""``python -m two_stream_detection [--config FILE] key=value ...``: train and test the two-stream detector.

An input problem found before training (a dataset layout, a missing or malformed frame annotation,
a DP-AE pair trained at another frame size, a video that does not decode) ends the run with one
message and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from aux_code.checkpoint import CheckpointError
from aux_code.datasets import DatasetError
from aux_code.latent_codes import CodeFileError
from aux_code.stages import stage_main
from aux_code.video import VideoDecodeError
from two_stream_detection.config import TwoStreamConfig
from two_stream_detection.train import run

INPUT_ERRORS = (DatasetError, CheckpointError, VideoDecodeError, CodeFileError)
PROG = "python -m two_stream_detection"
DEFAULT_CONFIG = "configs/synthetic/two_stream/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(TwoStreamConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
