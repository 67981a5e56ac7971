"""Anomaly datasets by name, so stages pick one from config without importing each adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from aux_code.checkpoint import file_digest

from .avenue import Avenue
from .ped2 import Ped2
from .shanghaitech import ShanghaiTech
from .shanghaitech_unsupervised import ShanghaiTechUnsupervised
from .ucf101 import UCF101
from .ucf_crime import UCFCrime
from .vispr import VISPR
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


def dataset_metadata_files(key: str, root: str | Path) -> list[Path]:
    """The list, annotation and label files of the dataset at ``paths.<key>`` (its readers' defaults):
    what labels, splits and intervals are read from, so a changed file changes every result that
    used it (aux_code.features manifests, the reproduce fingerprints, aux_code.fit's resume check). Empty
    for keys without such files (weights, runs)."""
    readers: dict[str, type] = {**ANOMALY_DATASETS, "ucf101": UCF101, "vispr": VISPR, "ped2": Ped2, "avenue": Avenue,
                                "shanghaitech_unsupervised": ShanghaiTechUnsupervised}
    if key not in readers:
        return []
    return readers[key](root).metadata_files()


def dataset_digests(key: str, root: str | Path) -> dict[str, str]:
    """``{path relative to root: digest}`` of :func:`dataset_metadata_files`."""
    root = Path(root)
    return {str(p.relative_to(root)): file_digest(p) for p in dataset_metadata_files(key, root)}
