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


def test_camera_cut_is_the_stages_clip_geometry() -> None:
    from einops import rearrange

    from aux_code.transforms import ClipEval

    frames = np.random.default_rng(1).integers(0, 256, size=(3, 80, 96, 3), dtype=np.uint8)
    cut = frames_to_tensor(frames, size=(32, 32), crop_scale=0.8)
    stage3 = ClipEval(32, scale=0.8)(rearrange(torch.from_numpy(frames), "t h w c -> c t h w").float() / 255.0)
    torch.testing.assert_close(cut, rearrange(stage3, "c t h w -> t c h w"), rtol=0, atol=0)
    # Same size, no crop: the frames as they are.
    same = frames_to_tensor(frames, size=(80, 96))
    torch.testing.assert_close(same, rearrange(torch.from_numpy(frames), "t h w c -> t c h w").float() / 255.0)


def test_half_files_are_checked(ae, tmp_path) -> None:
    from aux_code.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from aux_code.latent_codes import RemoteRoundTrip, check_pair, load_half, load_pair, save_half

    digest = encoder_digest(ae.encoder)
    spec = {"name": "dpae_tiny"}
    kw = dict(frame_size=(16, 24), crop_scale=1.0, encoder_digest=digest, privacy={"epsilon": 3.0})
    save_half(tmp_path / "encoder.pt", "encoder", ae.encoder, spec, **kw)
    save_half(tmp_path / "decoder.pt", "decoder", ae.decoder, spec, **kw)
    rt, info = load_pair(tmp_path / "encoder.pt", tmp_path / "decoder.pt")
    assert isinstance(rt, RemoteRoundTrip) and info["frame_size"] == [16, 24] and info["privacy"] == {"epsilon": 3.0}
    x = frames_to_tensor(_clip())
    with torch.no_grad():
        torch.testing.assert_close(rt(x), ae.decoder(ae.encoder(x).half().float()), rtol=0, atol=0)
    # Weights changed after training: the recorded digest no longer matches.
    ckpt = load_checkpoint(tmp_path / "encoder.pt")
    sd = ckpt["models"]["encoder"]["state_dict"]
    first = next(iter(sd))
    sd[first] = sd[first] + 1.0
    save_checkpoint(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: the encoder's weights do not hash to the digest"):
        load_half(tmp_path / "edited.pt", "encoder")
    # A decoder paired with another encoder.
    _, enc_info = load_half(tmp_path / "encoder.pt", "encoder")
    save_half(tmp_path / "other.pt", "decoder", ae.decoder, spec, **{**kw, "encoder_digest": "f" * 64})
    _, other = load_half(tmp_path / "other.pt", "decoder")
    with pytest.raises(CheckpointError, match=r"other\.pt decodes codes of encoder ffffffffffff, but .*encoder\.pt is encoder"):
        check_pair(enc_info, other, encoder_path=tmp_path / "encoder.pt", decoder_path=tmp_path / "other.pt")
    # A stage checkpoint is not a half file.
    save_checkpoint({"models": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain\.pt is not a DP-AE encoder file"):
        load_half(tmp_path / "plain.pt", "encoder")
