"""Video files on CPU through PyAV (FFmpeg inside the wheel). Frames are RGB uint8, (H, W, 3).

Reading: probe (exact frame count), iter_frames / iter_clips (streaming, for feature
extraction), read_clip / read_frames (random access with keyframe seeking, for training).
Writing lives here so the synthetic world and the tests encode real files in the same
codecs as the real datasets (h264 mp4 like UCF-Crime, mpeg4 avi like UCF101, VP9, MJPEG).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np

from aux_code.clips import clip_frame_indices, clip_span

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


# ----------------------------------------------------------------------------------------------
# Decoding
#
# A frame's index is its position in the decoder's output (presentation order), counted from 0.
# Every reader below uses that definition, so probe().num_frames, iter_frames, iter_clips and
# read_clip agree frame for frame.


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: missing, unreadable, truncated, corrupt, or too short."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Rebuild from (path, reason) so the error survives multiprocessing (batch extraction).
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video. ``counted_by`` says how num_frames was obtained."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    counted_by: str


# Codecs and containers where one non-empty, non-discarded packet always decodes to exactly one
# frame, so demuxing (cheap, no decoding) gives the exact frame count. mpeg4 is not here on
# purpose: "not coded" VOPs (frame drops in AVI captures) are packets that yield no frame.
_ONE_FRAME_PER_PACKET_CODECS = frozenset({"h264", "hevc", "vp9", "av1", "mjpeg", "ffv1", "rawvideo", "png"})
_ONE_FRAME_PER_PACKET_FORMATS = ("mov", "mp4", "matroska", "webm", "avi")


@dataclass(frozen=True)
class _FrameIndex:
    """Where each decoded frame sits in the stream, for counting and for seeking.

    ``pts[i]`` is the presentation timestamp of frame ``i`` (strictly increasing) or the whole
    array is None when timestamps are missing or ambiguous, which disables seeking.
    ``key_frames`` are frame indices decoding may start from after a seek, with ``seek_ts``
    the timestamp to seek to for each: its pts. mp4 and Matroska seek on pts and land on that
    keyframe; AVI seeks on dts (<= pts), which can land on a later keyframe when two are
    closer than the B-frame delay, and readers detect and recover from that.
    """

    num_frames: int
    counted_by: str
    pts: np.ndarray | None
    key_frames: np.ndarray
    seek_ts: np.ndarray


def _open(path: Path, *, threads: int) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    if not path.is_file():
        raise VideoDecodeError(path, "no such file (expected a video file)")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as e:
        raise VideoDecodeError(path, f"cannot be opened as a video ({e.__class__.__name__}: {e}); "
                                     "the file is corrupt, truncated or not a video") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "has no video stream")
    stream = container.streams.video[0]
    # Frame threading is bit-exact in FFmpeg (tests check AUTO == single-threaded output).
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    return container, stream


class _PacketTally:
    """Counts stored packets and the stream's end time while demuxing, for the truncation check."""

    def __init__(self) -> None:
        self.packets = 0
        self.end_ts: int | None = None

    def see(self, packet: av.Packet) -> bool:
        """Record ``packet``; True when it carries data for the decoder.

        Zero-size packets are PyAV's end-of-stream marker (no dts; not stored in the file) or
        AVI "dropped frame" entries; sending one to the decoder would start draining it.
        """
        if packet.size == 0 and packet.dts is None:
            return False
        self.packets += 1
        if packet.pts is not None:
            end = packet.pts + (packet.duration or 0)
            self.end_ts = end if self.end_ts is None else max(self.end_ts, end)
        return packet.size > 0

    def check(self, path: Path, stream: av.video.stream.VideoStream) -> None:
        _check_complete(path, stream, packets=self.packets, end_ts=self.end_ts)


def _decoded_frames(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    *,
    from_start: bool,
) -> Iterator[av.VideoFrame]:
    """Every frame the decoder outputs from the container's current position, in order.

    Read to the end from the start, the stream is also checked for truncation, so a cut file
    raises VideoDecodeError after its last frame rather than passing for a short video.
    """
    codec = stream.codec_context
    tally = _PacketTally()
    n = 0
    try:
        for packet in container.demux(stream):
            if not tally.see(packet):
                continue
            for frame in codec.decode(packet):
                n += 1
                yield frame
        for frame in codec.decode(None):
            n += 1
            yield frame
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"decoding failed after {n} frames ({e.__class__.__name__}: {e})") from e
    if from_start:
        tally.check(path, stream)


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


