"""The synthetic world: reproducibility, label statistics, geometry of events and boxes, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from aux_code.datasets import VISPR_ATTRIBUTES
from aux_code.synthetic import ACTION_CLASSES, PRESETS, WorldExistsError, generate_world, plan_world
from aux_code.synthetic.__main__ import main as cli_main
from aux_code.synthetic.plan import MIN_EVENT_FRAMES, item_rng, person_attributes
from aux_code.synthetic.render import render_action_clip, render_anomaly_video, render_image, shanghaitech_scene
from aux_code.synthetic.scenes import make_scene
from aux_code.synthetic.sizes import WorldSize
from aux_code.video import iter_frames

TINY = PRESETS["tiny"]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# tiny_world (seed 0, generated once per session, workers=1) comes from tests/conftest.py.

VIDEO_SUFFIXES = (".mp4", ".avi")


def _decoded(path: Path) -> np.ndarray:
    return np.stack(list(iter_frames(path))).astype(np.int16)


def test_same_seed_gives_identical_world_whatever_the_worker_count(tiny_world, tmp_path):
    """Everything but the video bitstreams is byte for byte the same; the videos decode to the
    same frames.

    Known encoder behaviour (found 2026-11-29): libx264 in the PyAV 18.1 wheel can encode the
    same frames to a different bitstream on a repeated call in one process (also with codec
    thread_count=1 and an explicit yuv420p conversion; FFmpeg 7.1, 8.0, 8.1). So an H.264 video
    may differ in bytes, but then it must decode to (nearly) the same frames; what the renderer
    drew is compared exactly in test_rendering_is_identical_in_a_fresh_process.
    """
    again = tmp_path / "world_b"
    generate_world(again, size="tiny", seed=0, workers=2, log=None)
    first, second = _hashes(tiny_world), _hashes(again)
    assert len(first) > 100  # every video, image, mask, list and box file
    assert first.keys() == second.keys()
    kinds = {Path(n).suffix for n in first}
    assert {".pkl", ".txt", ".json", ".npy", ".jpg", ".png", ".mp4", ".avi"} <= kinds
    differing = [n for n in first if first[n] != second[n]]
    assert [n for n in differing if not n.endswith(VIDEO_SUFFIXES)] == []
    for name in differing:
        assert name.endswith(".mp4"), f"{name}: only the H.264 encoder is known to vary; this is an MPEG-4 video"
        a, b = _decoded(tiny_world / name), _decoded(again / name)
        assert a.shape == b.shape, name
        # Two encodings of the same frames; another rendering differs by ~50 grey levels on average.
        assert np.abs(a - b).mean() < 4.0, name


def _render_digests(seed: int) -> dict[str, str]:
    """sha256 of what the renderer draws (frames and boxes) for a few items of each kind of the
    tiny world: action clips, one anomaly video per dataset (a ShanghaiTech one has a shared
    scene) and images."""
    size = TINY
    plan = plan_world(size, seed)
    out = {}
    for clip in plan.ucf101[:3]:
        r = render_action_clip(clip, size, seed)
        out[clip.name] = hashlib.sha256(np.stack(r.frames).tobytes() + r.boxes.tobytes()).hexdigest()
    for video in (plan.ucf_crime[0], plan.xd_violence[0], plan.shanghaitech[0]):
        scene = shanghaitech_scene(seed, video.scene, size) if video.scene is not None else None
        r = render_anomaly_video(video, size, seed, scene)
        out[video.name] = hashlib.sha256(np.stack(r.frames).tobytes() + r.boxes.tobytes()).hexdigest()
    for image_plan in plan.vispr[:6]:
        image, boxes = render_image(image_plan, seed)
        out[image_plan.image_id] = hashlib.sha256(image.tobytes() + repr(boxes).encode()).hexdigest()
    return out


def test_rendering_is_identical_in_a_fresh_process(tiny_world):
    """The rendered frames (before any encoder) depend on the seed alone: the same in this process
    and in a freshly spawned one (another hash salt, another global RNG state), and the world's
    files hold them: boxes exactly, JPEGs exactly as re-encoded, videos within the codec's loss."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        fresh = pool.submit(_render_digests, 0)
        here = _render_digests(0)
        assert fresh.result() == here
    assert len(here) == 12
    assert _render_digests(1) != here  # the digests do see the seed
    plan = plan_world(TINY, 0)

    clip = plan.ucf101[0]
    rendered = render_action_clip(clip, TINY, 0)
    np.testing.assert_array_equal(np.load(tiny_world / "UCF101" / "boxes" / f"{clip.name}.npy"), rendered.boxes)
    decoded = _decoded(tiny_world / "UCF101" / "Videos" / clip.relative_path)
    assert decoded.shape == np.stack(rendered.frames).shape
    assert np.abs(decoded - np.stack(rendered.frames)).mean() < 15.0  # mpeg4 at this size; another seed: ~50
    video = plan.ucf_crime[0]
    rendered = render_anomaly_video(video, TINY, 0)
    np.testing.assert_array_equal(np.load(tiny_world / "UCF_Crime" / "boxes" / f"{video.name}.npy"), rendered.boxes)
    decoded = _decoded(tiny_world / "UCF_Crime" / "Videos" / video.relative_path)
    assert np.abs(decoded - np.stack(rendered.frames)).mean() < 15.0
    image_plan = plan.vispr[0]
    image, _ = render_image(image_plan, 0)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok and (tiny_world / "VISPR" / f"{image_plan.split}2017" / f"{image_plan.image_id}.jpg").read_bytes() == encoded.tobytes()


