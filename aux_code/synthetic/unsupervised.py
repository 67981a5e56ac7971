"""Synthetic analogues of the unsupervised VAD benchmarks, in their release formats (issue 17).

``python -m aux_code.synthetic.unsupervised [--seed N] [--size tiny|default|large] [--out DIR]`` writes

* ``UCSDped2/``: Train/TrainNNN/NNN.tif and Test/TestNNN/NNN.tif grey frames, Test/UCSDped2.m
  (1-based inclusive ``gt_frame`` ranges) and Test/TestNNN_gt/NNN.bmp masks of the anomaly;
* ``Avenue/``: training_videos/NN.avi, testing_videos/NN.avi (MJPEG) and
  ground_truth_demo/testing_label_mask/N_label.mat (a ``volLabel`` cell of pixel masks);
* ``ShanghaiTech_unsupervised/``: training/videos/SS_NNN.avi, testing/frames/SS_NNNN/NNN.jpg
  and testing/test_frame_mask/SS_NNNN.npy (several cameras SS);

next to the existing world (whose folders it never touches). Normal = people walking across a
fixed camera (the existing world's scenes, figures and gaits); each test video has one anomaly
over a frame interval: a person running, a fast object crossing, a person falling (Avenue
also: a throw with its thrown object). Training videos are all normal. Every frame of the event
interval is labelled abnormal (the actor is in view throughout it).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from aux_code.datasets.unsupervised import PERSON_BOXES
from aux_code.synthetic.motion import Projectile, Track, throw_projectiles
from aux_code.synthetic.people import clip_box, downsample, draw_ball, draw_person, sample_look, sample_traits
from aux_code.synthetic.scenes import Scene, make_scene
from aux_code.video import write_video

DIRS = {"ped2": "UCSDped2", "avenue": "Avenue", "shanghaitech_unsupervised": "ShanghaiTech_unsupervised"}


@dataclass(frozen=True)
class UnsupervisedSize:
    height: int
    width: int
    train_videos: int
    test_videos: int
    frames: int
    walkers: int
    cameras: int  # ShanghaiTech analogue only


SIZES = {
    "tiny": UnsupervisedSize(height=48, width=64, train_videos=3, test_videos=3, frames=40, walkers=2, cameras=2),
    "default": UnsupervisedSize(height=96, width=128, train_videos=8, test_videos=6, frames=120, walkers=3, cameras=2),
    # three times the videos: a playback-rate head trained on 6 videos overfits them, and 6 test videos
    # make one video's behaviour move the AUC by points (docs/luss_ae.md)
    "large": UnsupervisedSize(height=96, width=128, train_videos=24, test_videos=18, frames=120, walkers=3, cameras=2),
}
EVENTS = {
    "ped2": ("fast_object", "run", "fast_object", "run"),
    "avenue": ("run", "throw", "fall", "run", "throw", "fall"),
    "shanghaitech_unsupervised": ("run", "fall", "fast_object", "run", "fall", "fast_object"),
}


def _walkers(rng: np.random.Generator, scene: Scene, n: int, frames: int) -> list:
    people = []
    lo, hi = scene.ground_rows()
    for _ in range(n):
        g = float(rng.uniform(lo, hi))
        track = Track(rng, ground_y=g, height=scene.person_height(g), frame_width=scene.width)
        d = int(rng.choice([-1, 1]))
        x0 = float(rng.uniform(0.0, scene.width))
        # walk across, turn at the far side (keeps walkers in view over the whole video)
        t, x = 0, x0
        while t < frames:
            span = (scene.width * 0.9 - x) if d > 0 else (x - scene.width * 0.1)
            steps = max(8, int(span / track.walk_speed))
            track.add(t, min(frames, t + steps), "walk", x, d)
            x, _ = track.end_position(track.segments[-1])
            t += steps
            d = -d
        people.append((track, sample_look(rng, sample_traits(rng))))
    return people


def _event(rng: np.random.Generator, scene: Scene, kind: str, frames: int) -> tuple[list, list[Projectile], int, int]:
    """The anomaly's actors and objects and its frame interval [a, b)."""
    length = int(rng.integers(frames // 4, frames // 2))
    a = int(rng.integers(frames // 4, frames - length))
    b = a + length
    lo, hi = scene.ground_rows()
    g = float(rng.uniform(lo, hi))
    track = Track(rng, ground_y=g, height=scene.person_height(g), frame_width=scene.width)
    look = sample_look(rng, sample_traits(rng))
    d = int(rng.choice([-1, 1]))
    x = float(rng.uniform(0.3, 0.7) * scene.width)
    objects: list[Projectile] = []
    actors = []
    if kind == "run":
        track.add(a, b, "run", x, d)
        actors.append((track, look))
    elif kind == "fall":
        track.add(0, a, "stand", x, d).add(a, b, "fall", x, d).add(b, frames, "stand", x, d)
        actors.append((track, look))
    elif kind == "throw":
        track.add(0, a, "stand", x, d).add(a, b, "throw", x, d, period=max(6, length // 2)).add(b, frames, "stand", x, d)
        objects += throw_projectiles(track, track.segments[1], rng, frame_height=scene.height)
        actors.append((track, look))
    elif kind == "fast_object":
        r = max(2.0, 0.05 * scene.height)
        start = -r if d > 0 else scene.width + r
        vx = d * (scene.width + 2 * r) / length
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        objects.append(Projectile(a, b, start, g - 2 * r, vx, 0.0, 0.0, r, colour, float(scene.height * 2)))
    else:
        raise ValueError(f"unknown event {kind!r}")
    return actors, objects, a, b


def render(scene: Scene, people: list, objects: list[Projectile], frames: int) -> tuple[list[np.ndarray], list, list]:
    """RGB uint8 frames and, per frame, the boxes of the event's drawn actors and objects (for masks) and
    the boxes of every drawn person (the ground truth that box anonymizers use)."""
    out, boxes, person_boxes = [], [], []
    for t in range(frames):
        canvas = scene.canvas.copy()
        frame_boxes, frame_people = [], []
        states = [(tr(t), look, tag) for tr, look, tag in people]
        for state, look, tag in sorted((s for s in states if s[0] is not None), key=lambda s: s[0].ground_y):
            box = clip_box(draw_person(canvas, state, look), scene.width, scene.height)
            if box is not None:
                frame_people.append(box)
            if box is not None and tag:
                frame_boxes.append(box)
        for p in objects:
            pos = p.position(t)
            if pos is not None:
                draw_ball(canvas, pos, p.radius, p.colour)
                x, y, r = pos[0], pos[1], p.radius
                box = clip_box((x - r, y - r, x + r, y + r), scene.width, scene.height)
                if box is not None:
                    frame_boxes.append(box)
        out.append(downsample(canvas, scene.height, scene.width))
        boxes.append(frame_boxes)
        person_boxes.append(frame_people)
    return out, boxes, person_boxes


def make_video(rng: np.random.Generator, scene: Scene, size: UnsupervisedSize, event: str | None):
    """(frames RGB, labels 0/1 per frame, masks h x w per frame, person boxes per frame)."""
    people = [(tr, look, False) for tr, look in _walkers(rng, scene, size.walkers, size.frames)]
    labels = np.zeros(size.frames, np.uint8)
    objects: list[Projectile] = []
    if event is not None:
        actors, objects, a, b = _event(rng, scene, event, size.frames)
        people += [(tr, look, True) for tr, look in actors]
        labels[a:b] = 1
    frames, boxes, person_boxes = render(scene, people, objects, size.frames)
    masks = np.zeros((size.frames, scene.height, scene.width), np.uint8)
    for t in np.flatnonzero(labels):
        for x0, y0, x1, y1 in boxes[t]:
            masks[t, y0:y1, x0:x1] = 1
        if not masks[t].any():  # the event's region (e.g. a just-entering object): mark its row band
            masks[t, scene.height // 2, :] = 1
    return frames, labels, masks, person_boxes


class PersonBoxes:
    """Every drawn person's box per frame, per video, written as ``person_boxes.json`` at the dataset root.

    Not part of any release format: the real datasets ship no person boxes (box anonymizers use
    a detector there, ``anonymizer.boxes: hog``); the analogues know them, as the main world does.
    Layout: ``{"train": {video: [[[x0, y0, x1, y1], ...] per frame]}, "test": {...}}``.
    """

    def __init__(self) -> None:
        self.videos: dict[str, dict[str, list]] = {"train": {}, "test": {}}

    def add(self, split: str, name: str, per_frame: list) -> None:
        self.videos[split][name] = [[list(map(int, b)) for b in frame] for frame in per_frame]

    def write(self, root: Path) -> None:
        (root / PERSON_BOXES).write_text(json.dumps(self.videos, separators=(",", ":")))


def _grey(frame: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).convert("L"))


def _write_ped2(root: Path, rng, size: UnsupervisedSize) -> dict:
    scene = make_scene(rng, height=size.height, width=size.width, kind=None)
    boxes = PersonBoxes()
    for i in range(size.train_videos):
        frames, _, _, people = make_video(rng, scene, size, None)
        d = root / "Train" / f"Train{i + 1:03d}"
        boxes.add("train", d.name, people)
        d.mkdir(parents=True)
        for t, f in enumerate(frames):
            Image.fromarray(_grey(f)).save(d / f"{t + 1:03d}.tif")
    lines = ["TestVideoFile = {};"]
    counts = {}
    for i in range(size.test_videos):
        event = EVENTS["ped2"][i % len(EVENTS["ped2"])]
        frames, labels, masks, people = make_video(rng, scene, size, event)
        d = root / "Test" / f"Test{i + 1:03d}"
        boxes.add("test", d.name, people)
        (d.with_name(d.name + "_gt")).mkdir(parents=True)
        d.mkdir(parents=True)
        for t, f in enumerate(frames):
            Image.fromarray(_grey(f)).save(d / f"{t + 1:03d}.tif")
            Image.fromarray(masks[t] * 255).save(d.with_name(d.name + "_gt") / f"{t + 1:03d}.bmp")
        on = np.flatnonzero(labels)
        lines.append(f"TestVideoFile{{end+1}}.gt_frame = [{on[0] + 1}:{on[-1] + 1}];")
        counts[d.name] = int(labels.sum())
    (root / "Test" / "UCSDped2.m").write_text("\n".join(lines) + "\n")
    boxes.write(root)
    return {"train": size.train_videos, "test": size.test_videos, "abnormal_frames": counts}


def _write_avi(path: Path, frames: list[np.ndarray]) -> None:
    write_video(path, frames, fps=25, codec="mjpeg")


def _write_avenue(root: Path, rng, size: UnsupervisedSize) -> dict:
    scene = make_scene(rng, height=size.height, width=size.width, kind=None)
    boxes = PersonBoxes()
    for i in range(size.train_videos):
        frames, _, _, people = make_video(rng, scene, size, None)
        _write_avi(root / "training_videos" / f"{i + 1:02d}.avi", frames)
        boxes.add("train", f"{i + 1:02d}", people)
    mask_dir = root / "ground_truth_demo" / "testing_label_mask"
    mask_dir.mkdir(parents=True)
    counts = {}
    for i in range(size.test_videos):
        event = EVENTS["avenue"][i % len(EVENTS["avenue"])]
        frames, labels, masks, people = make_video(rng, scene, size, event)
        _write_avi(root / "testing_videos" / f"{i + 1:02d}.avi", frames)
        boxes.add("test", f"{i + 1:02d}", people)
        cell = np.empty((1, len(masks)), dtype=object)
        for t, m in enumerate(masks):
            cell[0, t] = m
        scipy.io.savemat(str(mask_dir / f"{i + 1}_label.mat"), {"volLabel": cell})
        counts[f"{i + 1:02d}"] = int(labels.sum())
    boxes.write(root)
    return {"train": size.train_videos, "test": size.test_videos, "abnormal_frames": counts}


def _write_shanghaitech(root: Path, rng, size: UnsupervisedSize) -> dict:
    scenes = [make_scene(rng, height=size.height, width=size.width, kind=None) for _ in range(size.cameras)]
    boxes = PersonBoxes()
    for i in range(size.train_videos):
        cam = i % size.cameras
        frames, _, _, people = make_video(rng, scenes[cam], size, None)
        name = f"{cam + 1:02d}_{i // size.cameras + 1:03d}"
        _write_avi(root / "training" / "videos" / f"{name}.avi", frames)
        boxes.add("train", name, people)
    mask_dir = root / "testing" / "test_frame_mask"
    mask_dir.mkdir(parents=True)
    counts = {}
    for i in range(size.test_videos):
        cam = i % size.cameras
        # the last test video is all normal, as some ShanghaiTech test videos are
        event = None if i == size.test_videos - 1 else EVENTS["shanghaitech_unsupervised"][i % 6]
        frames, labels, _, people = make_video(rng, scenes[cam], size, event)
        name = f"{cam + 1:02d}_{i // size.cameras + 1 + 13:04d}"
        boxes.add("test", name, people)
        d = root / "testing" / "frames" / name
        d.mkdir(parents=True)
        for t, f in enumerate(frames):
            Image.fromarray(f).save(d / f"{t:03d}.jpg", quality=95)
        np.save(mask_dir / f"{name}.npy", labels)
        counts[name] = int(labels.sum())
    boxes.write(root)
    return {"train": size.train_videos, "test": size.test_videos, "abnormal_frames": counts}


WRITERS = {"ped2": _write_ped2, "avenue": _write_avenue, "shanghaitech_unsupervised": _write_shanghaitech}


def generate(out: str | Path, *, seed: int = 0, size: str = "default", datasets=tuple(DIRS)) -> dict:
    """Write the analogues under ``out`` (each dataset folder replaced); returns a summary."""
    out = Path(out)
    sz = SIZES[size]
    summary = {"seed": seed, "size": size}
    for i, key in enumerate(DIRS):
        if key not in datasets:
            continue
        root = out / DIRS[key]
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        rng = np.random.default_rng([seed, i, 17])
        summary[key] = WRITERS[key](root, rng, sz)
        (root / "synthetic.json").write_text(json.dumps({"seed": seed, "size": size, **summary[key]}, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    from aux_code.config import PROJECT_ROOT

    parser = argparse.ArgumentParser(prog="python -m aux_code.synthetic.unsupervised", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "data" / "synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    args = parser.parse_args(argv)
    summary = generate(args.out, seed=args.seed, size=args.size)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
