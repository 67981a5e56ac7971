"""Latent code files of the remote split (aux_code.latent_codes; issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aux_code.latent_codes import (
    FORMAT_VERSION,
    HEADER_BYTES,
    CodeFileError,
    bytes_per_frame,
    decode_codes,
    encode_frames,
    encode_video,
    encoder_digest,
    frames_to_tensor,
    read_header,
)
from aux_code.models.dpae import DPAEDecoder, DPAutoencoder
from aux_code.video import iter_frames, write_video


def _clip(t: int = 5, h: int = 16, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(h, w, 3))
    return np.stack([np.roll(base, i, axis=1) for i in range(t)]).astype(np.uint8)


@pytest.fixture(scope="module")
def ae() -> DPAutoencoder:
    torch.manual_seed(0)
    model = DPAutoencoder.build(width_mult=0.125)
    x = frames_to_tensor(_clip())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):  # a few steps, so the code is not the initialisation's
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), x).backward()
        opt.step()
    return model.eval()


def test_round_trip_matches_the_models_own_forward(ae, tmp_path) -> None:
    frames = _clip()
    x = frames_to_tensor(frames)
    with torch.no_grad():
        own = ae(x)
    h32 = encode_frames(frames, ae.encoder, tmp_path / "a.dpae", dtype="float32", batch_size=2)
    assert h32.frames == 5 and h32.code_shape == (16, 2, 3) and h32.frame_size == (16, 24)
    assert h32.encoder_digest == encoder_digest(ae.encoder) and h32.version == FORMAT_VERSION
    assert (tmp_path / "a.dpae").stat().st_size == HEADER_BYTES + 5 * 16 * 2 * 3 * 4
    rec32 = decode_codes(tmp_path / "a.dpae", ae.decoder, expected_encoder_digest=h32.encoder_digest)
    torch.testing.assert_close(rec32, own, rtol=0, atol=1e-6)
    # float16 codes: within the model's reconstruction error of the original frames.
    encode_frames(frames, ae.encoder, tmp_path / "b.dpae")
    rec16 = decode_codes(tmp_path / "b.dpae", ae.decoder, frame_size=(16, 24))
    assert float((rec16 - own).abs().max()) < 1e-2
    model_err = float(((own - x) ** 2).mean())
    assert float(((rec16 - x) ** 2).mean()) == pytest.approx(model_err, rel=0.02)


def test_video_file_round_trip_and_bytes_per_frame(ae, tmp_path) -> None:
    video = tmp_path / "clip.mp4"
    write_video(video, list(_clip(t=6)), fps=10)
    header = encode_video(video, ae.encoder, tmp_path / "clip.dpae", size=(16, 24))
    decoded = np.stack(list(iter_frames(video)))
    with torch.no_grad():
        own = ae(frames_to_tensor(decoded))
    rec = decode_codes(tmp_path / "clip.dpae", ae.decoder)
    assert header.frames == 6 and float((rec - own).abs().max()) < 1e-2
    sizes = bytes_per_frame(video, tmp_path / "clip.dpae")
    assert sizes["code"] == 16 * 2 * 3 * 2 and sizes["raw_rgb"] == 16 * 24 * 3
    assert sizes["code_file"] == pytest.approx(sizes["code"] + HEADER_BYTES / 6)
    assert sizes["jpeg"] > 0 and sizes["input_video"] > 0


def test_mismatched_files_are_refused_naming_the_file(ae, tmp_path) -> None:
    path = tmp_path / "c.dpae"
    encode_frames(_clip(), ae.encoder, path)
    wide = DPAEDecoder(width_mult=0.125, code_channels=8)
    with pytest.raises(CodeFileError, match=r"c\.dpae: holds codes of shape \(16, 2, 3\); this decoder takes 8"):
        decode_codes(path, wide)
    with pytest.raises(CodeFileError, match=r"c\.dpae: .* decode to 16x24 frames; expected 240x320"):
        decode_codes(path, ae.decoder, frame_size=(240, 320))
    with pytest.raises(CodeFileError, match=r"c\.dpae: was written by encoder"):
        decode_codes(path, ae.decoder, expected_encoder_digest="0" * 64)
    raw = bytearray(path.read_bytes())
    future = tmp_path / "future.dpae"
    future.write_bytes(bytes(raw[:8]) + (FORMAT_VERSION + 1).to_bytes(2, "little") + bytes(raw[10:]))
    with pytest.raises(CodeFileError, match=rf"future\.dpae: latent code format version {FORMAT_VERSION + 1}"):
        decode_codes(future, ae.decoder)
    cut = tmp_path / "cut.dpae"
    cut.write_bytes(bytes(raw[:-5]))
    with pytest.raises(CodeFileError, match=r"cut\.dpae: is \d+ bytes.*truncated"):
        read_header(cut)
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 100)
    with pytest.raises(CodeFileError, match=r"other\.bin: not a latent code file"):
        decode_codes(other, ae.decoder)