def test_different_seed_gives_a_different_world(tiny_world, tmp_path):
    other = tmp_path / "world_c"
    generate_world(other, size="tiny", seed=1, workers=1, preview=False, log=None)
    first, second = _hashes(tiny_world), _hashes(other)
    videos = [n for n in first if n.endswith((".mp4", ".avi"))]
    shared = [n for n in videos if n in second]
    assert shared, "both worlds should have videos with the same names (the size preset fixes the names)"
    assert all(first[n] != second[n] for n in shared)
    assert (tiny_world / "VISPR" / "train_labels.pkl").read_bytes() != (other / "VISPR" / "train_labels.pkl").read_bytes()


def test_world_layout_summary_and_preview(tiny_world):
    for name in ("UCF101", "VISPR", "UCF_Crime", "XD_Violence", "ShanghaiTech"):
        assert (tiny_world / name).is_dir(), name
    assert not any(p.name.startswith(".staging") for p in tiny_world.iterdir())
    summary = json.loads((tiny_world / "summary.json").read_text())
    plan = plan_world(TINY, 0)
    assert summary["frame_size"] == [TINY.frame_height, TINY.frame_width]
    assert summary["datasets"]["UCF101"]["videos"]["train"] + summary["datasets"]["UCF101"]["videos"]["test"] == len(plan.ucf101)
    assert summary["datasets"]["VISPR"]["images"] == {"train": TINY.vispr_train, "test": TINY.vispr_test}
    crime = summary["datasets"]["UCF_Crime"]["videos"]
    assert crime == {"train": {"abnormal": 2, "normal": 2}, "test": {"abnormal": 2, "normal": 2}}
    assert 0.0 < summary["datasets"]["UCF_Crime"]["test_abnormal_frame_fraction"] < 1.0
    preview = cv2.imread(str(tiny_world / "preview.png"))
    assert preview is not None and preview.shape[0] > 600 and preview.shape[1] > 600


def test_existing_world_is_not_replaced_without_force(tiny_world_copy, capsys):
    world = tiny_world_copy  # a copy: were the refusal broken, the shared world would be replaced
    before = _hashes(world)
    with pytest.raises(WorldExistsError, match="UCF101"):
        generate_world(world, size="tiny", seed=3, log=None)
    assert cli_main(["--out", str(world), "--size", "tiny", "--seed", "3"]) == 2
    assert "--force" in capsys.readouterr().err
    assert _hashes(world) == before


