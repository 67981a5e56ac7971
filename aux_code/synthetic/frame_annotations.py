"""The world's frame-level training annotations of the UCF-Crime analogue, in UCFCrime2Local's format.

Real UCF-Crime labels its training videos per video only; UCFCrime2Local adds VATIC boxes per
frame (read by aux_code.datasets.ucf_crime2local), which Giorgi et al. use as hard (box in view)
and soft (box lost) anomalies. For every abnormal *training* video of the analogue this writes
``UCFCrime2Local/Txt annotations/<name>.txt``: each event frame is one line with ``lost`` 0 (a
hard anomaly) and each frame of a margin of ``margin`` frames just before and just after an event
is one line with ``lost`` 1 (a soft anomaly: the lead-up and aftermath, where the paper's annotators
saw suspicious behaviour but no anomaly). A frame inside another event stays hard.

The box of a line is the union of the frame's ground-truth person boxes (``boxes/<name>.npy``,
x1 / y1 exclusive as there), or of the whole video's when the frame has none; one track per
event. The files are made from ``synthetic_meta.json`` (which records training events too) and
the box files alone, so :func:`generate_world` writes them with the rest and an existing world
gets them without re-rendering::

    python -m aux_code.synthetic.frame_annotations data/synthetic/UCF_Crime

No other file of the world changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..datasets.ucf_crime2local import DEFAULT_FOLDER

SOFT_MARGIN_FRAMES = 15  # half a second at the analogue's 30 fps
LABEL = "Person"


def _union(rows: np.ndarray) -> tuple[int, int, int, int]:
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(rows[:, 0].min()), int(rows[:, 1].min()), int(rows[:, 2].max()), int(rows[:, 3].max())


def annotation_lines(num_frames: int, events: Sequence[tuple[int, int]], boxes: np.ndarray, *,
                     margin: int = SOFT_MARGIN_FRAMES) -> list[str]:
    """VATIC lines of one video: ``events`` are half-open (start, end) frame ranges, ``boxes`` (K, 5)
    int rows ``frame, x0, y0, x1, y1``; one track per event, its frames in order."""
    hard = np.zeros(num_frames, dtype=bool)
    for start, end in events:
        hard[start:end] = True
    whole = _union(boxes[:, 1:]) if boxes.size else (0, 0, 0, 0)
    by_frame = {int(f): boxes[boxes[:, 0] == f, 1:] for f in np.unique(boxes[:, 0])} if boxes.size else {}
    lines = []
    for track, (start, end) in enumerate(events):
        frames = range(max(0, start - margin), min(num_frames, end + margin))
        for f in frames:
            in_event = start <= f < end
            if not in_event and hard[f]:
                continue  # another event's hard frame: that event's track has it
            rows = by_frame.get(f)
            x0, y0, x1, y1 = _union(rows) if rows is not None and rows.size else whole
            lines.append(f'{track} {x0} {y0} {x1} {y1} {f} {0 if in_event else 1} 0 0 "{LABEL}"')
    return lines


def write_frame_annotations(root: str | Path, *, margin: int = SOFT_MARGIN_FRAMES,
                            folder: str = DEFAULT_FOLDER) -> list[Path]:
    """Write the annotation of every abnormal training video of the UCF-Crime analogue at ``root``
    (its synthetic_meta.json and boxes/); returns the files written, sorted."""
    if margin < 0:
        raise ValueError(f"soft-anomaly margin must be >= 0 frames, got {margin}")
    root = Path(root)
    meta_path = root / "synthetic_meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} does not exist: {root} is not a synthetic world's UCF-Crime analogue")
    videos = json.loads(meta_path.read_text())["videos"]
    out_dir = root / folder
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(videos):
        v = videos[name]
        if v["split"] != "train" or not v["label"]:
            continue
        boxes_path = root / "boxes" / f"{name}.npy"
        boxes = np.load(boxes_path, allow_pickle=False) if boxes_path.is_file() else np.zeros((0, 5), np.int32)
        events = [(int(e[1]), int(e[2])) for e in v["events"]]
        lines = annotation_lines(int(v["num_frames"]), events, boxes, margin=margin)
        path = out_dir / f"{name}.txt"
        path.write_bytes(("\n".join(lines) + "\n").encode())
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aux_code.synthetic.frame_annotations",
                                description="Write UCFCrime2Local-style training annotations into a synthetic UCF-Crime root.")
    p.add_argument("root", type=Path, help="the world's UCF_Crime folder")
    p.add_argument("--margin", type=int, default=SOFT_MARGIN_FRAMES, help="soft-anomaly frames before and after each event")
    args = p.parse_args(argv)
    try:
        files = write_frame_annotations(args.root, margin=args.margin)
    except (OSError, ValueError, KeyError) as e:
        print(f"{p.prog}: error: {e}")
        return 2
    print(f"wrote {len(files)} annotation files under {args.root / DEFAULT_FOLDER}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