def _parse_hms(text: str) -> float | None:
    """'HH:MM:SS.fffffffff' (Matroska DURATION tag) -> seconds."""
    try:
        h, m, s = text.strip().split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None


def _check_complete(
    path: Path,
    stream: av.video.stream.VideoStream,
    *,
    packets: int,
    end_ts: int | None,
) -> None:
    """Raise when the container declares more video than the demuxer could read (truncation).

    mp4/avi declare a frame count; Matroska/WebM declare a per-track duration tag instead.
    """
    declared = stream.frames
    if declared > 0:
        if packets < declared:
            raise VideoDecodeError(path, f"truncated: the header declares {declared} frames, "
                                         f"only {packets} could be read")
        return
    tag = stream.metadata.get("DURATION")
    declared_s = _parse_hms(tag) if tag else None
    rate = stream.average_rate or stream.guessed_rate
    if declared_s is None or end_ts is None or not rate or stream.time_base is None:
        return
    start = stream.start_time or 0
    read_s = float((end_ts - start) * stream.time_base)
    # Two frame durations of slack: the tag is rounded and the last frame's duration estimated.
    if read_s < declared_s - 2.0 / float(rate):
        raise VideoDecodeError(path, f"truncated: the container declares {declared_s:.3f} s of video, "
                                     f"only {read_s:.3f} s could be read")


def _index_by_packets(path: Path, container, stream) -> _FrameIndex:
    pts, key = [], []
    tally = _PacketTally()
    try:
        for packet in container.demux(stream):
            if not tally.see(packet) or packet.is_discard:
                continue
            pts.append(packet.pts)
            key.append(packet.is_keyframe)
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"demuxing failed after {tally.packets} packets "
                                     f"({e.__class__.__name__}: {e})") from e
    tally.check(path, stream)
    n = len(pts)
    if n == 0 or any(p is None for p in pts) or len(set(pts)) != n:
        return _FrameIndex(n, "packets", None, np.zeros(0, np.int64), np.zeros(0, np.int64))
    pts_arr = np.asarray(pts, dtype=np.int64)
    order = np.argsort(pts_arr, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)  # packet j holds frame rank[j] in presentation order
    key_ranks = np.sort(rank[np.flatnonzero(np.asarray(key, dtype=bool))])
    pts_sorted = pts_arr[order]
    return _FrameIndex(n, "packets", pts_sorted, key_ranks, pts_sorted[key_ranks])


def _index_by_decoding(path: Path, container, stream) -> _FrameIndex:
    pts, key = [], []
    for frame in _decoded_frames(path, container, stream, from_start=True):
        pts.append(frame.pts)
        key.append(frame.key_frame)
    n = len(pts)
    if n == 0 or any(p is None for p in pts) or any(b <= a for a, b in zip(pts, pts[1:])):
        return _FrameIndex(n, "decode", None, np.zeros(0, np.int64), np.zeros(0, np.int64))
    pts_arr = np.asarray(pts, dtype=np.int64)
    key_frames = np.flatnonzero(np.asarray(key, dtype=bool))
    return _FrameIndex(n, "decode", pts_arr, key_frames, pts_arr[key_frames])


_COUNT_MODES = ("auto", "packets", "decode")


def _frame_index(path: Path, *, count: str) -> tuple[_FrameIndex, VideoInfo]:
    if count not in _COUNT_MODES:
        raise ValueError(f"count must be one of {_COUNT_MODES}, got {count!r}")
    if not path.is_file():
        raise VideoDecodeError(path, "no such file (expected a video file)")
    st = path.stat()
    return _frame_index_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, count)


# Keyed on size and mtime so a rewritten file is re-indexed; 128 entries bound the memory
# (8 bytes per frame each) while covering a DataLoader worker's recent videos.
@functools.lru_cache(maxsize=128)
def _frame_index_cached(path_str: str, mtime_ns: int, size: int, count: str) -> tuple[_FrameIndex, VideoInfo]:
    path = Path(path_str)
    container, stream = _open(path, threads=0)
    with container:
        if count == "auto":
            by_packets = (stream.codec_context.name in _ONE_FRAME_PER_PACKET_CODECS
                          and any(f in container.format.name.split(",") for f in _ONE_FRAME_PER_PACKET_FORMATS))
            count = "packets" if by_packets else "decode"
        index = (_index_by_packets if count == "packets" else _index_by_decoding)(path, container, stream)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        codec = stream.codec_context
        info = VideoInfo(
            num_frames=index.num_frames,
            fps=float(rate) if rate else 0.0,
            width=codec.width,
            height=codec.height,
            codec=codec.name,
            counted_by=index.counted_by,
        )
    return index, info


