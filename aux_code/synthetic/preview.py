"""A contact sheet of the world (preview.png): actions, anomalies with their labels, privacy images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..datasets.vispr import VISPR_ATTRIBUTES
from .plan import AnomalyVideoPlan, WorldPlan
from .render import render_action_clip, render_anomaly_video, render_image, shanghaitech_scene

SCALE = 2
COLUMNS = 6
LABEL_WIDTH = 190
CAPTION = 16
FONT = cv2.FONT_HERSHEY_SIMPLEX
SHORT_ATTRIBUTE = {
    "gender": "gender", "complete_face": "face", "partial_face": "part.face", "semi_nudity": "skin+",
    "skin_color": "dark", "personal_relationship": "pair", "social_relationship": "group",
}


def _text(img: np.ndarray, text: str, org: tuple[int, int], colour=(20, 20, 20), scale: float = 0.4) -> None:
    cv2.putText(img, text, org, FONT, scale, colour, 1, cv2.LINE_AA)


def _tile(frame: np.ndarray, caption: str, colour, tile_h: int, tile_w: int) -> np.ndarray:
    out = np.full((tile_h + CAPTION, tile_w, 3), 255, np.uint8)
    big = cv2.resize(frame, (frame.shape[1] * SCALE, frame.shape[0] * SCALE), interpolation=cv2.INTER_NEAREST)
    bh, bw = min(big.shape[0], tile_h), min(big.shape[1], tile_w)
    y0, x0 = (tile_h - bh) // 2, (tile_w - bw) // 2
    out[y0:y0 + bh, x0:x0 + bw] = big[:bh, :bw]
    _text(out, caption, (3, tile_h + 12), colour, 0.36)
    return out


def _row(label_lines: list[str], tiles: list[np.ndarray], tile_h: int, tile_w: int) -> np.ndarray:
    row = np.full((tile_h + CAPTION + 6, LABEL_WIDTH + COLUMNS * (tile_w + 4), 3), 255, np.uint8)
    for i, line in enumerate(label_lines):
        _text(row, line, (6, 20 + 16 * i), (20, 20, 20), 0.42)
    for i, tile in enumerate(tiles[:COLUMNS]):
        x = LABEL_WIDTH + i * (tile_w + 4)
        row[3:3 + tile.shape[0], x:x + tile.shape[1]] = tile
    return row


def _anomaly_frames(plan: AnomalyVideoPlan) -> list[int]:
    event = plan.events[0]
    inside = np.linspace(event.start + 4, event.end - 5, 3).astype(int).tolist()
    before = [max(0, event.start - 30), max(0, event.start - 8)]
    after = [min(plan.num_frames - 1, event.end + 10)]
    return before + inside + after


def write_preview(plan: WorldPlan, path: Path) -> Path:
    """Render a few items of each dataset and write them as one PNG at ``path``."""
    size = plan.size
    tile_h = max(size.frame_height, *(s[0] for s in size.image_sizes)) * SCALE
    tile_w = max(size.frame_width, *(s[1] for s in size.image_sizes)) * SCALE
    rows = []
    header = np.full((40, LABEL_WIDTH + COLUMNS * (tile_w + 4), 3), 255, np.uint8)
    _text(header, f"Synthetic world, seed {plan.seed}: actions (UCF101), anomalies (UCF-Crime, XD-Violence, "
                  f"ShanghaiTech), privacy images (VISPR)", (6, 26), (0, 0, 0), 0.55)
    rows.append(header)

    # Actions: one clip of several classes, frames spread over one motion cycle or two.
    seen_classes: set[str] = set()
    for clip in plan.ucf101:
        if clip.class_name in seen_classes or len(seen_classes) >= 5:
            continue
        seen_classes.add(clip.class_name)
        rendered = render_action_clip(clip, size, plan.seed)
        picks = np.linspace(0, min(clip.num_frames - 1, 40), COLUMNS).astype(int)
        tiles = [_tile(rendered.frames[t], f"t={t}", (60, 60, 60), tile_h, tile_w) for t in picks]
        attributes = [SHORT_ATTRIBUTE[a] for a, v in zip(VISPR_ATTRIBUTES, clip.attributes()) if v]
        rows.append(_row(["UCF101 analogue", clip.class_name, clip.name[2:], " ".join(attributes[:3]),
                          " ".join(attributes[3:])], tiles, tile_h, tile_w))

    # Anomalies: frames before, inside and after the first event, label in the caption.
    shown = []
    for dataset_plans in (plan.ucf_crime, plan.xd_violence, plan.shanghaitech):
        kinds_shown = {p.events[0].kind for p in shown}
        for video in dataset_plans:
            if video.split == "test" and video.events and video.events[0].kind not in kinds_shown:
                shown.append(video)
                break
    for extra in plan.ucf_crime:
        if len(shown) >= 4:
            break
        if extra.split == "test" and extra.events and extra.events[0].kind not in {p.events[0].kind for p in shown}:
            shown.append(extra)
    for index, video in enumerate(shown):
        scene = shanghaitech_scene(plan.seed, video.scene, size) if video.scene is not None else None
        rendered = render_anomaly_video(video, size, plan.seed, scene)
        labels = video.frame_labels()
        with_boxes = index == len(shown) - 1
        tiles = []
        for t in _anomaly_frames(video):
            frame = rendered.frames[t].copy()
            if with_boxes:
                for _, x0, y0, x1, y1 in rendered.boxes[rendered.boxes[:, 0] == t]:
                    cv2.rectangle(frame, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (255, 230, 0), 1)
            abnormal = bool(labels[t])
            tiles.append(_tile(frame, f"t={t} {'ANOMALY' if abnormal else 'normal'}",
                               (200, 0, 0) if abnormal else (0, 130, 0), tile_h, tile_w))
        events = " ".join(f"{e.kind}[{e.start},{e.end})" for e in video.events)
        dataset = {"ucf_crime": "UCF-Crime", "xd_violence": "XD-Violence", "shanghaitech": "ShanghaiTech"}[video.dataset]
        name = video.name if len(video.name) < 24 else video.name[-22:]
        rows.append(_row([f"{dataset} analogue", name, events, f"{video.num_frames} frames",
                          "GT person boxes" if with_boxes else ""], tiles, tile_h, tile_w))

    # Privacy images with their positive attributes.
    images = plan.vispr[: 2 * COLUMNS]
    for start in range(0, len(images), COLUMNS):
        tiles = []
        for image_plan in images[start:start + COLUMNS]:
            image, _ = render_image(image_plan, plan.seed)
            positives = [SHORT_ATTRIBUTE[a] for a, v in zip(VISPR_ATTRIBUTES, image_plan.labels) if v]
            tiles.append(_tile(image, ",".join(positives) or "(none)", (0, 0, 160), tile_h, tile_w))
        rows.append(_row(["VISPR analogue", "caption: positive", "attributes"], tiles, tile_h, tile_w))

    sheet = np.concatenate(rows, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"could not encode the preview {path}")
    path.write_bytes(encoded.tobytes())
    return path
