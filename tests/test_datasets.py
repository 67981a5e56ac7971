"""Dataset adapters: round trips on a tiny generated world, and every kind of bad input."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from aux_code.datasets import (
    UCF101,
    VISPR,
    VISPR_ATTRIBUTES,
    DatasetError,
    ShanghaiTech,
    UCFCrime,
    XDViolence,
    carve_validation,
    get_anomaly_dataset,
    intervals_to_frame_labels,
    parse_xd_label,
    read_person_boxes,
    runs_of_ones,
)
from aux_code.synthetic import PRESETS, plan_world

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def world(tiny_world) -> Path:
    """The session's tiny world (tests/conftest.py), read only: tests that break files use _copy."""
    return tiny_world


@pytest.fixture(scope="module")
def plan():
    return plan_world(TINY, 0)


def _copy(world: Path, name: str, tmp_path: Path) -> Path:
    """A private copy of one dataset, for tests that break files."""
    return Path(shutil.copytree(world / name, tmp_path / name))


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# --------------------------------------------------------------------------- round trips


def test_ucf101_round_trip(world, plan):
    ucf = UCF101(world / "UCF101")
    assert ucf.classes == tuple(c.class_name for c in plan.ucf101[:: TINY.groups_per_class * TINY.clips_per_group])
    train, test = ucf.items("train"), ucf.items("test")
    expected_test = {c.name: c for c in plan.ucf101 if c.test_in_split[0]}
    assert {v.name for v in test} == set(expected_test)
    assert len(train) + len(test) == len(plan.ucf101)
    for video in train + test:
        assert video.path.is_file() and video.path.suffix == ".avi"
        assert ucf.classes[video.label] == video.class_name == video.path.parent.name
    # Test groups never appear in train (the UCF101 split-1 property).
    group = lambda v: (v.class_name, v.name.split("_g")[1][:2])  # noqa: E731
    assert not {group(v) for v in train} & {group(v) for v in test}
    clip = expected_test[test[0].name]
    assert _frame_count(test[0].path) == clip.num_frames
    boxes = ucf.person_boxes(test[0], clip.num_frames)
    assert len(boxes) == clip.num_frames and all(len(b) == len(clip.people) for b in boxes)
    assert UCF101(world / "UCF101", fold=2).items("test") != test


def test_vispr_round_trip_and_validation_split(world, plan):
    vispr = VISPR(world / "VISPR", val_fraction=0.25, val_seed=3)
    train, val, test = vispr.items("train"), vispr.items("val"), vispr.items("test")
    assert len(train) + len(val) == TINY.vispr_train and len(test) == TINY.vispr_test
    assert len(val) == round(0.25 * TINY.vispr_train)
    ids = lambda items: {i.image_id for i in items}  # noqa: E731
    assert not ids(train) & ids(val) and not (ids(train) | ids(val)) & ids(test)
    expected = {p.image_id: p.labels for p in plan.vispr}
    for item in train + val + test:
        assert item.labels.dtype == np.float32 and item.labels.shape == (len(VISPR_ATTRIBUTES),)
        assert item.labels.tolist() == list(expected[item.image_id])
        assert not item.labels.flags.writeable
    assert ids(VISPR(world / "VISPR", val_fraction=0.25, val_seed=3).items("val")) == ids(val)
    people = {p.image_id: len(p.people) for p in plan.vispr}
    for item in test[:5]:
        boxes = vispr.person_boxes(item)
        assert boxes.shape == (people[item.image_id], 4) and np.all(boxes[:, :2] < boxes[:, 2:])
    assert ids(VISPR(world / "VISPR", val_fraction=0.25, val_seed=4).items("val")) != ids(val)


def test_vispr_accepts_json_labels(world, tmp_path):
    root = _copy(world, "VISPR", tmp_path)
    original = VISPR(root, val_fraction=0.0).items("test")
    with open(root / "test_labels.pkl", "rb") as f:
        labels = pickle.load(f)  # our own file, written by the generator
    (root / "test_labels.pkl").unlink()
    (root / "test_labels.json").write_text(json.dumps({k: v.tolist() for k, v in labels.items()}))
    from_json = VISPR(root, val_fraction=0.0).items("test")
    assert [(i.image_id, i.labels.tolist()) for i in from_json] == [(i.image_id, i.labels.tolist()) for i in original]


