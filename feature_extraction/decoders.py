"""The two decoders of feature extraction, giving the same clips: PyAV (CPU) and NVIDIA DALI.

Both yield, per video, the clips of :func:`aux_code.clips.extraction_starts` as RGB uint8
``(T, H, W, 3)`` with T = clip_len, in start order. Cropping, resizing and normalisation are
not done here (not in DALI's resize either) but in the shared torch code of
:mod:`feature_extraction.pipeline`, so the decoder is the only thing that differs.

DALI's video reader (``fn.experimental.readers.video``, sequence_length = clip_len, stride =
skip, step = clip_len * skip) is checked sequence by sequence: its ``frame_num`` must follow
the shared index functions of :mod:`aux_code.clips` (``extraction_starts``; the one extra
clip of ``dali_starts``, a span overhanging the video by one frame that the legacy reader's
footprint rule keeps when ``num_frames % span == span - 1``, is dropped), so both decoders
give exactly ``extraction_starts``. DALI 2.4's experimental reader was measured to follow
``extraction_starts`` itself (63 frames -> one 16x2 sequence, not two).

Codecs: DALI's CPU reader decodes VP8/VP9/MJPEG only; its GPU reader (NVDEC) also H.264,
HEVC, AV1 and MPEG-4 part 2. ``choose_decoder`` applies that table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aux_code.clips import clip_span, dali_starts, extraction_starts
from aux_code.video import VideoDecodeError, iter_clips

# FFmpeg codec names (aux_code.video.probe().codec) each DALI backend decodes.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", "mpeg4"})


class DecoderError(RuntimeError):
    """A decoder that cannot serve this run (not installed, codec unsupported, index mismatch)."""


def dali_available() -> bool:
    """Whether nvidia.dali can be imported (the ``dali`` extra is installed)."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def dali_codecs(device: str) -> frozenset[str]:
    """Codecs DALI's video reader decodes on ``device`` ('cpu' or 'gpu')."""
    return DALI_GPU_CODECS if device == "gpu" else DALI_CPU_CODECS


def choose_decoder(preference: str, *, cuda: bool, codecs: Sequence[str], dali_installed: bool | None = None) -> str:
    """The decoder a run uses: 'pyav', 'dali-cpu' or 'dali-gpu'.

    ``preference``: 'auto' | 'pyav' | 'dali'. 'auto' picks DALI on the GPU when CUDA and DALI
    are present and every codec in ``codecs`` is supported there, else PyAV (DALI's CPU
    reader is never faster than PyAV's frame-threaded decoder, so auto does not choose it).
    'dali' uses the GPU reader with CUDA, else the CPU reader, and raises DecoderError naming
    the unsupported codecs or the missing package.
    """
    installed = dali_available() if dali_installed is None else dali_installed
    if preference == "pyav":
        return "pyav"
    device = "gpu" if cuda else "cpu"
    unsupported = sorted(set(codecs) - dali_codecs(device))
    if preference == "auto":
        return "dali-gpu" if (cuda and installed and not unsupported) else "pyav"
    if preference != "dali":
        raise ValueError(f"decoder preference {preference!r} must be 'auto', 'pyav' or 'dali'")
    if not installed:
        raise DecoderError("extract.decoder = dali but nvidia.dali is not installed (pip install -e '.[dali]'); use pyav or auto")
    if unsupported:
        raise DecoderError(
            f"extract.decoder = dali: DALI's {device.upper()} video reader does not decode {', '.join(unsupported)} "
            f"(it decodes {', '.join(sorted(dali_codecs(device)))}); use extract.decoder = pyav or auto"
        )
    return f"dali-{device}"


def video_codec(path: str | Path) -> str | None:
    """FFmpeg name of a file's first video stream codec (no decoding); None when it cannot be opened."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.name if container.streams.video else None
    except (av.FFmpegError, OSError):
        return None


# ---------------------------------------------------------------------------------------- PyAV


def pyav_clips(path: str | Path, num_frames: int, *, clip_len: int, skip: int, threads: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, clip (clip_len, H, W, 3) uint8)`` for every extraction clip of a video, streaming.

    ``num_frames`` is the probed count; a decoder that yields a different clip sequence than
    ``extraction_starts(num_frames)`` raises VideoDecodeError naming the video.
    """
    expected = extraction_starts(num_frames, clip_len=clip_len, skip=skip)
    k = 0
    for start, clip in iter_clips(path, clip_len=clip_len, skip=skip, threads=threads):
        if k >= len(expected) or start != expected[k]:
            raise VideoDecodeError(path, f"decoding gave a clip at frame {start}; the probed {num_frames} frames "
                                         f"give clip starts {expected[:3]}...{expected[-1:]}")
        yield start, clip
        k += 1
    if k != len(expected):
        raise VideoDecodeError(path, f"decoding gave {k} clips; the probed {num_frames} frames give {len(expected)}")


# ---------------------------------------------------------------------------------------- DALI


@dataclass(frozen=True)
class DaliClip:
    """One clip from DALI: which file of the reader's list, its start frame, and its frames.

    ``frames``: (clip_len, H, W, 3) uint8 torch tensor, on the GPU for the GPU reader.
    ``last``: this is the file's last extraction clip.
    """

    file_index: int
    start: int
    frames: torch.Tensor
    last: bool


