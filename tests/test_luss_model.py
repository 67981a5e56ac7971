"""LUSS-AE model (issue 17): Gong et al.'s 3DCAE sizes, head shapes, stored-model round trip, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aux_code.losses.luss import ACCELERATED, ORIGINAL, LossWeights, clip_indices, draw_prp, luss_loss
from aux_code.models.luss_ae import build_luss_ae, count_macs
from aux_code.models.stored import build_packed, pack_model


def _n(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_preset_sizes_match_table6():
    torch.manual_seed(0)
    m = build_luss_ae(preset="paper")
    ae = _n(m.encoder) + _n(m.decoder)
    assert ae == 5_980_801  # Table 6: 3DCAE 5.98 M
    assert 6.10e6 < _n(m) < 6.14e6  # Table 6: LUSS-AE 6.12 M (head widths are not given; ours 6.13 M)
    macs = count_macs(m)
    # Table 6's 16.23 G / 16.30 G match the encoder + heads: the counter skipped the transposed convolutions.
    assert abs(macs["encoder"] / 1e9 - 16.08) < 0.01
    assert abs((macs["encoder"] + macs["ffp"] + macs["prp"]) / 1e9 - 16.13) < 0.01


def test_tiny_shapes_and_ranges():
    torch.manual_seed(0)
    m = build_luss_ae(preset="tiny", clip_len=8)
    x = torch.rand(2, 1, 8, 32, 48) * 2 - 1
    recon, frame, logits = m(x)
    assert recon.shape == x.shape and frame.shape == (2, 1, 32, 48) and logits.shape == (2, 2)
    assert recon.abs().max() <= 1 and frame.abs().max() <= 1
    with pytest.raises(ValueError, match="multiples of 16"):
        m(torch.zeros(1, 1, 8, 30, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_luss_ae(preset="tiny", clip_len=12)


def test_prp_clip_uses_running_statistics_in_training():
    """The PRP clip is normalised as a test window is (running statistics) and does not move them;
    the reconstruction pass still trains on batch statistics."""
    torch.manual_seed(0)
    m = build_luss_ae(preset="tiny", clip_len=8)
    with torch.no_grad():  # running statistics that differ from any batch's
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm3d):
                b.running_mean.uniform_(-0.5, 0.5)
                b.running_var.uniform_(0.5, 2.0)
    x, x_prp = torch.rand(4, 1, 8, 32, 48) * 2 - 1, torch.rand(4, 1, 8, 32, 48) * 4 - 2
    alone = build_luss_ae(preset="tiny", clip_len=8)
    alone.load_state_dict(m.state_dict())
    m.train()
    alone.train()
    recon, _, logits = m(x, x_prp)
    alone_recon, _, _ = alone(x)
    assert torch.allclose(recon, alone_recon, atol=1e-6)  # batch statistics of x, as without the PRP clip
    for a, b in zip(m.state_dict().values(), alone.state_dict().values()):
        assert torch.equal(a, b)  # running statistics moved by x only
    alone.eval()
    with torch.no_grad():  # what a test window of x_prp would get from the same weights and statistics
        assert torch.allclose(logits, alone.prp_logits(alone.encode(x_prp)), atol=1e-5)
    assert all(b.training for b in m.modules())  # train mode is back after the PRP pass
    logits.sum().backward()
    assert m.encoder[0][0].weight.grad.abs().sum() > 0  # the PRP loss still trains the encoder


def test_stored_model_round_trip():
    m = build_luss_ae(preset="tiny", clip_len=8)
    record = pack_model("luss_ae", {"preset": "tiny", "clip_len": 8}, m)
    again = build_packed(record, source="test")
    for a, b in zip(m.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_clip_indices_strides():
    assert clip_indices(3, 4, 1).tolist() == [3, 4, 5, 6]
    assert clip_indices(0, 4, 5).tolist() == [0, 5, 10, 15]


def test_prp_labels_and_strides():
    rng = np.random.default_rng(0)
    draws = [draw_prp(rng, 100, 8) for _ in range(2000)]
    labels = np.array([d.label for d in draws])
    assert 0.45 < labels.mean() < 0.55  # 50/50
    for d in draws:
        assert d.stride == 1 if d.label == ORIGINAL else d.stride in (2, 3, 4, 5)
        assert np.all(np.diff(d.indices) == d.stride) and d.indices[0] >= 0 and d.indices[-1] < 100
    strides = [d.stride for d in draws if d.label == ACCELERATED]
    assert set(strides) == {2, 3, 4, 5} and min(np.bincount(strides)[2:]) > 150
    # a 20-frame video fits only 2x (7 * 2 + 1 = 15) for an 8-frame clip
    assert {draw_prp(rng, 20, 8).stride for _ in range(200)} == {1, 2}
    with pytest.raises(ValueError, match="video v7 has 5 frames"):
        draw_prp(rng, 5, 8, video="v7")


def test_loss_terms_weighted_sum():
    clip = torch.zeros(2, 1, 8, 4, 4)
    recon = torch.full_like(clip, 0.5)  # MSE 0.25
    frame, pred = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)  # MSE 1
    logits, labels = torch.zeros(2, 2), torch.tensor([0, 1])  # CE ln 2
    t = luss_loss(recon, clip, pred, frame, logits, labels, LossWeights(0.6, 0.4, 1.0))
    assert t["vcr"].item() == pytest.approx(0.25) and t["ffp"].item() == pytest.approx(1.0)
    assert t["prp"].item() == pytest.approx(np.log(2))
    assert t["loss"].item() == pytest.approx(0.6 * 0.25 + 0.4 + np.log(2))