def test_ucf_crime_round_trip(world, plan):
    crime = get_anomaly_dataset("ucf_crime", world / "UCF_Crime")
    assert isinstance(crime, UCFCrime)
    planned = {v.name: v for v in plan.ucf_crime}
    for split in ("train", "test"):
        items = crime.items(split)
        assert {i.name for i in items} == {v.name for v in plan.ucf_crime if v.split == split}
        for item in items:
            assert item.label == planned[item.name].label
            assert item.class_name == planned[item.name].class_name
    for item in crime.items("test"):
        video = planned[item.name]
        assert item.intervals == tuple((e.start, e.end) for e in video.events)
        n = _frame_count(item.path)
        assert n == video.num_frames
        assert np.array_equal(crime.frame_labels(item, n), video.frame_labels())
        boxes = crime.person_boxes(item, n)
        assert len(boxes) == n and all(b.shape[1] == 4 for b in boxes)
    abnormal_train = next(i for i in crime.items("train") if i.label)
    assert abnormal_train.intervals is None
    with pytest.raises(DatasetError, match="video-level label only"):
        crime.frame_labels(abnormal_train, 100)


def test_xd_violence_round_trip(world, plan):
    xd = get_anomaly_dataset("xd_violence", world / "XD_Violence")
    assert isinstance(xd, XDViolence)
    planned = {v.name: v for v in plan.xd_violence}
    for split in ("train", "test"):
        items = xd.items(split)
        assert {i.name for i in items} == {v.name for v in plan.xd_violence if v.split == split}
        for item in items:
            video = planned[item.name]
            assert item.label == video.label and item.class_name == video.class_name
            if split == "test":
                assert item.intervals == tuple((e.start, e.end) for e in video.events)
                assert np.array_equal(xd.frame_labels(item, video.num_frames), video.frame_labels())


def test_shanghaitech_labels_come_from_masks_not_list_order(world, plan, tmp_path):
    root = _copy(world, "ShanghaiTech", tmp_path)
    planned = {v.name: v for v in plan.shanghaitech}
    sh = get_anomaly_dataset("shanghaitech", root)
    assert isinstance(sh, ShanghaiTech)
    before = {split: {i.name: (i.label, i.intervals) for i in sh.items(split)} for split in ("train", "test")}
    for split, items in before.items():
        assert set(items) == {v.name for v in plan.shanghaitech if v.split == split}
        for name, (label, intervals) in items.items():
            assert label == planned[name].label
            assert intervals == tuple((e.start, e.end) for e in planned[name].events)
    # Both labels occur in both lists, so an order-based rule would have to get something wrong.
    assert {label for label, _ in before["train"].values()} == {0, 1}
    assert {label for label, _ in before["test"].values()} == {0, 1}
    for list_name in ("SH_Train.txt", "SH_Test.txt"):
        lines = (root / list_name).read_text().split()
        random.Random(7).shuffle(lines)
        (root / list_name).write_text("\n".join(reversed(lines)) + "\n")
    shuffled = ShanghaiTech(root)
    for split in ("train", "test"):
        assert {i.name: (i.label, i.intervals) for i in shuffled.items(split)} == before[split]
    test_item = next(i for i in shuffled.items("test") if i.label)
    n = planned[test_item.name].num_frames
    assert np.array_equal(shuffled.frame_labels(test_item, n), planned[test_item.name].frame_labels())
    with pytest.raises(DatasetError, match="expected equal lengths"):
        shuffled.frame_labels(test_item, n + 16)
    training_folder = next(i for i in shuffled.items("test") if i.path.parent.parent.name == "training")
    assert training_folder.label == 0
    assert shuffled.frame_labels(training_folder, 50).sum() == 0


def test_registry_rejects_unknown_names(world):
    with pytest.raises(ValueError, match="ucf_crime"):
        get_anomaly_dataset("avenue", world / "UCF_Crime")


# --------------------------------------------------------------------------- bad input


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    for adapter in (UCF101, VISPR, UCFCrime, XDViolence, ShanghaiTech):
        with pytest.raises(DatasetError, match="nowhere.*does not exist"):
            adapter(missing)


