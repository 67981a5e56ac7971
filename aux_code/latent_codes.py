"""The remote split of the DP autoencoder: latent code files between camera and server.

The camera runs the encoder (aux_code.models.dpae.DPAEEncoder) on each frame and sends the
code; the server runs the paired decoder and analyses the reconstruction (Giorgi et al.,
JoWUA 2022, s.3.1-3.2). A code file is::

    header (53 bytes, little endian)
        magic           8 bytes   b"DPAECODE"
        format version  uint16    FORMAT_VERSION
        dtype           uint8     1 = float16, 2 = float32
        code shape      3 x uint16 (C, h, w) of one frame's code
        frame count     uint32
        encoder digest  32 bytes  sha256 of the encoder's weights (encoder_digest)
    payload             frame count x C x h x w values of that dtype, frame-major

Writing is streamed (the frame count is patched into the header at the end) to a temporary
file that is renamed, so a crash never leaves a partial code file. Reading refuses, naming
the file, anything that is not such a file: another magic, an unknown format version, a
payload of the wrong length, a code shape the decoder cannot take, and (when the server
says which encoder its decoder was trained with) a code written by another encoder.

:func:`bytes_per_frame` compares what travels per frame: the code, the H.264 input video,
a JPEG of the same frame (OpenCV imencode) and the raw RGB frame.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from einops import rearrange
from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CodeFileError",
    "CodeHeader",
    "encoder_digest",
    "frames_to_tensor",
    "encode_frames",
    "encode_video",
    "read_header",
    "read_codes",
    "decode_codes",
    "bytes_per_frame",
]

MAGIC = b"DPAECODE"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sHB3HI32s")
HEADER_BYTES = _HEADER.size
_DTYPES = {1: np.dtype("<f2"), 2: np.dtype("<f4")}
_DTYPE_CODES = {"float16": 1, "float32": 2}


class CodeFileError(ValueError):
    """A latent code file that this decoder cannot or must not read."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class CodeHeader:
    version: int
    dtype: str
    code_shape: tuple[int, int, int]
    frames: int
    encoder_digest: str  # hex

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the frames the code was computed from (the encoder downsamples by 8)."""
        return (self.code_shape[1] * 8, self.code_shape[2] * 8)

    @property
    def bytes_per_frame(self) -> int:
        return int(np.prod(self.code_shape)) * np.dtype(self.dtype).itemsize

    def pack(self) -> bytes:
        c, h, w = self.code_shape
        return _HEADER.pack(MAGIC, self.version, _DTYPE_CODES[self.dtype], c, h, w, self.frames,
                            bytes.fromhex(self.encoder_digest))


def encoder_digest(encoder: nn.Module) -> str:
    """sha256 (hex) over the encoder's state dict: names, dtypes, shapes and values, in order."""
    h = hashlib.sha256()
    for name, t in encoder.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def frames_to_tensor(frames: np.ndarray, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB uint8 (T, H, W, 3) -> float (T, 3, H', W') in [0, 1], resized to ``size`` = (H', W')."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be RGB uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if size is not None and tuple(frames.shape[1:3]) != tuple(size):
        import cv2

        frames = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])
    return rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "t h w c -> t c h w").float() / 255.0


