from __future__ import annotations

import numpy as np
import pytest

from aux_code.features import (
    FeatureSetError,
    FeatureSetInfo,
    VideoEntry,
    load_video_features,
    read_manifest,
    save_features,
    write_manifest,
)


def make_info(**videos) -> FeatureSetInfo:
    return FeatureSetInfo(
        dataset="ucf_crime", backbone="i3d_r50", feature_dim=4, clip_len=16, skip=2, resolution=64,
        decoder="pyav", anonymizer={"kind": "identity"}, utility={"name": "i3d_r50"}, videos=videos,
    )


def test_manifest_roundtrip_and_lists(tmp_path):
    save_features(tmp_path / "a.npy", np.ones((3, 4), np.float64))
    save_features(tmp_path / "b.npy", np.zeros((2, 4)))
    info = make_info(
        b=VideoEntry("b", "b.npy", "train", 0, "Normal", 64, 2),
        a=VideoEntry("a", "a.npy", "test", 1, "Fighting", 100, 3, intervals=[[32, 64]]),
    )
    write_manifest(tmp_path, info)
    back = read_manifest(tmp_path)
    assert back == info
    assert (tmp_path / "test.list").read_text().strip() == str(tmp_path / "a.npy")
    feats = load_video_features(tmp_path, back.videos["a"], feature_dim=4)
    assert feats.dtype == np.float32 and feats.shape == (3, 4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_feature_checks_name_the_video(tmp_path):
    save_features(tmp_path / "a.npy", np.ones((3, 4)))
    entry = VideoEntry("a", "a.npy", "test", 1, "Fighting", 100, 2)
    with pytest.raises(FeatureSetError, match="video a: 3 feature rows, manifest says 2"):
        load_video_features(tmp_path, entry, feature_dim=4)
    entry.num_clips = 3
    with pytest.raises(FeatureSetError, match="video a: feature dimension 4, expected 8"):
        load_video_features(tmp_path, entry, feature_dim=8)
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    save_features(tmp_path / "a.npy", bad)
    with pytest.raises(FeatureSetError, match="video a: features contain NaN"):
        load_video_features(tmp_path, entry, feature_dim=4)


def test_missing_manifest(tmp_path):
    with pytest.raises(FeatureSetError, match="run feature extraction first"):
        read_manifest(tmp_path)