def test_ucf_crime_annotation_naming_a_missing_video(world, tmp_path):
    root = _copy(world, "UCF_Crime", tmp_path)
    annotation = root / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    lines = annotation.read_text().splitlines()
    annotation.write_text("\n".join(lines + ["Fighting999_x264.mp4  Fighting  10  60  -1  -1"]) + "\n")
    with pytest.raises(DatasetError) as info:
        UCFCrime(root).items("test")
    message = str(info.value)
    assert "Temporal_Anomaly_Annotation_for_Testing_Videos.txt" in message
    assert f":{len(lines) + 1}:" in message and "Fighting999_x264.mp4" in message
    skipping = UCFCrime(root, on_error="skip")
    assert len(skipping.items("test")) == 4
    assert len(skipping.problems) == 1 and "Fighting999" in skipping.problems[0]


def test_list_line_naming_a_missing_video_is_skipped_and_recorded(world, tmp_path):
    root = _copy(world, "UCF101", tmp_path)
    trainlist = root / "ucfTrainTestlist" / "trainlist01.txt"
    lines = trainlist.read_text().splitlines()
    ghost = lines[1].replace("_c01", "_c77").replace("_c02", "_c77")
    trainlist.write_text("\n".join([lines[0], ghost] + lines[2:]) + "\n")
    with pytest.raises(DatasetError, match=r"trainlist01\.txt:2: video .*c77.* does not exist"):
        UCF101(root).items("train")
    skipping = UCF101(root, on_error="skip")
    items = skipping.items("train")
    assert len(items) == len(lines) - 1 and all("c77" not in i.name for i in items)
    assert len(skipping.problems) == 1 and "trainlist01.txt:2" in skipping.problems[0]


def test_ucf101_id_disagreeing_with_class_index(world, tmp_path):
    root = _copy(world, "UCF101", tmp_path)
    trainlist = root / "ucfTrainTestlist" / "trainlist01.txt"
    lines = trainlist.read_text().splitlines()
    path, class_id = lines[0].split()
    trainlist.write_text("\n".join([f"{path} {int(class_id) + 1}"] + lines[1:]) + "\n")
    with pytest.raises(DatasetError, match=r"trainlist01\.txt:1: class id .* disagrees with classInd"):
        UCF101(root).items("train")


def test_wrong_attribute_count(world, tmp_path):
    root = _copy(world, "VISPR", tmp_path)
    with open(root / "train_labels.pkl", "rb") as f:
        labels = pickle.load(f)
    bad_id = sorted(labels)[3]
    labels[bad_id] = np.ones(5, dtype=np.float32)
    (root / "train_labels.pkl").write_bytes(pickle.dumps(labels, protocol=4))
    with pytest.raises(DatasetError) as info:
        VISPR(root).items("train")
    assert "train_labels.pkl" in str(info.value) and bad_id in str(info.value) and "expected 7" in str(info.value)
    skipping = VISPR(root, val_fraction=0.0, on_error="skip")
    assert bad_id not in {i.image_id for i in skipping.items("train")}
    assert len(skipping.items("train")) == TINY.vispr_train - 1
    # The image without a usable label is reported too: nothing leaves silently.
    assert any(bad_id in p and "expected 7" in p for p in skipping.problems)


def test_label_pickle_cannot_run_code(tmp_path):
    import os

    class Sneaky:
        def __reduce__(self):
            return (os.getcwd, ())

    root = tmp_path / "vispr"
    (root / "train2017").mkdir(parents=True)
    (root / "train_labels.pkl").write_bytes(pickle.dumps({"2017_1": Sneaky()}))
    with pytest.raises(DatasetError, match="getcwd.*only plain builtins and numpy arrays"):
        VISPR(root).items("train")


