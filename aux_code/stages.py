"""Which schema reads which config file.

Stage YAML files live in configs/<stage>/ (paper settings) and configs/synthetic/<stage>/
(the embedded default); the folder name picks the schema.
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aux_code.config import PROJECT_ROOT, ConfigError, parse_cli
from aux_code.runtime import shutdown_runtime
from aux_code.training import NonFiniteLossError

# config folder -> (module, schema class, stage package run as `python -m <package>`)
STAGES: dict[str, tuple[str, str, str]] = {
    "anonymization": ("anonymization_training.config", "AnonymizationConfig", "anonymization_training"),
    "privacy": ("privacy_training.config", "PrivacyConfig", "privacy_training"),
    "extraction": ("feature_extraction.config", "ExtractionConfig", "feature_extraction"),
    "anomaly": ("anomaly_detection.config", "AnomalyConfig", "anomaly_detection"),
    "luss": ("anomaly_detection.luss.config", "LussConfig", "anomaly_detection.luss"),
    "dpae": ("anonymization_training.dpae.config", "DPAEStageConfig", "anonymization_training.dpae"),
    "camera": ("remote.config", "EncodeConfig", "remote.encode"),  # the DP-AE's remote split: camera side
    "server": ("remote.config", "ScoreConfig", "remote.score"),  # and server side
    "two_stream": ("two_stream_detection.config", "TwoStreamConfig", "two_stream_detection"),  # the DP-AE paper's detector
    # Not a stage: the pipeline driver, configured the same way (configs/<...>/reproduce/).
    "reproduce": ("scripts.reproduce", "ReproduceConfig", "scripts.reproduce"),
}


def schema_for_stage(stage: str) -> type:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    module, cls, _ = STAGES[stage]
    return getattr(importlib.import_module(module), cls)


def schema_for_config_file(path: str | Path) -> type:
    """The schema of a file under configs/<stage>/ or configs/synthetic/<stage>/."""
    rel = Path(path).resolve().relative_to(PROJECT_ROOT / "configs").parts
    parts = rel[1:] if rel and rel[0] == "synthetic" else rel
    if len(parts) < 2:
        raise ConfigError(f"{path}: stage configs live in configs/<stage>/ with <stage> one of {', '.join(STAGES)}")
    return schema_for_stage(parts[0])


def stage_main(
    schema: type,
    argv: Sequence[str] | None,
    *,
    run: Callable[[Any], Any],
    default_config: str,
    prog: str,
    input_errors: tuple[type[BaseException], ...],
) -> int:
    """What every stage's ``python -m <stage>`` does: parse the config, run the stage, and turn an
    input problem (one of ``input_errors``), a diverged training (NonFiniteLossError: stage, step,
    minimax half and terms) or an environment fault (an OSError: disk full, no permission, a missing
    file; see :func:`environment_fault`) into one message and exit status 2. Every file a stage
    writes is written atomically, so a fault leaves no half-written file behind.

    ``run(cfg)`` may return an exit status (an int: feature extraction returns 1 when some video
    failed); any other return value (a results dict) means success, 0. The runtime (a torchrun
    process group) is shut down whatever happens.
    """
    cfg = parse_cli(schema, argv, default_config=default_config, prog=prog)
    try:
        status = run(cfg)
    except (ConfigError, NonFiniteLossError, *input_errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: {environment_fault(e)}", file=sys.stderr)
        return 2
    finally:
        shutdown_runtime()
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


# What to do about the environment faults a run meets; the run resumes where it stopped once fixed.
_FAULT_HINTS = {
    errno.ENOSPC: "the disk is full: free space or point paths.runs / paths.results at a disk with room, then rerun "
                  "(it resumes where it stopped)",
    errno.EDQUOT: "the disk quota is used up: free space or point paths.runs / paths.results elsewhere, then rerun",
    errno.EACCES: "no permission: make the folder writable (readable for inputs) or point the paths elsewhere",
    errno.EPERM: "not permitted: make the folder writable (readable for inputs) or point the paths elsewhere",
    errno.EROFS: "a read-only file system: point paths.runs / paths.results at a writable one",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "a directory where a file was expected",
    errno.ENOTDIR: "a file where a directory was expected",
}


def environment_fault(e: OSError) -> str:
    """One line for an OS error: the path, the system's words, the errno name and what to do."""
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    where = f"{e.filename}: " if e.filename else ""
    hint = _FAULT_HINTS.get(e.errno)
    text = f"{where}{e.strerror or e}" + (f" [{name}]" if name else "")
    return text + (f" ({hint})" if hint and hint != (e.strerror or "").lower() else "")