def probe(path: str | Path, *, count: str = "auto") -> VideoInfo:
    """Frame count, frame rate, size and codec of the first video stream of ``path``.

    ``num_frames`` is exactly the number of frames decoding yields. It never trusts the
    container's declared count (absent in WebM, stale in cut AVIs, and mp4 edit lists can make
    it differ). With ``count="auto"`` it is counted by demuxing (no decoding) for codecs where
    a packet is exactly one frame (h264, hevc, vp9, av1, mjpeg, ffv1 in mp4/mov/mkv/webm/avi:
    non-empty packets not flagged discard), and by decoding everything else (mpeg4 AVI, where
    "not coded" VOPs are packets without a frame). ``count="packets"`` or ``"decode"`` forces
    one way; ``VideoInfo.counted_by`` says which was used. Results are cached per file
    (path, size, mtime), so a later :func:`read_clip` reuses the seek index built here.

    Raises VideoDecodeError for a missing, unreadable or truncated file (fewer frames than the
    mp4/avi header declares, or less duration than the Matroska DURATION tag).
    """
    return _frame_index(Path(path), count=count)[1]


def iter_frames(
    path: str | Path,
    *,
    indices: Sequence[int] | None = None,
    threads: int = 0,
) -> Iterator[np.ndarray]:
    """Stream the frames of ``path`` as RGB uint8 (H, W, 3) arrays, decoding from the start.

    With ``indices`` (non-decreasing frame indices; repeats yield the frame again) only those
    frames are converted to RGB and yielded, and decoding stops after the last one. Memory is
    one frame plus the decoder's reference frames, whatever the video length. ``threads``:
    decoder threads, 0 lets FFmpeg choose (pass 1 inside DataLoader workers).

    Raises VideoDecodeError for unreadable/corrupt files and for an index past the end.
    """
    path = Path(path)
    wanted = None if indices is None else _check_sorted(path, indices)
    container, stream = _open(path, threads=threads)
    with container:
        if wanted is None:
            for frame in _decoded_frames(path, container, stream, from_start=True):
                yield _rgb(frame)
            return
        if not wanted:
            return
        pos = 0
        n = 0
        for frame in _decoded_frames(path, container, stream, from_start=True):
            if wanted[pos] == n:
                rgb = _rgb(frame)
                while pos < len(wanted) and wanted[pos] == n:
                    yield rgb if pos + 1 == len(wanted) or wanted[pos + 1] != n else rgb.copy()
                    pos += 1
                if pos == len(wanted):
                    return
            n += 1
        raise VideoDecodeError(path, f"has {n} frames; frame {wanted[pos]} was requested")


def _check_sorted(path: Path, indices: Sequence[int]) -> list[int]:
    wanted = [int(i) for i in indices]
    if any(i < 0 for i in wanted) or any(b < a for a, b in zip(wanted, wanted[1:])):
        raise ValueError(f"{path.name}: frame indices must be non-negative and sorted, got {wanted[:8]}...")
    return wanted