def test_malformed_lines(world, tmp_path):
    crime = _copy(world, "UCF_Crime", tmp_path)
    annotation = crime / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    lines = annotation.read_text().splitlines()
    name = lines[0].split()[0]
    lines[0] = f"{name}  Fighting  12  40"
    annotation.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"Testing_Videos\.txt:1: .* is malformed \(expected '<name>_x264\.mp4 <Class>"):
        UCFCrime(crime).items("test")
    skipping = UCFCrime(crime, on_error="skip")
    assert name not in {f"{i.name}.mp4" for i in skipping.items("test")}
    assert any(":1:" in p and "malformed" in p for p in skipping.problems)

    xd = _copy(world, "XD_Violence", tmp_path)
    xd_lines = (xd / "annotations.txt").read_text().splitlines()
    (xd / "annotations.txt").write_text("\n".join(xd_lines + ["Ghost.2024__#1_label_B1-0-0 10 20 30"]) + "\n")
    with pytest.raises(DatasetError, match=rf"annotations\.txt:{len(xd_lines) + 1}: .* is malformed"):
        XDViolence(xd).items("test")
    (xd / "annotations.txt").write_text("\n".join(xd_lines + ["Ghost.2024__#1_label_B1-0-0 10 20"]) + "\n")
    with pytest.raises(DatasetError, match=rf"annotations\.txt:{len(xd_lines) + 1}: names video Ghost"):
        XDViolence(xd).items("test")

    sh = _copy(world, "ShanghaiTech", tmp_path)
    (sh / "SH_Test.txt").write_text((sh / "SH_Test.txt").read_text() + "01_0001 extra\n")
    with pytest.raises(DatasetError, match=r"SH_Test\.txt:\d+: .* is malformed"):
        ShanghaiTech(sh).items("test")

    ucf = _copy(world, "UCF101", tmp_path)
    (ucf / "ucfTrainTestlist" / "classInd.txt").write_text("1 Walking\nRunning\n")
    with pytest.raises(DatasetError, match=r"classInd\.txt:2: .* is malformed"):
        UCF101(ucf)


def test_missing_mask_of_a_test_set_video(world, tmp_path):
    root = _copy(world, "ShanghaiTech", tmp_path)
    masks = sorted((root / "testing" / "test_frame_mask").glob("*.npy"))
    masks[0].unlink()
    with pytest.raises(DatasetError, match=f"no frame mask .*{masks[0].name}"):
        sh = ShanghaiTech(root)
        sh.items("train") + sh.items("test")


def test_xd_labels_come_from_the_name():
    assert parse_xd_label("Movie.2001__#00-01-00_00-02-00_label_A") == (0, "Normal")
    assert parse_xd_label("v=QiLNvC7CIuY__#1_label_B1-0-0") == (1, "Fighting")
    assert parse_xd_label("X__#1_label_B2-G-0") == (1, "Shooting+Explosion")
    for bad in ("no_label_here", "X__#1_label_B9-0-0", "X__#1_label_A-B1-0"):
        with pytest.raises(DatasetError, match="file name"):
            parse_xd_label(bad)


def test_frame_label_helpers():
    labels = intervals_to_frame_labels([(2, 4), (8, 20)], 10, name="v")
    assert labels.tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    assert runs_of_ones(labels) == ((2, 4), (8, 10))
    with pytest.raises(DatasetError, match="starts at or after"):
        intervals_to_frame_labels([(12, 14)], 10, name="v")


def test_carve_validation_is_order_independent_and_stratified():
    items = [(f"id{i:03d}", i % 4 == 0) for i in range(100)]
    train, val = carve_validation(items, fraction=0.2, seed=5, key=lambda x: x[0], stratify=lambda x: x[1])
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    train2, val2 = carve_validation(shuffled, fraction=0.2, seed=5, key=lambda x: x[0], stratify=lambda x: x[1])
    assert val == val2 and train == train2
    assert len(val) == 20 and sum(flag for _, flag in val) == 5
    assert not {k for k, _ in train} & {k for k, _ in val}
    _, other = carve_validation(items, fraction=0.2, seed=6, key=lambda x: x[0])
    assert other != val


def test_read_person_boxes_groups_rows_by_frame(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.array([[2, 1, 1, 5, 5], [0, 0, 0, 3, 3], [2, 4, 4, 9, 9]], dtype=np.int32))
    boxes = read_person_boxes(path, 4)
    assert [len(b) for b in boxes] == [1, 0, 2, 0]
    assert boxes[2].tolist() == [[1, 1, 5, 5], [4, 4, 9, 9]]
    with pytest.raises(DatasetError, match=r"expected frames in \[0, 2\)"):
        read_person_boxes(path, 2)
