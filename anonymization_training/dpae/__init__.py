"""The DP autoencoder of Giorgi et al. (JoWUA 2022): its training task (task.py), stage config (config.py),
``run(cfg)`` (train.py) and command line (``python -m anonymization_training.dpae``)."""

from anonymization_training.dpae.task import (
    DPAEConfig,
    DPAETask,
    FrameDataset,
    frame_counts,
    load_frames,
    pick_videos,
    reconstruction_metrics,
    split_indices,
    split_sizes,
)

__all__ = ["DPAEConfig", "DPAETask", "FrameDataset", "frame_counts", "load_frames", "pick_videos",
           "reconstruction_metrics", "split_indices", "split_sizes"]
