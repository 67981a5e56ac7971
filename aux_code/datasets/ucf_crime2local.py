"""Frame-level training annotations in UCFCrime2Local's format (Landi et al., 2019), hard and soft.

UCFCrime2Local annotates UCF-Crime videos with the VATIC annotation tool and ships one plain-text
VATIC dump per video. Giorgi et al. (JoWUA 2022, s.4.1.1) read it as frame-level supervision: a
frame with a box whose ``lost`` flag is 0 is a *hard* anomaly, one whose boxes are all ``lost``
is a *soft* anomaly (the anomaly is not clearly in view), a frame with no line is normal.

Layout under the UCF-Crime root (the folder name is an option of :class:`UCFCrime2Local`)::

    UCFCrime2Local/Txt annotations/<video name>.txt      e.g. Fighting003_x264.txt

One line per (track, frame), ten space-separated fields, VATIC's text dump::

    <track id> <xmin> <ymin> <xmax> <ymax> <frame> <lost> <occluded> <generated> "<label>"

``frame`` is 0-based; ``lost``, ``occluded`` and ``generated`` are 0 or 1; the label is quoted.
The synthetic world writes these files for its abnormal UCF-Crime *training* videos: the event's
frames with ``lost`` 0 and a soft margin just before and after it with ``lost`` 1
(aux_code.synthetic.frame_annotations). A malformed line raises :class:`DatasetError` naming the
file and the line.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import DatasetError, read_lines

__all__ = ["NORMAL", "SOFT", "HARD", "DEFAULT_FOLDER", "VaticBox", "parse_vatic", "frame_kinds", "UCFCrime2Local"]

# Per-frame kinds; an int8 vector of these is what the detector's loss reads.
NORMAL, SOFT, HARD = 0, 1, 2
DEFAULT_FOLDER = "UCFCrime2Local/Txt annotations"
_FORM = "'<track> <xmin> <ymin> <xmax> <ymax> <frame> <lost> <occluded> <generated> \"<label>\"'"


@dataclass(frozen=True)
class VaticBox:
    """One VATIC line: a track's box in one frame (pixels, x1/y1 as VATIC writes them)."""

    track: int
    box: tuple[int, int, int, int]
    frame: int
    lost: bool
    occluded: bool
    generated: bool
    label: str


def parse_vatic(path: str | Path) -> list[VaticBox]:
    """Every line of one VATIC text dump; DatasetError '<path>:<line>: ...' for a malformed one."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"UCFCrime2Local annotation {path} does not exist")
    out = []
    for number, line in read_lines(path):
        where = f"{path}:{number}"
        try:
            parts = shlex.split(line)
        except ValueError as e:  # an unclosed quote
            raise DatasetError(f"{where}: {line!r} is malformed ({e}; expected {_FORM})") from None
        if len(parts) != 10:
            raise DatasetError(f"{where}: {line!r} has {len(parts)} fields, expected 10: {_FORM}")
        try:
            track, x0, y0, x1, y1, frame, lost, occluded, generated = (int(v) for v in parts[:9])
        except ValueError:
            raise DatasetError(f"{where}: fields {parts[:9]} are not all integers (expected {_FORM})") from None
        flags = {"lost": lost, "occluded": occluded, "generated": generated}
        bad = [f"{k}={v}" for k, v in flags.items() if v not in (0, 1)]
        if bad:
            raise DatasetError(f"{where}: flags {', '.join(bad)} must be 0 or 1 (expected {_FORM})")
        if frame < 0 or track < 0:
            raise DatasetError(f"{where}: frame {frame} and track {track} must be >= 0 (frames count from 0)")
        if x1 < x0 or y1 < y0:
            raise DatasetError(f"{where}: box ({x0}, {y0}, {x1}, {y1}) has xmax < xmin or ymax < ymin")
        out.append(VaticBox(track, (x0, y0, x1, y1), frame, bool(lost), bool(occluded), bool(generated), parts[9]))
    return out


def frame_kinds(boxes: list[VaticBox], num_frames: int, *, source: str) -> np.ndarray:
    """int8 (num_frames,) of NORMAL / SOFT / HARD: a frame is HARD when any of its boxes is in view
    (lost 0), SOFT when it has boxes and all are lost, NORMAL when it has none. A box past the
    video's last frame means the annotation belongs to another video and raises."""
    kinds = np.full(num_frames, NORMAL, dtype=np.int8)
    for b in boxes:
        if b.frame >= num_frames:
            raise DatasetError(f"{source}: frame {b.frame} is past the video's last frame {num_frames - 1}")
        kinds[b.frame] = max(kinds[b.frame], SOFT if b.lost else HARD)
    return kinds


class UCFCrime2Local:
    """The frame-level annotations of a UCF-Crime root: ``kinds(name, num_frames)`` per video."""

    def __init__(self, root: str | Path, *, folder: str = DEFAULT_FOLDER) -> None:
        self.root = Path(root)
        self.folder = self.root / folder
        if not self.folder.is_dir():
            raise DatasetError(
                f"UCFCrime2Local: annotation folder {self.folder} does not exist (a synthetic world made before "
                "these annotations existed gets them with `python -m aux_code.synthetic.frame_annotations "
                f"{self.root}`)"
            )

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.txt"

    def names(self) -> list[str]:
        """Videos (file stems) that have an annotation file, sorted."""
        return sorted(p.stem for p in self.folder.glob("*.txt"))

    def metadata_files(self) -> list[Path]:
        return sorted(self.folder.glob("*.txt"))

    def kinds(self, name: str, num_frames: int) -> np.ndarray:
        """int8 (num_frames,) NORMAL / SOFT / HARD of video ``name`` (its file must exist)."""
        path = self.path(name)
        if not path.is_file():
            raise DatasetError(f"UCFCrime2Local: abnormal training video {name} has no annotation {path}")
        kinds = frame_kinds(parse_vatic(path), num_frames, source=str(path))
        if not (kinds == HARD).any():
            raise DatasetError(f"{path}: no frame with a box in view (lost 0): an abnormal video needs a hard anomaly")
        return kinds