def _batches(frames: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == batch_size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


@torch.no_grad()
def encode_frames(
    frames: Iterable[np.ndarray] | np.ndarray,
    encoder: nn.Module,
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    dtype: str = "float16",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> CodeHeader:
    """Encode RGB uint8 frames ((H, W, 3) each, or one (T, H, W, 3) array) into a code file at ``path``."""
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"code dtype {dtype!r} is not one of {', '.join(_DTYPE_CODES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    was_training = encoder.training
    encoder.eval()
    digest = encoder_digest(encoder)
    np_dtype = _DTYPES[_DTYPE_CODES[dtype]]
    n = 0
    shape: tuple[int, int, int] | None = None
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"\0" * HEADER_BYTES)  # patched below, once the frame count is known
            for chunk in _batches(frames, batch_size):
                x = frames_to_tensor(chunk, size=size).to(device)
                code = encoder(x).float().cpu().numpy()
                if shape is None:
                    shape = tuple(int(s) for s in code.shape[1:])  # type: ignore[assignment]
                fh.write(np.ascontiguousarray(code.astype(np_dtype)).tobytes())
                n += code.shape[0]
            if shape is None:
                raise ValueError(f"{path}: no frames to encode")
            header = CodeHeader(FORMAT_VERSION, dtype, shape, n, digest)
            fh.seek(0)
            fh.write(header.pack())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        encoder.train(was_training)
    return header


def encode_video(video: str | Path, encoder: nn.Module, path: str | Path, *, size: tuple[int, int] | None = (240, 320),
                 dtype: str = "float16", batch_size: int = 16) -> CodeHeader:
    """Decode ``video`` (PyAV), resize its frames to ``size`` and write their code file to ``path``."""
    from aux_code.video import iter_frames

    return encode_frames(iter_frames(video), encoder, path, size=size, dtype=dtype, batch_size=batch_size)


def read_header(path: str | Path) -> CodeHeader:
    """The header of a code file, checked against the file's length."""
    path = Path(path)
    if not path.is_file():
        raise CodeFileError(path, "no such latent code file")
    with open(path, "rb") as fh:
        raw = fh.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise CodeFileError(path, f"not a latent code file (no {MAGIC.decode()} header)")
    _, version, dtype_code, c, h, w, frames, digest = _HEADER.unpack(raw)
    if version != FORMAT_VERSION:
        raise CodeFileError(path, f"latent code format version {version}; this decoder reads version {FORMAT_VERSION}")
    if dtype_code not in _DTYPES:
        raise CodeFileError(path, f"unknown code dtype id {dtype_code}")
    dtype = {v: k for k, v in _DTYPE_CODES.items()}[dtype_code]
    header = CodeHeader(version, dtype, (c, h, w), frames, digest.hex())
    expected = HEADER_BYTES + frames * header.bytes_per_frame
    actual = path.stat().st_size
    if actual != expected:
        raise CodeFileError(path, f"is {actual} bytes; a header of {frames} frames of {(c, h, w)} {dtype} "
                                  f"codes needs {expected} (truncated or corrupt)")
    return header


def read_codes(path: str | Path) -> tuple[CodeHeader, np.ndarray]:
    """(header, codes (T, C, h, w) in the file's dtype)."""
    header = read_header(path)
    codes = np.fromfile(path, dtype=_DTYPES[_DTYPE_CODES[header.dtype]], offset=HEADER_BYTES)
    return header, codes.reshape(header.frames, *header.code_shape)


@torch.no_grad()
def decode_codes(
    path: str | Path,
    decoder: nn.Module,
    *,
    expected_encoder_digest: str | None = None,
    frame_size: tuple[int, int] | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Reconstructed frames (T, 3, H, W) in [0, 1] of a code file, after checking it fits ``decoder``.

    Refused (CodeFileError naming the file): a version other than FORMAT_VERSION, a code
    channel count other than the decoder's, a frame size other than ``frame_size`` when
    given, an encoder digest other than ``expected_encoder_digest`` when given.
    """
    header = read_header(path)
    channels = getattr(decoder, "code_channels", None)
    if channels is not None and header.code_shape[0] != channels:
        raise CodeFileError(path, f"holds codes of shape {header.code_shape}; this decoder takes {channels} "
                                  "code channels")
    if frame_size is not None and header.frame_size != tuple(frame_size):
        raise CodeFileError(path, f"codes of shape {header.code_shape} decode to {header.frame_size[0]}x"
                                  f"{header.frame_size[1]} frames; expected {frame_size[0]}x{frame_size[1]}")
    if expected_encoder_digest is not None and header.encoder_digest != expected_encoder_digest:
        raise CodeFileError(path, f"was written by encoder {header.encoder_digest[:12]}; this decoder is paired "
                                  f"with encoder {expected_encoder_digest[:12]}")
    _, codes = read_codes(path)
    was_training = decoder.training
    decoder.eval()
    try:
        out = [decoder(torch.from_numpy(codes[i : i + batch_size].astype(np.float32)).to(device)).cpu()
               for i in range(0, header.frames, batch_size)]
    finally:
        decoder.train(was_training)
    return torch.cat(out)


def bytes_per_frame(video: str | Path, code_path: str | Path, *, jpeg_quality: int = 90,
                    max_frames: int = 32) -> dict[str, float]:
    """What travels per frame: the code (payload, and with the header spread over the file),
    the H.264 (or whatever) input video file, a JPEG (OpenCV imencode at ``jpeg_quality``) and
    raw RGB of the frame at the code's frame size (mean over the first ``max_frames`` frames)."""
    import cv2

    from aux_code.video import iter_frames, probe

    header = read_header(code_path)
    info = probe(video)
    height, width = header.frame_size
    jpeg_sizes = []
    for i, frame in enumerate(iter_frames(video)):
        if i >= max_frames:
            break
        f = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) if frame.shape[:2] != (height, width) else frame
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"{video}: OpenCV could not JPEG-encode frame {i}")
        jpeg_sizes.append(buf.size)
    return {
        "code": float(header.bytes_per_frame),
        "code_file": Path(code_path).stat().st_size / header.frames,
        "input_video": Path(video).stat().st_size / info.num_frames,
        "input_height": float(info.height),
        "input_width": float(info.width),
        "jpeg": float(np.mean(jpeg_sizes)),
        "raw_rgb": float(height * width * 3),
        "frame_height": float(height),
        "frame_width": float(width),
    }
