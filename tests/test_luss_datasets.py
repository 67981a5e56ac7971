"""Unsupervised VAD adapters (issue 17): each round-trips its synthetic analogue; bad input names the video."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from aux_code.datasets.avenue import Avenue
from aux_code.datasets.common import DatasetError
from aux_code.datasets.ped2 import Ped2, parse_gt_m_file
from aux_code.datasets.shanghaitech_unsupervised import ShanghaiTechUnsupervised
from aux_code.datasets.unsupervised import prepared_frames
from aux_code.synthetic.unsupervised import DIRS, generate

ADAPTERS = {"ped2": Ped2, "avenue": Avenue, "shanghaitech_unsupervised": ShanghaiTechUnsupervised}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("luss_world")
    generate(out, seed=3, size="tiny")
    return out


@pytest.fixture
def copy(world, tmp_path):
    def make(key):
        dst = tmp_path / DIRS[key]
        shutil.copytree(world / DIRS[key], dst)
        return dst
    return make


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_round_trip(world, key):
    root = world / DIRS[key]
    written = json.loads((root / "synthetic.json").read_text())
    adapter = ADAPTERS[key](root)
    train, test = adapter.videos("train"), adapter.videos("test")
    assert len(train) == written["train"] and len(test) == written["test"]
    assert {v.name: int(v.frame_labels().sum()) for v in test} == written["abnormal_frames"]
    for v in train + test:
        frames = list(v.frames())
        assert len(frames) == v.num_frames == len(v.frame_labels()) == 40
        assert frames[0].dtype == np.uint8 and frames[0].shape == (48, 64)
    x = next(prepared_frames(test[0].frames(), (32, 32)))
    assert x.shape == (32, 32) and -1.0 <= x.min() and x.max() <= 1.0


def test_metadata_files_are_the_label_files(copy):
    """What fit's resume check and the table drivers' reuse check digest: every file a label comes from."""
    from aux_code.datasets import dataset_digests

    root = copy("ped2")
    tests = sorted(d.name for d in (root / "Test").iterdir() if d.is_dir() and not d.name.endswith("_gt"))
    assert set(dataset_digests("ped2", root)) == {"person_boxes.json", "Test/UCSDped2.m"}  # the .m covers every test video
    m_file = root / "Test" / "UCSDped2.m"
    m_file.write_text("".join(m_file.read_text().splitlines(keepends=True)[:-1]))  # the last video: from its masks
    assert len(parse_gt_m_file(m_file)) == len(tests) - 1
    masks = {f"Test/{tests[-1]}_gt/{p.name}" for p in (root / "Test" / f"{tests[-1]}_gt").iterdir()}
    assert len(masks) == 40 and set(dataset_digests("ped2", root)) == {"person_boxes.json", "Test/UCSDped2.m"} | masks
    root = copy("avenue")
    mats = {f"ground_truth_demo/testing_label_mask/{int(p.stem)}_label.mat" for p in (root / "testing_videos").glob("*.avi")}
    assert set(dataset_digests("avenue", root)) == {"person_boxes.json"} | mats
    root = copy("shanghaitech_unsupervised")
    npys = {f"testing/test_frame_mask/{d.name}.npy" for d in (root / "testing" / "frames").iterdir()}
    assert set(dataset_digests("shanghaitech_unsupervised", root)) == {"person_boxes.json"} | npys


def test_ped2_m_file_parsing(tmp_path):
    p = tmp_path / "UCSDped2.m"
    p.write_text("TestVideoFile = {};\n% Test001\nTestVideoFile{end+1}.gt_frame = [61:180];\n"
                 "TestVideoFile{end+1}.gt_frame = [1:10, 20:25 30];\n")
    assert parse_gt_m_file(p) == [[(60, 180)], [(0, 10), (19, 25), (29, 30)]]


def test_ped2_masks_used_without_m_file_and_missing_gt(copy):
    root = copy("ped2")
    expected = [int(v.frame_labels().sum()) for v in Ped2(root).videos("test")]
    (root / "Test" / "UCSDped2.m").unlink()
    assert [int(v.frame_labels().sum()) for v in Ped2(root).videos("test")] == expected  # from TestNNN_gt masks
    shutil.rmtree(root / "Test" / "Test002_gt")
    with pytest.raises(DatasetError, match="test video Test002 has no ground truth"):
        Ped2(root).videos("test")


def test_ped2_anomalous_training_video(copy):
    root = copy("ped2")
    gt = root / "Train" / "Train002_gt"
    gt.mkdir()
    for i in range(40):
        Image.fromarray(np.full((48, 64), 255 if i == 5 else 0, np.uint8)).save(gt / f"{i + 1:03d}.bmp")
    with pytest.raises(DatasetError, match="training video Train002 has 1 anomalous frames"):
        Ped2(root).videos("train")


def test_avenue_mask_length_mismatch_and_missing(copy):
    root = copy("avenue")
    mat = root / "ground_truth_demo" / "testing_label_mask" / "2_label.mat"
    cell = np.empty((1, 39), dtype=object)
    for i in range(39):
        cell[0, i] = np.zeros((48, 64), np.uint8)
    scipy.io.savemat(str(mat), {"volLabel": cell})
    with pytest.raises(DatasetError, match=r"video 02 .* has 39 frames but the video has 40"):
        Avenue(root).videos("test")
    mat.unlink()
    with pytest.raises(DatasetError, match="test video 02 has no ground truth"):
        Avenue(root).videos("test")


def test_shanghaitech_bad_inputs(copy):
    root = copy("shanghaitech_unsupervised")
    masks = root / "testing" / "test_frame_mask"
    first = sorted((root / "testing" / "frames").iterdir())[0]
    # mixed frame sizes
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(first / "007.jpg")
    video = ShanghaiTechUnsupervised(root).videos("test")[0]
    with pytest.raises(DatasetError, match=f"video {first.name} mixes frame sizes: frame 7 is 60x40"):
        list(video.frames())
    # a training video with anomalous frames
    np.save(masks / "01_001.npy", np.r_[np.zeros(30), np.ones(10)].astype(np.uint8))
    with pytest.raises(DatasetError, match="training video 01_001 has 10 anomalous frames"):
        ShanghaiTechUnsupervised(root).videos("train")
    # mask length and missing mask
    np.save(masks / f"{first.name}.npy", np.zeros(41, np.uint8))
    with pytest.raises(DatasetError, match=f"video {first.name} .* has 41 frames but the video has 40"):
        ShanghaiTechUnsupervised(root).videos("test")
    (masks / f"{first.name}.npy").unlink()
    with pytest.raises(DatasetError, match=f"test video {first.name} has no frame mask"):
        ShanghaiTechUnsupervised(root).videos("test")


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_color_frames_match_the_grey_ones(world, key):
    """The anonymizers' RGB view of a video is the same video: its luma is the grey stream (JPEG's
    own grey decoding may differ by one level)."""
    from aux_code.datasets.unsupervised import to_grey

    video = ADAPTERS[key](world / DIRS[key]).videos("test")[0]
    color, grey = list(video.frames(color=True)), list(video.frames())
    assert len(color) == len(grey) == video.num_frames
    assert color[0].shape == (48, 64, 3) and color[0].dtype == np.uint8
    diff = max(int(np.abs(to_grey(c).astype(int) - g.astype(int)).max()) for c, g in zip(color, grey))
    assert diff <= 1


def test_person_boxes_cover_everything_that_moves(world):
    """Ped2's analogue (lossless .tif): outside the union of a training video's person boxes the
    pixels never change (fixed camera), inside they do; one box list per frame."""
    adapter = Ped2(world / "UCSDped2")
    video = adapter.videos("train")[0]
    boxes = adapter.person_boxes(video)
    assert len(boxes) == video.num_frames and all(b.shape[1] == 4 for b in boxes)
    from aux_code.anonymizers import box_mask

    inside = box_mask(boxes, 48, 64).any(0)[0].numpy()
    frames = np.stack(list(video.frames())).astype(int)
    moving = (frames != frames[0]).any(0)
    assert inside.any() and moving[inside].any()
    assert not moving[~inside].any()


def test_person_boxes_missing_or_short(copy):
    root = copy("avenue")
    adapter = Avenue(root)
    video = adapter.videos("test")[1]
    boxes = json.loads((root / "person_boxes.json").read_text())
    boxes["test"][video.name] = boxes["test"][video.name][:-1]
    (root / "person_boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(DatasetError, match=f"boxes for 39 frames of test video {video.name}, which has 40"):
        adapter.person_boxes(video)
    (root / "person_boxes.json").unlink()
    with pytest.raises(DatasetError, match="no ground-truth person boxes .* anonymizer.boxes=hog"):
        adapter.person_boxes(video)
