"""Anomaly datasets by name, so stages pick one from config without importing each adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .shanghaitech import ShanghaiTech
from .ucf_crime import UCFCrime
from .xd_violence import XDViolence

AnomalyDataset = Union[UCFCrime, XDViolence, ShanghaiTech]

ANOMALY_DATASETS: dict[str, type] = {
    "ucf_crime": UCFCrime,
    "xd_violence": XDViolence,
    "shanghaitech": ShanghaiTech,
}


def get_anomaly_dataset(name: str, root: str | Path, **options: Any) -> AnomalyDataset:
    """The adapter named ``name`` ('ucf_crime', 'xd_violence', 'shanghaitech') on ``root``.

    ``options`` go to the adapter's constructor (``on_error``, file names).
    """
    if name not in ANOMALY_DATASETS:
        raise ValueError(f"unknown anomaly dataset {name!r}; expected one of {', '.join(ANOMALY_DATASETS)}")
    return ANOMALY_DATASETS[name](root, **options)
