"""Dataset adapters reading the real datasets' on-disk formats (and the synthetic world's)."""

from __future__ import annotations

from .common import (
    AnomalyVideo,
    DatasetError,
    ImageItem,
    VideoItem,
    carve_validation,
    intervals_to_frame_labels,
    read_person_boxes,
    runs_of_ones,
)
from .registry import ANOMALY_DATASETS, AnomalyDataset, dataset_digests, dataset_metadata_files, get_anomaly_dataset
from .shanghaitech import ShanghaiTech
from .ucf101 import UCF101
from .ucf_crime import UCFCrime
from .vispr import VISPR, VISPR_ATTRIBUTES, load_label_dict
from .xd_violence import XD_CATEGORIES, XDViolence, parse_xd_label

__all__ = [
    "ANOMALY_DATASETS", "AnomalyDataset", "AnomalyVideo", "DatasetError", "ImageItem", "ShanghaiTech",
    "UCF101", "UCFCrime", "VISPR", "VISPR_ATTRIBUTES", "VideoItem", "XDViolence", "XD_CATEGORIES",
    "carve_validation", "dataset_digests", "dataset_metadata_files", "get_anomaly_dataset", "intervals_to_frame_labels", "load_label_dict",
    "parse_xd_label", "read_person_boxes", "runs_of_ones",
]
