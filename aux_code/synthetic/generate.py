"""Writing the synthetic world to disk in the real datasets' formats.

World layout (folder names are the defaults of ``PathsConfig``)::

    <out>/UCF101/         Videos/<Class>/v_<Class>_gXX_cYY.avi (MPEG-4, 25 fps),
                          ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt
    <out>/VISPR/          {train,test}2017/<id>.jpg, {train,test}_labels.pkl
    <out>/UCF_Crime/      Videos/<Folder>/<name>_x264.mp4 (H.264, 30 fps), Anomaly_{Train,Test}.txt,
                          Temporal_Anomaly_Annotation_for_Testing_Videos.txt,
                          UCFCrime2Local/Txt annotations/<name>.txt (training videos' hard / soft
                          anomaly frames, VATIC text; aux_code.synthetic.frame_annotations)
    <out>/XD_Violence/    {train,test}/<name>_label_<codes>.mp4 (H.264, 24 fps), annotations.txt
    <out>/ShanghaiTech/   {training,testing}/videos/<NN_MMM[M]>.avi (MPEG-4, 24 fps),
                          testing/test_frame_mask/<name>.npy, SH_{Train,Test}.txt
    <out>/summary.json    counts, attribute rates, anomaly fractions
    <out>/preview.png     a contact sheet of the world

Extras the real datasets do not have, for stages that need ground truth on this world:
``boxes/<video name>.npy`` per video (int32 rows ``frame, x0, y0, x1, y1``, x1/y1
exclusive), ``person_boxes_{train,test}2017.json`` for the images (image id -> boxes), and
``synthetic_meta.json`` per dataset (every item's privacy attributes and, for anomaly
videos, every event including those of training videos, which the annotation files leave
out as the real datasets do).

The world is built in a staging folder and moved into place at the end, so an interrupted
run never leaves a half-written dataset where a stage would read it.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..datasets.vispr import VISPR_ATTRIBUTES
from ..video import write_video
from .plan import (
    FPS,
    ActionClipPlan,
    AnomalyVideoPlan,
    ImagePlan,
    WorldPlan,
    plan_world,
)
from .preview import write_preview
from .render import render_action_clip, render_anomaly_video, render_image, shanghaitech_scene
from .sizes import PRESETS, WorldSize, world_size

DATASET_DIRS: dict[str, str] = {
    "ucf101": "UCF101",
    "vispr": "VISPR",
    "ucf_crime": "UCF_Crime",
    "xd_violence": "XD_Violence",
    "shanghaitech": "ShanghaiTech",
}
FORMAT_VERSION = 1
_JPEG_QUALITY = 92


class WorldExistsError(FileExistsError):
    """The output folder already holds (part of) a world and replacing it was not asked for."""


# --------------------------------------------------------------------------- one item each


def _write_action_clip(plan: ActionClipPlan, size: WorldSize, seed: int, root: Path) -> int:
    rendered = render_action_clip(plan, size, seed)
    write_video(root / "Videos" / plan.relative_path, rendered.frames, fps=FPS["ucf101"], codec="mpeg4")
    _save_npy(root / "boxes" / f"{plan.name}.npy", rendered.boxes)
    return len(rendered.frames)


def _write_image(plan: ImagePlan, seed: int, root: Path) -> list[list[int]]:
    image, boxes = render_image(plan, seed)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"could not encode image {plan.image_id}")
    _write_bytes(root / f"{plan.split}2017" / f"{plan.image_id}.jpg", encoded.tobytes())
    return [list(b) for b in boxes]


def _write_anomaly_video(plan: AnomalyVideoPlan, size: WorldSize, seed: int, root: Path) -> int:
    scene = shanghaitech_scene(seed, plan.scene, size) if plan.scene is not None else None
    rendered = render_anomaly_video(plan, size, seed, scene)
    if plan.dataset == "ucf_crime":
        path, codec = root / "Videos" / plan.relative_path, "h264"
    elif plan.dataset == "xd_violence":
        path, codec = root / plan.relative_path, "h264"
    else:
        path, codec = root / plan.relative_path, "mpeg4"
    write_video(path, rendered.frames, fps=plan.fps, codec=codec)
    _save_npy(root / "boxes" / f"{plan.name}.npy", rendered.boxes)
    return len(rendered.frames)


def _run_job(job: tuple) -> tuple[str, object]:
    kind, plan, size, seed, root = job
    if kind == "action":
        return plan.name, _write_action_clip(plan, size, seed, root)
    if kind == "image":
        return plan.image_id, _write_image(plan, seed, root)
    return plan.name, _write_anomaly_video(plan, size, seed, root)


# --------------------------------------------------------------------------- small writers


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_text(path: Path, lines: list[str]) -> None:
    _write_bytes(path, ("\n".join(lines) + "\n").encode())


def _write_json(path: Path, data: object) -> None:
    _write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _rates(vectors: list[np.ndarray]) -> dict[str, float]:
    if not vectors:
        return {}
    mean = np.mean(np.stack(vectors), axis=0)
    return {name: round(float(v), 4) for name, v in zip(VISPR_ATTRIBUTES, mean)}


def _person_rates(vectors: list[np.ndarray]) -> dict[str, float]:
    if not vectors:
        return {}
    mean = np.mean(np.stack(vectors), axis=0)
    return {name: round(float(v), 4) for name, v in zip(VISPR_ATTRIBUTES[:5], mean)}


# --------------------------------------------------------------------------- per-dataset files


def _ucf101_files(plan: WorldPlan, root: Path, frames: dict[str, int]) -> dict:
    classes = sorted({(c.class_index, c.class_name) for c in plan.ucf101})
    _write_text(root / "ucfTrainTestlist" / "classInd.txt", [f"{i + 1} {name}" for i, name in classes])
    for split_number in (1, 2, 3):
        train = [c for c in plan.ucf101 if not c.test_in_split[split_number - 1]]
        test = [c for c in plan.ucf101 if c.test_in_split[split_number - 1]]
        _write_text(root / "ucfTrainTestlist" / f"trainlist0{split_number}.txt",
                    [f"{c.relative_path} {c.class_index + 1}" for c in train])
        _write_text(root / "ucfTrainTestlist" / f"testlist0{split_number}.txt", [c.relative_path for c in test])
    meta = {
        c.name: {
            "class": c.class_name, "group": c.group, "clip": c.clip, "num_frames": c.num_frames, "layout": c.layout,
            "attributes": dict(zip(VISPR_ATTRIBUTES, c.attributes().astype(int).tolist())),
        }
        for c in plan.ucf101
    }
    _write_json(root / "synthetic_meta.json", {"format_version": FORMAT_VERSION, "videos": meta})
    split1_test = [c for c in plan.ucf101 if c.test_in_split[0]]
    return {
        "classes": [name for _, name in classes],
        "videos": {"train": len(plan.ucf101) - len(split1_test), "test": len(split1_test)},
        "frames": sum(frames[c.name] for c in plan.ucf101),
        "attribute_rates": _rates([c.attributes() for c in plan.ucf101]),
    }


def _vispr_files(plan: WorldPlan, root: Path, boxes: dict[str, list]) -> dict:
    out = {"images": {}, "attribute_rates": {}}
    for split in ("train", "test"):
        items = [p for p in plan.vispr if p.split == split]
        labels = {p.image_id: np.asarray(p.labels, dtype=np.float32) for p in items}
        # The label files of SPAct/TeD-SPAD are pickled dicts of arrays; write the same form.
        _write_bytes(root / f"{split}_labels.pkl", pickle.dumps(labels, protocol=4))
        _write_json(root / f"person_boxes_{split}2017.json", {p.image_id: boxes[p.image_id] for p in items})
        out["images"][split] = len(items)
        out["attribute_rates"][split] = _rates([np.asarray(p.labels, np.float32) for p in items])
    meta = {p.image_id: {"split": p.split, "people": len(p.people), "size": list(p.image_size)} for p in plan.vispr}
    _write_json(root / "synthetic_meta.json", {"format_version": FORMAT_VERSION, "images": meta})
    return out


def _anomaly_meta(videos: list[AnomalyVideoPlan]) -> dict:
    return {
        v.name: {
            "split": v.split, "path": v.relative_path, "class": v.class_name, "label": v.label,
            "num_frames": v.num_frames, "events": [[e.kind, e.start, e.end] for e in v.events],
            "people": len(v.people), "attributes": dict(zip(VISPR_ATTRIBUTES[:5], v.attributes().astype(int).tolist())),
        }
        for v in videos
    }


def _anomaly_summary(videos: list[AnomalyVideoPlan]) -> dict:
    out: dict = {"videos": {}, "classes": {}}
    for split in ("train", "test"):
        items = [v for v in videos if v.split == split]
        out["videos"][split] = {"abnormal": sum(v.label for v in items), "normal": sum(1 - v.label for v in items)}
        frames = sum(v.num_frames for v in items)
        abnormal = sum(int(v.frame_labels().sum()) for v in items)
        out[f"{split}_frames"] = frames
        out[f"{split}_abnormal_frame_fraction"] = round(abnormal / frames, 4) if frames else 0.0
    for v in videos:
        out["classes"][v.class_name] = out["classes"].get(v.class_name, 0) + 1
    lengths = [e.end - e.start for v in videos for e in v.events]
    out["event_frames_min_max"] = [min(lengths), max(lengths)] if lengths else []
    out["person_attribute_rates"] = {
        "abnormal": _person_rates([v.attributes() for v in videos if v.label]),
        "normal": _person_rates([v.attributes() for v in videos if not v.label]),
    }
    return out


def _ucf_crime_files(plan: WorldPlan, root: Path) -> dict:
    def order(v: AnomalyVideoPlan) -> tuple:
        return (v.class_name == "Normal", v.relative_path)

    for split, file_name in (("train", "Anomaly_Train.txt"), ("test", "Anomaly_Test.txt")):
        _write_text(root / file_name, [v.relative_path for v in sorted(plan.ucf_crime, key=order) if v.split == split])
    lines = []
    for v in sorted((v for v in plan.ucf_crime if v.split == "test"), key=order):
        # The release's convention: inclusive end frames, -1 for an absent event.
        bounds = [[e.start, e.end - 1] for e in v.events] + [[-1, -1]] * (2 - len(v.events))
        flat = "  ".join(str(b) for pair in bounds for b in pair)
        lines.append(f"{v.name}.mp4  {v.class_name}  {flat}")
    _write_text(root / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt", lines)
    _write_json(root / "synthetic_meta.json", {"format_version": FORMAT_VERSION, "videos": _anomaly_meta(plan.ucf_crime)})
    return _anomaly_summary(plan.ucf_crime)


def _xd_violence_files(plan: WorldPlan, root: Path) -> dict:
    lines = []
    for v in sorted(plan.xd_violence, key=lambda v: v.name):
        if v.split == "test" and v.events:
            # XD-Violence's convention: exclusive end frames; normal videos have no line.
            lines.append(" ".join([v.name] + [str(b) for e in v.events for b in (e.start, e.end)]))
    _write_text(root / "annotations.txt", lines)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    _write_json(root / "synthetic_meta.json", {"format_version": FORMAT_VERSION, "videos": _anomaly_meta(plan.xd_violence)})
    return _anomaly_summary(plan.xd_violence)


def _shanghaitech_files(plan: WorldPlan, root: Path) -> dict:
    for split, file_name in (("train", "SH_Train.txt"), ("test", "SH_Test.txt")):
        # Alphabetical, like the released lists: the order says nothing about the labels.
        _write_text(root / file_name, sorted(v.name for v in plan.shanghaitech if v.split == split))
    for v in plan.shanghaitech:
        if v.relative_path.startswith("testing/"):
            _save_npy(root / "testing" / "test_frame_mask" / f"{v.name}.npy", v.frame_labels())
    for folder in ("training/videos", "testing/videos", "testing/test_frame_mask"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _write_json(root / "synthetic_meta.json", {"format_version": FORMAT_VERSION, "videos": _anomaly_meta(plan.shanghaitech)})
    out = _anomaly_summary(plan.shanghaitech)
    out["scenes"] = plan.size.shanghaitech_scenes
    return out


# --------------------------------------------------------------------------- the world


def generate_world(
    out: str | Path,
    *,
    size: WorldSize | str = "default",
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    preview: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Generate every dataset of the world under ``out``; returns the summary (also in summary.json).

    The same ``size`` and ``seed`` give byte-identical files. ``workers`` > 1 renders items in
    parallel processes (the output does not depend on it). An existing world under ``out``
    is replaced only with ``force``.
    """
    size_name = size if isinstance(size, str) else next((k for k, v in PRESETS.items() if v == size), "custom")
    world = world_size(size) if isinstance(size, str) else size
    out = Path(out)
    existing = [name for name in DATASET_DIRS.values() if (out / name).exists()]
    if existing and not force:
        raise WorldExistsError(
            f"{out} already holds {', '.join(existing)}; pass force=True (--force) to replace the world there"
        )
    started = time.perf_counter()
    plan = plan_world(world, seed)
    staging = out / f".staging-{seed}"
    if staging.exists():
        shutil.rmtree(staging)
    roots = {key: staging / name for key, name in DATASET_DIRS.items()}
    for root in roots.values():
        root.mkdir(parents=True)

    jobs: list[tuple] = []
    jobs += [("anomaly", v, world, seed, roots[v.dataset]) for v in plan.anomaly_plans()]
    jobs += [("action", c, world, seed, roots["ucf101"]) for c in plan.ucf101]
    jobs += [("image", p, world, seed, roots["vispr"]) for p in plan.vispr]
    results: dict[str, object] = {}
    if workers > 1:
        # Spawned (not forked) workers: the caller may hold threads (torch, OpenCV) that fork would copy half-way.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for key, value in pool.map(_run_job, jobs, chunksize=4):
                results[key] = value
    else:
        for job in jobs:
            key, value = _run_job(job)
            results[key] = value

    summary_datasets = {
        DATASET_DIRS["ucf101"]: _ucf101_files(plan, roots["ucf101"], results),  # type: ignore[arg-type]
        DATASET_DIRS["vispr"]: _vispr_files(plan, roots["vispr"], results),  # type: ignore[arg-type]
        DATASET_DIRS["ucf_crime"]: _ucf_crime_files(plan, roots["ucf_crime"]),
        DATASET_DIRS["xd_violence"]: _xd_violence_files(plan, roots["xd_violence"]),
        DATASET_DIRS["shanghaitech"]: _shanghaitech_files(plan, roots["shanghaitech"]),
    }
    # New files beside the rest (no existing file changes): made from synthetic_meta.json and boxes/.
    # Imported here so that `python -m aux_code.synthetic.frame_annotations` finds its module unimported.
    from .frame_annotations import write_frame_annotations

    write_frame_annotations(roots["ucf_crime"])
    for name in DATASET_DIRS.values():
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        (staging / name).replace(target)
    staging.rmdir()

    summary = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "size": size_name,
        "world_size": asdict(world),
        "frame_size": [world.frame_height, world.frame_width],
        "fps": FPS,
        "datasets": summary_datasets,
    }
    _write_json(out / "summary.json", summary)
    if preview:
        write_preview(plan, out / "preview.png")
    elapsed = time.perf_counter() - started
    if log is not None:
        log(format_summary(summary, out=out, seconds=elapsed))
    return summary


