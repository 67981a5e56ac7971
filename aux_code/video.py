"""Video files on CPU through PyAV (FFmpeg inside the wheel). Frames are RGB uint8, (H, W, 3).

Writing lives here so the synthetic world and the tests encode real files in the same
codecs as the real datasets (h264 mp4 like UCF-Crime, mpeg4 avi like UCF101, VP9, MJPEG).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

# codec -> (pixel format, encoder options). Lossless settings are for tests that compare pixels.
CODECS: dict[str, tuple[str, dict[str, str]]] = {
    "h264": ("yuv420p", {"crf": "18", "preset": "veryfast"}),
    "h264_lossless": ("yuv444p", {"qp": "0", "preset": "ultrafast"}),
    "mpeg4": ("yuv420p", {"qscale": "3"}),
    "vp9": ("yuv420p", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    "mjpeg": ("yuvj444p", {"q:v": "2"}),
    "ffv1": ("bgr0", {}),
}
_ENCODER_NAME = {"h264": "libx264", "h264_lossless": "libx264", "mpeg4": "mpeg4", "vp9": "libvpx-vp9",
                 "mjpeg": "mjpeg", "ffv1": "ffv1"}


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 30,
    codec: str = "h264",
) -> int:
    """Encode RGB uint8 frames (each (H, W, 3), H and W even) to ``path``; returns the frame count.

    Written to a temporary name and renamed, so a crash never leaves a truncated video.
    """
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is not one of {', '.join(CODECS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    pix_fmt, options = CODECS[codec]
    n = 0
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = None
            for frame in frames:
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"{path.name}: frame {n} must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
                if stream is None:
                    h, w = frame.shape[:2]
                    if h % 2 or w % 2:
                        raise ValueError(f"{path.name}: frame size {w}x{h} must be even for {codec}")
                    stream = container.add_stream(_ENCODER_NAME[codec], rate=Fraction(fps))
                    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
                    stream.options = dict(options)
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                for packet in stream.encode(vf):
                    container.mux(packet)
                n += 1
            if stream is None:
                raise ValueError(f"{path.name}: no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
