"""A small separable feature set in the extractor's format, for tests and benchmarks.

Clip features are Gaussian noise; inside the anomalous clips of anomalous videos the
features are shifted along one fixed direction, so a model that learns that direction
scores them high. Training anomalous videos carry only their video label (weak
supervision: no intervals, as in UCF-Crime's training split); test anomalous videos carry
their [start, end) frame intervals. Every video has a tail of frames shorter than one
clip, which no clip covers, as real videos do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aux_code.features import FeatureSetInfo, VideoEntry, save_features, write_manifest


def make_fake_feature_set(
    out_dir: str | Path,
    *,
    dataset: str = "ucf_crime",
    feature_dim: int = 16,
    crops: int = 1,
    train: tuple[int, int] = (12, 12),
    test: tuple[int, int] = (6, 6),
    clips: tuple[int, int] = (8, 40),
    clip_len: int = 16,
    skip: int = 2,
    shift: float = 2.0,
    seed: int = 0,
    annotate_train: bool = False,
) -> FeatureSetInfo:
    """Write <out_dir>/manifest.json and one .npy per video; return the manifest.

    train, test: (normal, anomalous) video counts. clips: the [low, high] clip counts per
    video. shift: how far anomalous clips move along the anomaly direction, in units of
    the noise standard deviation per dimension times sqrt(D) (so separability does not
    depend on feature_dim). annotate_train: also record the intervals of the anomalous
    training videos (as ShanghaiTech-like sets with frame masks would allow).
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(feature_dim)
    direction /= np.linalg.norm(direction)
    span = clip_len * skip
    videos: dict[str, VideoEntry] = {}
    for split, (n_normal, n_abnormal) in (("train", train), ("test", test)):
        for label, count in ((0, n_normal), (1, n_abnormal)):
            for i in range(count):
                name = f"{split}_{'Normal_Videos' if label == 0 else 'Anomaly'}_{i:03d}_x264"
                s = int(rng.integers(clips[0], clips[1] + 1))
                feats = rng.standard_normal((s, crops, feature_dim)).astype(np.float32)
                intervals: list[list[int]] = []
                if label == 1:
                    length = int(rng.integers(max(1, s // 5), max(2, s // 2) + 1))
                    start = int(rng.integers(0, s - length + 1))
                    feats[start : start + length] += (shift * np.sqrt(feature_dim) * direction).astype(np.float32)
                    if split == "test" or annotate_train:
                        intervals = [[start * span, (start + length) * span]]
                data = feats[:, 0] if crops == 1 else feats
                save_features(out_dir / f"{name}.npy", data)
                videos[name] = VideoEntry(
                    name=name,
                    file=f"{name}.npy",
                    split=split,
                    label=label,
                    class_name="Normal" if label == 0 else "Anomaly",
                    num_frames=s * span + int(rng.integers(0, span)),
                    num_clips=s,
                    intervals=intervals,
                )
    info = FeatureSetInfo(
        dataset=dataset,
        backbone="fake",
        feature_dim=feature_dim,
        clip_len=clip_len,
        skip=skip,
        resolution=224,
        decoder="none",
        anonymizer={"method": "fake"},
        utility={"name": "fake"},
        crops=crops,
        videos=videos,
    )
    write_manifest(out_dir, info)
    return info
