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

The halves travel as separate files (:func:`save_half` / :func:`load_half`): ``encoder.pt``
for the camera (the encoder alone, how to cut a frame, the encoder's digest) and
``decoder.pt`` for the server (the decoder alone and the digest of the encoder it was
trained with, which every code file it decodes must carry).
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
    "ENCODER_FILE",
    "DECODER_FILE",
    "HalfInfo",
    "save_half",
    "load_half",
    "check_pair",
    "RemoteRoundTrip",
    "load_pair",
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


def frames_to_tensor(frames: np.ndarray, *, size: tuple[int, int] | None = None, crop_scale: float = 1.0) -> torch.Tensor:
    """RGB uint8 (T, H, W, 3) -> float (T, 3, h, w) in [0, 1]: the camera's preprocessing.

    With ``size`` = (h, w): the centred crop of the largest box of the output's aspect ratio,
    shrunk by ``crop_scale``, resized to (h, w) (bilinear, antialiased): the geometry of the
    stages' ``ClipEval``, so frames the autoencoder is trained on, frames a camera encodes and
    frames stage 3 anonymizes are cut the same way. ``crop_scale`` 1.0 with an output of the
    video's aspect is the whole frame (the paper: 240x320 UCF-Crime frames, no crop).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be RGB uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    x = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "t h w c -> c t h w").float() / 255.0
    if size is not None and (tuple(frames.shape[1:3]) != tuple(size) or crop_scale != 1.0):
        from aux_code.transforms import ClipEval

        x = ClipEval((int(size[0]), int(size[1])), scale=crop_scale)(x)
    return rearrange(x, "c t h w -> t c h w").contiguous()


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
    crop_scale: float = 1.0,
    dtype: str = "float16",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> CodeHeader:
    """Encode RGB uint8 frames ((H, W, 3) each, or one (T, H, W, 3) array) into a code file at ``path``,
    each frame first cut to ``size`` by :func:`frames_to_tensor` (``crop_scale``)."""
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
                x = frames_to_tensor(chunk, size=size, crop_scale=crop_scale).to(device)
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
                 crop_scale: float = 1.0, dtype: str = "float16", batch_size: int = 16,
                 device: str | torch.device = "cpu") -> CodeHeader:
    """Decode ``video`` (PyAV), cut its frames to ``size`` (:func:`frames_to_tensor`) and write their code file."""
    from aux_code.video import iter_frames

    return encode_frames(iter_frames(video), encoder, path, size=size, crop_scale=crop_scale, dtype=dtype,
                         batch_size=batch_size, device=device)


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


def bytes_per_frame(video: str | Path, code_path: str | Path, *, crop_scale: float = 1.0, jpeg_quality: int = 90,
                    max_frames: int = 64) -> dict[str, float]:
    """What travels per frame, in bytes (means over the first ``max_frames`` frames where a frame is re-encoded).

    ``code``: the latent code's payload; ``code_file``: the file with its header spread over
    its frames; ``input_video``: the input file (H.264 for UCF-Crime) per frame, at its own
    resolution; ``jpeg_input``: a JPEG (OpenCV, ``jpeg_quality``) of the input frame; ``jpeg``:
    a JPEG of the frame the camera encodes (cut to the code's frame size with ``crop_scale``,
    as :func:`encode_video` did); ``h264``: those same cut frames as an H.264 stream
    (libx264 defaults, :func:`aux_code.video.write_video`) per frame; ``raw_rgb``: that frame
    uncompressed.
    """
    import tempfile

    import cv2

    from aux_code.video import iter_frames, probe, write_video

    header = read_header(code_path)
    info = probe(video)
    height, width = header.frame_size

    def jpeg_bytes(rgb: np.ndarray, i: int) -> int:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"{video}: OpenCV could not JPEG-encode frame {i}")
        return int(buf.size)

    jpeg_in, jpeg_cut, cut_frames = [], [], []
    for i, frame in enumerate(iter_frames(video)):
        if i >= max_frames:
            break
        cut = frames_to_tensor(frame[None], size=(height, width), crop_scale=crop_scale)[0]
        cut_u8 = rearrange((cut * 255.0).round().clamp(0, 255).to(torch.uint8), "c h w -> h w c").numpy()
        jpeg_in.append(jpeg_bytes(frame, i))
        jpeg_cut.append(jpeg_bytes(np.ascontiguousarray(cut_u8), i))
        cut_frames.append(cut_u8)
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "cut.mp4"
        write_video(stream, cut_frames, fps=max(1, round(info.fps)) if info.fps else 30)
        h264 = stream.stat().st_size / len(cut_frames)
    return {
        "code": float(header.bytes_per_frame),
        "code_file": Path(code_path).stat().st_size / header.frames,
        "input_video": Path(video).stat().st_size / info.num_frames,
        "input_height": float(info.height),
        "input_width": float(info.width),
        "jpeg_input": float(np.mean(jpeg_in)),
        "jpeg": float(np.mean(jpeg_cut)),
        "h264": float(h264),
        "raw_rgb": float(height * width * 3),
        "frame_height": float(height),
        "frame_width": float(width),
        "frames_compared": float(len(cut_frames)),
    }


# ------------------------------------------------------------------------------------ the two halves' files

ENCODER_FILE = "encoder.pt"  # what the camera holds
DECODER_FILE = "decoder.pt"  # what the server holds
HALF_VERSION = 1


@dataclass(frozen=True)
class HalfInfo:
    """What a half's file says besides its weights.

    ``frame_size`` / ``crop_scale``: how the camera cuts a frame before encoding (the
    training frames were cut so); ``encoder_digest``: the encoder the pair was trained as
    (in the decoder's file: the only encoder whose codes it may decode); ``privacy``: the
    training's privacy block (optimizer, noise multiplier, epsilon, delta, ...).
    """

    half: str  # "encoder" | "decoder"
    spec: dict
    frame_size: tuple[int, int]
    crop_scale: float
    encoder_digest: str
    privacy: dict


def save_half(path: str | Path, half: str, module: nn.Module, spec: dict, *, frame_size: tuple[int, int],
              crop_scale: float, encoder_digest: str, privacy: dict) -> Path:
    """Write one half (``half`` = "encoder" or "decoder") as a plain-data checkpoint holding that model alone."""
    from aux_code.checkpoint import save_checkpoint
    from aux_code.models.stored import pack_model

    if half not in ("encoder", "decoder"):
        raise ValueError(f"half must be 'encoder' or 'decoder', got {half!r}")
    return save_checkpoint({
        "models": {half: pack_model(f"dpae_{half}", spec, module)},
        "dpae": {"half": half, "version": HALF_VERSION, "frame_size": [int(frame_size[0]), int(frame_size[1])],
                 "crop_scale": float(crop_scale), "encoder_digest": encoder_digest, "privacy": dict(privacy)},
    }, path)


def load_half(path: str | Path, half: str, *, config_key: str | None = None) -> tuple[nn.Module, HalfInfo]:
    """(model in eval mode, its HalfInfo) of a half's file; refused (CheckpointError naming the file)
    when it is not such a file or holds the other half. An encoder's weights must hash to the
    digest its file records (a file edited or mixed up after training is refused)."""
    from aux_code.checkpoint import CheckpointError, load_checkpoint
    from aux_code.models.stored import build_packed

    path = Path(path)
    what = f"DP-AE {half} file"
    ckpt = load_checkpoint(path, what=what, config_key=config_key)
    meta = ckpt.get("dpae")
    models = ckpt.get("models")
    where = f" ({config_key})" if config_key else ""
    if not isinstance(meta, dict) or not isinstance(models, dict):
        raise CheckpointError(f"{path}{where} is not a DP-AE {half} file (no 'dpae' block); a DP-AE run writes "
                              f"{ENCODER_FILE} and {DECODER_FILE} into its run directory")
    if meta.get("version") != HALF_VERSION:
        raise CheckpointError(f"{path}{where}: DP-AE half format version {meta.get('version')}; this code reads {HALF_VERSION}")
    if meta.get("half") != half or half not in models:
        raise CheckpointError(f"{path}{where} holds the DP-AE {meta.get('half')}, not the {half}")
    model = build_packed(models[half], source=f"{path}[models][{half}]").eval()
    info = HalfInfo(half=half, spec=dict(models[half]["spec"]), frame_size=(int(meta["frame_size"][0]), int(meta["frame_size"][1])),
                    crop_scale=float(meta["crop_scale"]), encoder_digest=str(meta["encoder_digest"]),
                    privacy=dict(meta.get("privacy", {})))
    if half == "encoder" and encoder_digest(model) != info.encoder_digest:
        raise CheckpointError(f"{path}{where}: the encoder's weights do not hash to the digest its file records "
                              f"({info.encoder_digest[:12]}); the file was altered after training")
    return model, info


def check_pair(encoder: HalfInfo, decoder: HalfInfo, *, encoder_path: str | Path, decoder_path: str | Path) -> None:
    """Refuse an encoder and a decoder that were not trained together (naming both files)."""
    from aux_code.checkpoint import CheckpointError

    if encoder.encoder_digest != decoder.encoder_digest:
        raise CheckpointError(f"{decoder_path} decodes codes of encoder {decoder.encoder_digest[:12]}, but {encoder_path} "
                              f"is encoder {encoder.encoder_digest[:12]}: the two halves come from different trainings")


class RemoteRoundTrip(nn.Module):
    """Camera encoder -> the code as it travels (``code_dtype``) -> server decoder, as one module:
    (N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1], H and W multiples of 8. What stages 2 and 3
    apply as the ``dpae`` anonymizer, so they see exactly the frames the server reconstructs."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, code_dtype: str = "float16") -> None:
        super().__init__()
        if code_dtype not in _DTYPE_CODES:
            raise ValueError(f"code dtype {code_dtype!r} is not one of {', '.join(_DTYPE_CODES)}")
        self.encoder = encoder
        self.decoder = decoder
        self.code_dtype = getattr(torch, code_dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        code = self.encoder(frames)
        return self.decoder(code.to(self.code_dtype).to(code.dtype))


def load_pair(encoder_path: str | Path, decoder_path: str | Path, *, encoder_key: str = "anonymizer.encoder",
              decoder_key: str = "anonymizer.decoder") -> tuple[RemoteRoundTrip, dict]:
    """The round trip of a camera file and a server file trained together, and plain data naming it
    (both file digests, the spec, the frame geometry and the training's privacy block)."""
    from aux_code.checkpoint import file_digest

    encoder, enc_info = load_half(encoder_path, "encoder", config_key=encoder_key)
    decoder, dec_info = load_half(decoder_path, "decoder", config_key=decoder_key)
    check_pair(enc_info, dec_info, encoder_path=encoder_path, decoder_path=decoder_path)
    description = {"encoder_digest": file_digest(encoder_path), "decoder_digest": file_digest(decoder_path),
                   "spec": enc_info.spec, "frame_size": list(enc_info.frame_size), "crop_scale": enc_info.crop_scale,
                   "code_dtype": "float16", "privacy": dec_info.privacy}
    return RemoteRoundTrip(encoder, decoder), description
