"""Which schema reads which config file.

Stage YAML files live in configs/<stage>/ (paper settings) and configs/synthetic/<stage>/
(the embedded default); the folder name picks the schema.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from aux_code.config import PROJECT_ROOT, ConfigError

# config folder -> (module, schema class, stage package run as `python -m <package>`)
STAGES: dict[str, tuple[str, str, str]] = {
    "anonymization": ("anonymization_training.config", "AnonymizationConfig", "anonymization_training"),
    "privacy": ("privacy_training.config", "PrivacyConfig", "privacy_training"),
    "extraction": ("feature_extraction.config", "ExtractionConfig", "feature_extraction"),
    "anomaly": ("anomaly_detection.config", "AnomalyConfig", "anomaly_detection"),
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
