"""The DP autoencoder's two halves (aux_code.models.dpae; issue 16)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aux_code.checkpoint import CheckpointError, save_checkpoint
from aux_code.models.dpae import DPAEDecoder, DPAEEncoder, DPAutoencoder, group_count
from aux_code.models.registry import available_models, build_dpae_decoder, build_dpae_encoder
from aux_code.models.stored import load_stored_model, pack_model


def test_paper_shapes_at_240x320() -> None:
    # The paper's widths at the paper's resolution: 240x320x3 -> 30x40x16 -> 240x320x3. The
    # full decoder runs on the meta device (shapes only, no arithmetic).
    enc = build_dpae_encoder(name="dpae")
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [240, 64, 16]
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) for c in convs)
    frames = torch.rand(1, 3, 240, 320)
    with torch.no_grad():
        code = enc(frames)
    assert code.shape == (1, 16, 30, 40) and enc.code_shape(240, 320) == (16, 30, 40)
    with torch.device("meta"):
        dec = build_dpae_decoder(name="dpae")
        out = dec(torch.empty(2, 16, 30, 40))
    assert out.shape == (2, 3, 240, 320)
    assert not any(isinstance(m, nn.ConvTranspose2d | nn.modules.batchnorm._BatchNorm) for m in dec.modules())


def test_tiny_preset_round_trip_range_and_size_check() -> None:
    torch.manual_seed(0)
    ae = DPAutoencoder(build_dpae_encoder(name="dpae_tiny"), build_dpae_decoder(name="dpae_tiny"))
    x = torch.rand(2, 3, 16, 24)
    y = ae(x).detach()
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert ae.encoder(x).shape == (2, 16, 2, 3)
    assert sum(p.numel() for p in ae.parameters()) < 20_000
    with pytest.raises(ValueError, match="frame size 20x24 must be positive multiples of 8"):
        ae.encoder(torch.rand(1, 3, 20, 24))
    with pytest.raises(ValueError, match="expected a code"):
        ae.decoder(torch.rand(1, 8, 2, 3))
    assert group_count(30) == 6 and group_count(4) == 4 and group_count(15) == 5
    assert {"dpae", "dpae_tiny"} <= set(available_models("dpae_encoder")) & set(available_models("dpae_decoder"))


def test_halves_are_separate_stored_records(tmp_path) -> None:
    torch.manual_seed(0)
    spec = {"name": "dpae_tiny"}
    enc, dec = build_dpae_encoder(**spec), build_dpae_decoder(**spec)
    camera = save_checkpoint({"models": {"encoder": pack_model("dpae_encoder", spec, enc)}}, tmp_path / "camera.pt")
    server = save_checkpoint({"models": {"decoder": pack_model("dpae_decoder", spec, dec)}}, tmp_path / "server.pt")
    enc2, got = load_stored_model(camera, "encoder")
    dec2, _ = load_stored_model(server, "decoder")
    assert isinstance(enc2, DPAEEncoder) and isinstance(dec2, DPAEDecoder) and got == spec
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(dec2(enc2(x)), dec.eval()(enc.eval()(x)))
    with pytest.raises(CheckpointError, match="holds no model 'decoder'; it holds: encoder"):
        load_stored_model(camera, "decoder")