def format_summary(summary: dict, *, out: Path | None = None, seconds: float | None = None) -> str:
    """The summary as a few readable lines."""
    d = summary["datasets"]
    lines = [f"synthetic world (size {summary['size']}, seed {summary['seed']}, frames "
             f"{summary['frame_size'][0]}x{summary['frame_size'][1]})" + (f" -> {out}" if out else "")]
    u = d["UCF101"]
    lines.append(f"  UCF101       {len(u['classes'])} classes, train {u['videos']['train']} / test {u['videos']['test']} "
                 f"videos, {u['frames']} frames")
    v = d["VISPR"]
    lines.append(f"  VISPR        train {v['images']['train']} / test {v['images']['test']} images")
    for split in ("train", "test"):
        rates = ", ".join(f"{k} {r:.2f}" for k, r in v["attribute_rates"][split].items())
        lines.append(f"    {split} positive rates: {rates}")
    for name in ("UCF_Crime", "XD_Violence", "ShanghaiTech"):
        a = d[name]
        counts = ", ".join(f"{s} {a['videos'][s]['abnormal']} abnormal + {a['videos'][s]['normal']} normal"
                           for s in ("train", "test"))
        lines.append(f"  {name:<12} {counts}; test abnormal frames {a['test_abnormal_frame_fraction']:.1%}, "
                     f"events {a['event_frames_min_max'][0]}-{a['event_frames_min_max'][1]} frames")
    if seconds is not None:
        lines.append(f"  generated in {seconds:.1f} s")
    return "\n".join(lines)
