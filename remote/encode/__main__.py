"""``python -m remote.encode [--config FILE] key=value ...``: encode videos into latent code files on the camera.

An input problem (a missing or wrong encoder file, a video that does not decode) ends the run with one
message and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from aux_code.stages import stage_main
from remote.camera import INPUT_ERRORS, run
from remote.config import EncodeConfig

PROG = "python -m remote.encode"
DEFAULT_CONFIG = "configs/synthetic/camera/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(EncodeConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