def _dlpack_to_torch(tensor) -> torch.Tensor:
    # DALI reuses its output buffers on the next run(): copy out.
    return torch.from_dlpack(tensor).clone()


def dali_sequences(
    files: Sequence[str | Path],
    *,
    clip_len: int,
    skip: int,
    device: str = "cpu",
    device_id: int | None = None,
    batch_size: int = 4,
    num_threads: int = 2,
    prefetch: int = 2,
) -> tuple[int, Iterator[tuple[int, int, torch.Tensor]]]:
    """DALI's reader as it is: (number of sequences, iterator of (file index, frame_num, frames)).

    ``fn.experimental.readers.video`` with sequence_length = clip_len, stride = skip, step =
    clip_len * skip, no shuffling, files in order; ``frames`` (clip_len, H, W, 3) uint8 torch,
    on the GPU for the GPU reader. Decoding runs in DALI's threads, ``prefetch`` batches ahead.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"DALI device must be 'cpu' or 'gpu', got {device!r}")
    if not dali_available():
        raise DecoderError("nvidia.dali is not installed (pip install -e '.[dali]')")
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                  prefetch_queue_depth=prefetch)
    def pipe():
        video, label, frame_num = fn.experimental.readers.video(
            device=device,
            filenames=[str(f) for f in files],
            labels=list(range(len(files))),
            sequence_length=clip_len,
            stride=skip,
            step=clip_span(clip_len=clip_len, skip=skip),
            enable_frame_num=True,
            random_shuffle=False,
            pad_last_batch=True,
            name="reader",
        )
        return video, label, frame_num

    pipeline = pipe()
    pipeline.build()
    total = int(pipeline.epoch_size("reader"))

    def sequences() -> Iterator[tuple[int, int, torch.Tensor]]:
        seen = 0
        while seen < total:
            video, label, frame_num = pipeline.run()
            if device == "gpu":
                label, frame_num = label.as_cpu(), frame_num.as_cpu()
            # The last batch is padded by repeating its last sample: count, do not trust the batch.
            for j in range(min(batch_size, total - seen)):
                seen += 1
                yield (int(np.asarray(label[j]).reshape(-1)[0]), int(np.asarray(frame_num[j]).reshape(-1)[0]),
                       _dlpack_to_torch(video[j]))

    return total, sequences()


def dali_clips(
    files: Sequence[str | Path],
    num_frames: Sequence[int],
    *,
    clip_len: int,
    skip: int,
    device: str = "cpu",
    device_id: int | None = None,
    batch_size: int = 4,
    num_threads: int = 2,
    prefetch: int = 2,
) -> Iterator[DaliClip]:
    """Every extraction clip of ``files`` (in file order, then start order) through DALI's reader.

    ``num_frames[i]`` is file i's probed frame count (aux_code.video.probe). DALI's frame_num
    must follow the shared index functions: the starts of
    :func:`aux_code.clips.extraction_starts`, optionally followed by the one overhanging clip
    of :func:`aux_code.clips.dali_starts` (the footprint rule of the legacy reader), which is
    dropped. DALI 2.4's experimental reader was measured to keep a sequence only when its
    whole span fits (63 frames -> 1 sequence), i.e. extraction_starts exactly; both rules are
    accepted, anything else raises DecoderError (the two decoders would disagree on what a
    feature row means). Files must hold at least one extraction clip.
    """
    if len(files) != len(num_frames):
        raise ValueError(f"dali_clips: {len(files)} files but {len(num_frames)} frame counts")
    if not files:
        return
    allowed = [dali_starts(n, clip_len=clip_len, skip=skip) for n in num_frames]
    keep = [len(extraction_starts(n, clip_len=clip_len, skip=skip)) for n in num_frames]
    for f, n, k in zip(files, num_frames, keep):
        if k == 0:
            raise ValueError(f"{f}: {n} frames hold no clip of {clip_len} frames at skip {skip}; filter it out first")
    total, sequences = dali_sequences(files, clip_len=clip_len, skip=skip, device=device, device_id=device_id,
                                      batch_size=batch_size, num_threads=num_threads, prefetch=prefetch)
    if not sum(keep) <= total <= sum(len(a) for a in allowed):
        raise DecoderError(
            f"DALI counts {total} sequences in {len(files)} files, the probed frame counts give {sum(keep)} "
            "(DALI and PyAV disagree on a frame count)"
        )
    current, seq = -1, 0
    for index, start, frames in sequences:
        if index != current:
            if index != current + 1 or (current >= 0 and seq < keep[current]):
                raise DecoderError(f"DALI moved to file {index} after {seq} sequences of file {current}; expected "
                                   f"{keep[current] if current >= 0 else 0} sequences, files in order")
            current, seq = index, 0
        if seq >= len(allowed[current]) or start != allowed[current][seq]:
            raise DecoderError(
                f"DALI gave frame {start} as sequence {seq} of {files[current]}; the shared index functions give "
                f"{allowed[current][:seq + 1]} for {num_frames[current]} frames"
            )
        seq += 1
        if seq <= keep[current]:  # a clip overhanging the video by one frame is dropped
            yield DaliClip(current, start, frames, last=seq == keep[current])
    if current != len(files) - 1 or seq < keep[current]:
        raise DecoderError(f"DALI stopped at file {current} sequence {seq}; expected {len(files)} files")