def iter_clips(
    path: str | Path,
    *,
    clip_len: int = 16,
    skip: int = 2,
    threads: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the feature-extraction clips of ``path``: ``(start, clip)``, clip (clip_len, H, W, 3) uint8.

    Starts and frames follow :func:`aux_code.clips.extraction_starts` (non-overlapping spans of
    clip_len * skip frames; the tail shorter than a span is dropped) without probing first.
    Holds one clip's frames at a time. Raises VideoDecodeError when the video is shorter than
    one span, or is unreadable.
    """
    path = Path(path)
    span = clip_span(clip_len=clip_len, skip=skip)
    container, stream = _open(path, threads=threads)
    with container:
        clip: np.ndarray | None = None
        n = 0
        for frame in _decoded_frames(path, container, stream, from_start=True):
            offset = n % span
            if offset % skip == 0:
                rgb = _rgb(frame)
                if clip is None:
                    clip = np.empty((clip_len, *rgb.shape), dtype=np.uint8)
                elif rgb.shape != clip.shape[1:]:
                    raise VideoDecodeError(path, f"frame {n} is {rgb.shape}, earlier frames were {clip.shape[1:]}")
                clip[offset // skip] = rgb
            if offset == span - 1:
                yield n + 1 - span, clip
                clip = None  # the consumer may keep the yielded array
            n += 1
    if n < span:
        raise VideoDecodeError(path, f"has {n} frames; one clip of {clip_len} frames at skip {skip} "
                                     f"needs {span}")


def read_frames(path: str | Path, indices: Sequence[int], *, threads: int = 0) -> np.ndarray:
    """Frames at ``indices`` (any order, repeats allowed) as (N, H, W, 3) uint8, in the order asked.

    Random access for training: when the first wanted frame lies after a keyframe other than
    the first, it seeks to the last keyframe at or before it and maps decoded frames to indices
    by their timestamps (from the cached index of :func:`probe`); if timestamps are unusable or
    the seek lands after the wanted frame, it decodes from the start instead. Either way the
    result equals the same frames of a full decode.
    """
    return _read_frames(Path(path), indices, threads=threads)[0]


def _read_frames(path: Path, indices: Sequence[int], *, threads: int) -> tuple[np.ndarray, int]:
    """read_frames plus the number of frames decoded (tests check that seeking saves work)."""
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        raise ValueError(f"{path.name}: no frame indices requested")
    if wanted[0] < 0:
        raise ValueError(f"{path.name}: frame indices must be >= 0, got {wanted[0]}")
    index, _ = _frame_index(path, count="auto")
    if wanted[-1] >= index.num_frames:
        raise VideoDecodeError(path, f"has {index.num_frames} frames; frame {wanted[-1]} was requested")
    frames: dict[int, np.ndarray] | None = None
    decoded = 0
    if index.pts is not None and len(index.key_frames):
        k = int(np.searchsorted(index.key_frames, wanted[0], side="right")) - 1
        # A seek that lands past the wanted frame is retried from the keyframe before.
        for attempt in range(_SEEK_ATTEMPTS):
            if k - attempt < 0 or index.key_frames[k - attempt] == 0:
                break  # decoding from the start is what a seek to frame 0 would do
            frames, d = _read_after_seek(path, index, wanted, int(index.seek_ts[k - attempt]), threads=threads)
            decoded += d
            if frames is not None:
                break
    if frames is None:
        frames, n = {}, 0
        container, stream = _open(path, threads=threads)
        with container:
            pos = 0
            for frame in _decoded_frames(path, container, stream, from_start=True):
                if n == wanted[pos]:
                    frames[n] = _rgb(frame)
                    pos += 1
                n += 1
                if pos == len(wanted):
                    break
        decoded += n
        if pos < len(wanted):
            raise VideoDecodeError(path, f"decoding gave {n} frames, fewer than the {index.num_frames} "
                                         f"counted; frame {wanted[pos]} was requested")
    return np.stack([frames[int(i)] for i in indices]), decoded


_SEEK_ATTEMPTS = 3


def _read_after_seek(
    path: Path,
    index: _FrameIndex,
    wanted: list[int],
    seek_ts: int,
    *,
    threads: int,
) -> tuple[dict[int, np.ndarray] | None, int]:
    """Seek, then collect ``wanted`` by timestamp; None when the seek cannot serve them all."""
    assert index.pts is not None
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    container, stream = _open(path, threads=threads)
    with container:
        try:
            container.seek(seek_ts, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError:
            return None, 0
        pos = 0
        for frame in _decoded_frames(path, container, stream, from_start=False):
            decoded += 1
            if frame.pts is None:
                return None, decoded
            i = int(np.searchsorted(index.pts, frame.pts))
            if i >= index.num_frames or index.pts[i] != frame.pts:
                return None, decoded
            if i < wanted[pos]:
                continue  # before the wanted range, including open-GOP leading frames
            if i > wanted[pos]:
                return None, decoded  # the seek landed after a wanted frame
            frames[i] = _rgb(frame)
            pos += 1
            if pos == len(wanted):
                return frames, decoded
    return None, decoded


def read_clip(
    path: str | Path,
    start: int,
    *,
    clip_len: int = 16,
    skip: int = 2,
    threads: int = 0,
) -> np.ndarray:
    """The clip reading frames ``start, start + skip, ...`` as (clip_len, H, W, 3) uint8.

    Only the clip's footprint ((clip_len - 1) * skip + 1 frames) must lie inside the video;
    otherwise VideoDecodeError names the file, its length and the frames the clip needs.
    """
    path = Path(path)
    frame_ids = clip_frame_indices(start, clip_len=clip_len, skip=skip)
    num_frames = _frame_index(path, count="auto")[0].num_frames
    if frame_ids[-1] >= num_frames:
        raise VideoDecodeError(path, f"has {num_frames} frames; a clip of {clip_len} frames at skip {skip} "
                                     f"starting at {start} needs frames up to {frame_ids[-1]}")
    return read_frames(path, frame_ids, threads=threads)