def test_privacy_attributes_are_independent_of_actions_and_anomalies():
    # Plan only (no rendering): many groups per class so that per-class rates are meaningful.
    big = dataclasses.replace(PRESETS["default"], groups_per_class=80, clips_per_group=1,
                              ucf_crime_train=(200, 200))
    plan = plan_world(big, 0)
    by_class = {}
    for clip in plan.ucf101:
        by_class.setdefault(clip.class_name, []).append(clip.attributes())
    overall = np.mean([c.attributes() for c in plan.ucf101], axis=0)
    assert np.all(overall > 0.1) and np.all(overall < 0.9)
    for class_name, vectors in by_class.items():
        rates = np.mean(vectors, axis=0)
        # 80 groups per class: binomial standard error <= 0.056, so 0.2 is a > 3.5-sigma band.
        assert np.all(np.abs(rates - overall) < 0.2), (class_name, rates, overall)
    # Anomaly actors are people like any other: trait rates of abnormal and normal videos agree.
    crime_train = [v for v in plan.ucf_crime if v.split == "train"]
    first_person = lambda videos: np.mean([person_attributes(v.people[:1]) for v in videos], axis=0)  # noqa: E731
    abnormal = first_person([v for v in crime_train if v.label])
    normal = first_person([v for v in crime_train if not v.label])
    assert np.all(np.abs(abnormal - normal) < 0.15), (abnormal, normal)
    # Nor does the head count give anomalies away.
    heads = lambda videos: np.mean([len(v.people) for v in videos])  # noqa: E731
    assert abs(heads([v for v in crime_train if v.label]) - heads([v for v in crime_train if not v.label])) < 0.5


def test_vispr_rates_are_not_degenerate_and_people_match_labels():
    plan = plan_world(PRESETS["default"], 0)
    labels = np.array([p.labels for p in plan.vispr], dtype=np.float32)
    rates = labels.mean(axis=0)
    assert np.all(rates >= 0.2) and np.all(rates <= 0.6), dict(zip(VISPR_ATTRIBUTES, rates))
    for image in plan.vispr:
        assert person_attributes(image.people).tolist() == list(image.labels[:5]), image.image_id
        assert (image.holding is not None) == bool(image.labels[5])
        assert image.grouped == bool(image.labels[6])
        assert (len(image.people) >= 3) == bool(image.labels[6])
    assert len({p.image_id for p in plan.vispr}) == len(plan.vispr)


def test_events_are_long_inside_the_video_and_lengths_vary():
    plan = plan_world(PRESETS["default"], 0)
    lengths = set()
    for video in plan.anomaly_plans():
        lengths.add(video.num_frames)
        assert (video.label == 1) == bool(video.events)
        previous_end = 0
        for event in video.events:
            assert event.end - event.start >= MIN_EVENT_FRAMES >= 32
            assert previous_end <= event.start < event.end <= video.num_frames
            previous_end = event.end
        assert video.frame_labels().sum() == sum(e.end - e.start for e in video.events)
    assert len(lengths) > 20
    assert all(v.events for v in plan.ucf_crime if v.class_name != "Normal")


def test_ucf101_test_groups_are_disjoint_from_train_groups_in_every_split():
    plan = plan_world(PRESETS["default"], 0)
    assert [c.class_name for c in plan.ucf101[:: PRESETS["default"].groups_per_class * 3]] == list(ACTION_CLASSES)
    for k in range(3):
        test_groups = {(c.class_name, c.group) for c in plan.ucf101 if c.test_in_split[k]}
        train_groups = {(c.class_name, c.group) for c in plan.ucf101 if not c.test_in_split[k]}
        assert test_groups and train_groups and not test_groups & train_groups
    first_split_test = {c.group for c in plan.ucf101 if c.test_in_split[0]}
    assert first_split_test == {1, 2, 3}
    # A group number is the same people in every class, so they cannot stand in for an action.
    people_of_group = {}
    for clip in plan.ucf101:
        assert people_of_group.setdefault(clip.group, (clip.people, clip.layout)) == (clip.people, clip.layout)


