"""Two-stream detector pieces of the DP-AE paper (aux_code.two_stream; issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aux_code.metrics import sigmoidal_anomaly_score, video_level_f1
from aux_code.two_stream import (
    TwoStreamHead,
    bag_of_objects,
    candidate_batches,
    farneback_flow,
    flow_stream,
    flow_to_image,
    hard_examples,
    mine_hard_batch,
    weighted_bce,
)


def test_hard_mining_keeps_exactly_the_k_highest_losses() -> None:
    torch.manual_seed(0)
    losses = torch.rand(12)  # alpha = 3, K = 4
    kept = hard_examples(losses, 4)
    assert kept.numel() == 4 and len(set(kept.tolist())) == 4
    assert set(kept.tolist()) == set(torch.topk(losses, 4).indices.tolist())
    assert float(losses[kept].min()) >= float(losses[[i for i in range(12) if i not in kept.tolist()]].max())
    assert hard_examples(torch.tensor([1.0, 3.0, 3.0, 0.0]), 2).tolist() == [1, 2]  # ties: stable
    # Through a model: the kept candidates are the ones the current model gets most wrong.
    model = torch.nn.Linear(2, 1)
    x, y = torch.randn(12, 2), torch.randn(12)
    per_sample = lambda c: (model(c[0]).squeeze(1) - c[1]) ** 2  # noqa: E731
    idx, (hx, hy) = mine_hard_batch(per_sample, (x, y), 4, model=model)
    with torch.no_grad():
        assert set(idx.tolist()) == set(torch.topk(per_sample((x, y)), 4).indices.tolist())
    assert torch.equal(hx, x[idx]) and torch.equal(hy, y[idx]) and model.training
    chunks = list(candidate_batches(25, 4, 3, generator=torch.Generator().manual_seed(0)))
    assert [c.numel() for c in chunks] == [12, 12]  # the last chunk of 1 < K is dropped
    assert len(set(torch.cat(chunks).tolist())) == 24  # without replacement
    with pytest.raises(ValueError, match="k must be in"):
        hard_examples(losses, 13)


def test_farneback_flow_recovers_a_shift() -> None:
    rng = np.random.default_rng(0)
    import cv2

    base = cv2.GaussianBlur(rng.integers(0, 256, size=(48, 64)).astype(np.uint8), (0, 0), 2.0)
    frames = np.stack([np.roll(base, 2 * i, axis=1) for i in range(3)])
    frames = np.repeat(frames[..., None], 3, axis=-1)
    flow = flow_stream(frames)
    assert flow.shape == (2, 48, 64, 2) and flow.dtype == np.float32
    inner = flow[:, 12:-12, 12:-12]
    assert np.median(inner[..., 0]) == pytest.approx(2.0, abs=0.3) and abs(np.median(inner[..., 1])) < 0.3
    still = farneback_flow(frames[0], frames[0])
    assert np.abs(still).max() < 0.1 and np.abs(still).mean() < 0.01
    img = flow_to_image(flow[0])
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert flow_to_image(np.zeros((2, 2, 2), np.float32))[0, 0].tolist() == [128, 128, 0]


def test_bag_of_objects_counts_boxes_per_class() -> None:
    bag = bag_of_objects([0, 0, 2, 79, 0], scores=[0.9, 0.2, 0.8, 0.5, 0.6], min_score=0.5)
    assert bag.shape == (80,) and bag.dtype == np.float32
    assert bag[0] == 2 and bag[2] == 1 and bag[79] == 1 and bag.sum() == 4
    assert bag_of_objects([]).sum() == 0
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 80\)"):
        bag_of_objects([80])


def test_two_stream_head_and_weighted_bce() -> None:
    torch.manual_seed(0)
    head = TwoStreamHead(rgb_dim=6, flow_dim=5, bag_dim=4, hidden=8).eval()
    p = head(torch.rand(3, 6), torch.rand(3, 5), torch.rand(3, 4))
    assert p.shape == (3,) and bool(((p > 0) & (p < 1)).all())
    one_stream = TwoStreamHead(rgb_dim=6, flow_dim=0, bag_dim=4, hidden=8)
    assert one_stream(torch.rand(2, 6), None, torch.rand(2, 4)).shape == (2,)
    with pytest.raises(ValueError, match=r"flow must be \(N, 5\)"):
        head(torch.rand(3, 6), None, torch.rand(3, 4))
    loss = weighted_bce(torch.zeros(2), torch.tensor([0, 1]))
    assert loss.tolist() == pytest.approx([np.log(2), 2 * np.log(2)])


def test_sas_and_video_level_f1_on_a_hand_made_sequence() -> None:
    # Accumulator from LB = -7 with v = 2, tau = 0.5: s = 1 adds 2, s = 0 subtracts 2, s = 0.75 adds 1.
    sas = sigmoidal_anomaly_score([1.0, 1.0, 1.0, 1.0, 0.75, 0.0], tau=0.5, v=2, upper=7, lower=-7)
    expected_x = [-5, -3, -1, 1, 2, 0]
    np.testing.assert_allclose(sas, 1 / (1 + np.exp(-np.array(expected_x, dtype=float))))
    alarm = sas  # exceeds 0.5 at t = 3
    quiet = sigmoidal_anomaly_score([1.0, 1.0, 0.0, 1.0])  # x: -5, -3, -5, -3: never above 0.5
    # Videos: anomalous+alarm (TP), anomalous+quiet (FN), normal+alarm (FP), normal+quiet (TN).
    f1 = video_level_f1([alarm, quiet, alarm, quiet], [1, 1, 0, 0])
    assert f1 == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))
    assert video_level_f1([alarm, quiet], [1, 0]) == 1.0
