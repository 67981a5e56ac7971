"""``python -m feature_extraction [--config FILE] key=value ...`` (also under torchrun).

Parses the config and runs the stage. Exit status: 0 when every video was extracted (or
found finished by an earlier run), 1 when some video failed (listed in failures.json of the
output directory; the rest are extracted), 2 for an input problem found before extracting
(dataset files, an empty split, checkpoint, decoder) or an environment fault (disk full, no
permission: one line naming the file; every write is atomic, a rerun resumes).
"""

from __future__ import annotations

from collections.abc import Sequence

from aux_code.checkpoint import CheckpointError
from aux_code.datasets import DatasetError
from aux_code.stages import stage_main
from feature_extraction.config import ExtractionConfig
from feature_extraction.decoders import DecoderError
from feature_extraction.pipeline import run

INPUT_ERRORS = (DatasetError, CheckpointError, DecoderError)

PROG = "python -m feature_extraction"
DEFAULT_CONFIG = "configs/synthetic/extraction/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(ExtractionConfig, argv, run=run, default_config=DEFAULT_CONFIG, prog=PROG, input_errors=INPUT_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