def test_every_action_class_moves():
    size = PRESETS["default"]
    plan = plan_world(dataclasses.replace(size, groups_per_class=2, test_groups=1, clips_per_group=1, action_frames=(64, 64)), 0)
    for clip in (c for c in plan.ucf101 if c.group == 2):
        frames = np.stack(render_action_clip(clip, size, 0).frames[:40]).astype(np.int16)
        assert frames.shape == (40, size.frame_height, size.frame_width, 3)
        motion = np.abs(np.diff(frames, axis=0)).mean()
        assert motion > 0.1, (clip.class_name, motion)


def test_person_boxes_contain_everything_drawn_over_the_background():
    size = TINY
    plan = plan_world(size, 0)
    video = next(v for v in plan.ucf_crime if v.split == "test" and v.events and v.events[0].kind != "throw")
    rendered = render_anomaly_video(video, size, 0)
    # The same scene the renderer drew on: first draw of the item's render stream.
    from aux_code.synthetic.plan import RENDER_STREAM
    from aux_code.synthetic.people import downsample

    scene = make_scene(item_rng(0, video.key, RENDER_STREAM), height=size.frame_height, width=size.frame_width)
    background = downsample(scene.canvas, size.frame_height, size.frame_width).astype(np.int16)
    boxes = rendered.boxes
    assert boxes.shape[1] == 5 and len(boxes) > video.num_frames  # several people per frame
    assert np.all((boxes[:, 1] >= 0) & (boxes[:, 3] <= size.frame_width) & (boxes[:, 1] < boxes[:, 3]))
    assert np.all((boxes[:, 2] >= 0) & (boxes[:, 4] <= size.frame_height) & (boxes[:, 2] < boxes[:, 4]))
    outside_changed = inside_changed = 0
    for t in range(0, video.num_frames, 7):
        changed = np.abs(rendered.frames[t].astype(np.int16) - background).max(axis=2) > 12
        inside = np.zeros_like(changed)
        for _, x0, y0, x1, y1 in boxes[boxes[:, 0] == t]:
            inside[y0:y1, x0:x1] = True
        outside_changed += int((changed & ~inside).sum())
        inside_changed += int((changed & inside).sum())
    assert inside_changed > 0
    # Boxes include line widths and anti-aliasing: (almost) no changed pixel lies outside them.
    assert outside_changed <= 0.001 * inside_changed


def test_images_render_at_their_planned_size_with_boxes():
    plan = plan_world(TINY, 0)
    for image_plan in plan.vispr[:6]:
        image, boxes = render_image(image_plan, 0)
        assert image.shape == (*image_plan.image_size, 3) and image.dtype == np.uint8
        assert len(boxes) == len(image_plan.people)
        again, _ = render_image(image_plan, 0)
        assert np.array_equal(image, again)


def test_world_size_validation_names_the_field():
    with pytest.raises(ValueError, match="frame_width"):
        plan_world(dataclasses.replace(TINY, frame_width=95), 0)
    with pytest.raises(ValueError, match="test_groups"):
        plan_world(dataclasses.replace(TINY, test_groups=2, groups_per_class=2), 0)
    with pytest.raises(ValueError, match="anomaly_frames"):
        WorldSize(anomaly_frames=(50, 80)).validate()
    with pytest.raises(ValueError, match="anomaly_test_frames"):
        WorldSize(anomaly_test_frames=(90, 100)).validate()


def test_test_videos_take_their_own_lengths():
    # Many short test videos (narrow AUC intervals) without touching what MGFN trains on.
    size = dataclasses.replace(TINY, anomaly_frames=(200, 210), anomaly_test_frames=(96, 100))
    plans = plan_world(size, 0).ucf_crime
    assert {p.split for p in plans} == {"train", "test"}
    for p in plans:
        low, high = (96, 100) if p.split == "test" else (200, 210)
        assert low <= p.num_frames <= high, (p.name, p.split, p.num_frames)
