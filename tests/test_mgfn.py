from __future__ import annotations

import pytest
import torch

from aux_code.losses.mgfn import mgfn_loss
from aux_code.models.mgfn import (
    MGFN,
    ChannelLayerNorm,
    Focus,
    Glance,
    append_magnitude,
    build_mgfn,
    count_parameters,
    select_topk_segments,
)

FEATURE_DIM = 64


def _tiny(**overrides: object) -> MGFN:
    torch.manual_seed(0)
    return build_mgfn(preset="tiny", feature_dim=FEATURE_DIM, **overrides)


def _videos(*shape: int) -> torch.Tensor:
    torch.manual_seed(1)
    return append_magnitude(torch.rand(*shape, FEATURE_DIM))


def test_paper_size_parameter_count() -> None:
    model = build_mgfn(preset="paper")
    assert count_parameters(model) == 28_652_773
    # Each Focus block of the last stage (1024 channels, 16 heads) has one 5-tap kernel
    # and one bias per head: 16 * 6 = 96 parameters.
    focus = model.stages[2].blocks[0][1]
    assert isinstance(focus, Focus)
    assert sum(p.numel() for p in focus.rel_pos.parameters()) == 96


def test_channel_layernorm_by_hand() -> None:
    # Channels (1, 3) at one time step: mean 2, std 1 -> (-1, 1) / (1 + 1e-5).
    out = ChannelLayerNorm(2)(torch.tensor([[[1.0], [3.0]]]))
    expected = torch.tensor([[[-1.0], [1.0]]]) / (1.0 + 1e-5)
    assert torch.allclose(out, expected, atol=1e-7)


def test_focus_kernel_shared_within_head() -> None:
    # dim 4, 2 heads of 2 channels; value channels are laid out (dim_head heads), so
    # channels 0, 2 are head 0 and channels 1, 3 are head 1.
    focus = Focus(4, heads=2, dim_head=2, kernel=5).eval()
    focus.norm.eps = 0.0  # running stats are mean 0 / var 1: the norm is the identity
    with torch.no_grad():
        focus.to_v.weight.copy_(torch.eye(4)[:, :, None])
        focus.to_out.weight.copy_(torch.eye(4)[:, :, None])
        focus.to_out.bias.zero_()
        focus.rel_pos.weight.zero_()
        focus.rel_pos.weight[0, 0, 3] = 1.0  # head 0: out[t] = x[t + 1]
        focus.rel_pos.weight[1, 0, 2] = 1.0  # head 1: out[t] = x[t] + 0.5
        focus.rel_pos.bias.copy_(torch.tensor([0.0, 0.5]))
    x = torch.tensor([[[10.0 * c + t for t in range(4)] for c in range(4)]])
    expected = torch.tensor(
        [[[1.0, 2.0, 3.0, 0.0], [10.5, 11.5, 12.5, 13.5], [21.0, 22.0, 23.0, 0.0], [30.5, 31.5, 32.5, 33.5]]]
    )
    assert torch.allclose(focus(x), expected)


def test_glance_is_permutation_equivariant_in_time() -> None:
    torch.manual_seed(0)
    glance = Glance(8, heads=2, dim_head=4)
    x = torch.randn(1, 8, 6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(glance(x)[..., perm], glance(x[..., perm]), atol=1e-5)


def test_tiny_forward_shapes() -> None:
    model = _tiny().eval()
    out = model(_videos(2, 32))
    assert out.scores.shape == (2, 32) and out.magnitudes.shape == (2, 32)
    assert out.topk_indices.shape == (2, 3) and out.video_scores.shape == (2,)
    assert out.topk_features.shape == (2, 1, 3, 64)
    assert bool(((out.scores > 0) & (out.scores < 1)).all())
    crops = model(_videos(2, 5, 32))
    assert crops.scores.shape == (2, 32) and crops.topk_features.shape == (2, 5, 3, 64)
    # A test video shorter than k clips still works, with k capped at T.
    short = model(_videos(1, 2))
    assert short.topk_indices.shape == (1, 2)


def test_ten_crop_scores_are_crop_means() -> None:
    model = _tiny().eval()  # eval: BatchNorm uses running stats, so crops do not interact
    video = _videos(2, 3, 16)
    out = model(video)
    per_crop = torch.stack([model(video[:, c]).scores for c in range(3)], dim=1)
    assert torch.allclose(out.scores, per_crop.mean(dim=1), atol=1e-6)
    per_crop_mag = torch.stack([model(video[:, c]).magnitudes for c in range(3)], dim=1)
    assert torch.allclose(out.magnitudes, per_crop_mag.mean(dim=1), atol=1e-5)


def test_wrong_channel_count_names_expectation() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, 65\)"):
        _tiny()(torch.zeros(2, 32, 64))


def test_every_parameter_gets_a_gradient() -> None:
    model = _tiny().train()
    torch.manual_seed(2)
    out = model(_videos(4, 32))
    total, _ = mgfn_loss(
        scores=out.scores, video_scores=out.video_scores, labels=torch.tensor([0, 0, 1, 1]), topk_features=out.topk_features
    )
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_topk_picks_largest_crop_mean_magnitudes() -> None:
    # B = 1, 2 crops, T = 5, C = 2. Feature norms per crop: crop 0 (1, 9, 0, 4, 3),
    # crop 1 (1, 1, 4, 4, 3); crop mean (1, 5, 2, 4, 3) -> top 3 = segments 1, 3, 4.
    # (Crop 1 alone would pick 2, 3, 4: the choice is made on the crop mean.)
    norms = torch.tensor([[[1.0, 9.0, 0.0, 4.0, 3.0], [1.0, 1.0, 4.0, 4.0, 3.0]]])
    features = torch.stack([norms, torch.zeros_like(norms)], dim=-1)  # (1, 2, 5, 2): norm = first channel
    scores = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.4, 0.5, 0.6, 0.7]]])
    out = select_topk_segments(features, scores, k=3, magnitude_dropout=0.7, training=False)
    assert out.magnitudes.tolist() == [[1.0, 5.0, 2.0, 4.0, 3.0]]
    assert sorted(out.topk_indices[0].tolist()) == [1, 3, 4]
    # Crop-mean scores (0.2, 0.3, 0.4, 0.5, 0.6); mean at 1, 3, 4 = (0.3 + 0.5 + 0.6) / 3.
    assert out.video_scores.item() == pytest.approx(1.4 / 3)
    assert sorted(out.topk_features[0, 0, :, 0].tolist()) == [3.0, 4.0, 9.0]
    assert sorted(out.topk_features[0, 1, :, 0].tolist()) == [1.0, 3.0, 4.0]


def test_model_topk_matches_its_magnitudes_in_eval() -> None:
    model = _tiny().eval()
    out = model(_videos(3, 32))
    expected = torch.topk(out.magnitudes, 3, dim=1).indices
    assert torch.equal(torch.sort(out.topk_indices, dim=1).values, torch.sort(expected, dim=1).values)
    assert torch.allclose(out.video_scores, torch.gather(out.scores, 1, out.topk_indices).mean(dim=1))


def test_training_dropout_varies_the_selection() -> None:
    norms = torch.arange(1.0, 33.0).reshape(1, 1, 32)
    features = torch.stack([norms, torch.zeros_like(norms)], dim=-1)
    scores = torch.full((1, 1, 32), 0.5)
    eval_pick = select_topk_segments(features, scores, k=3, magnitude_dropout=0.7, training=False).topk_indices
    assert sorted(eval_pick[0].tolist()) == [29, 30, 31]
    torch.manual_seed(0)
    picks = {
        tuple(sorted(select_topk_segments(features, scores, k=3, magnitude_dropout=0.7, training=True).topk_indices[0].tolist()))
        for _ in range(20)
    }
    assert len(picks) > 1
    # p = 0 in training is the eval selection.
    no_drop = select_topk_segments(features, scores, k=3, magnitude_dropout=0.0, training=True).topk_indices
    assert torch.equal(no_drop, eval_pick)


# --------------------------------------------------------------------------- token-major math vs the Conv1d formulation


# The public code's formulation lives once, in the benchmark that times it against the stage's model.
from benchmarks.bench_anomaly import plain_forward as _plain_forward  # noqa: E402


@pytest.mark.parametrize("preset,feature_dim,crops", [("tiny", FEATURE_DIM, 1), ("tiny", FEATURE_DIM, 3), ("paper", 96, 1)])
def test_token_major_forward_and_gradients_match_the_conv1d_formulation(preset, feature_dim, crops) -> None:
    torch.manual_seed(0)
    model = build_mgfn(preset=preset, feature_dim=feature_dim, magnitude_dropout=0.0).train()
    plain = build_mgfn(preset=preset, feature_dim=feature_dim, magnitude_dropout=0.0).train()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():  # non-trivial norms, kernels and biases, so a mixed-up channel order shows
        for m in (model, plain):
            torch.manual_seed(3)
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    torch.manual_seed(1)
    video = append_magnitude(torch.rand(4, crops, 32, feature_dim)).squeeze(1)
    labels = torch.tensor([0, 0, 1, 1])
    outs = []
    for m, forward in ((model, MGFN.forward), (plain, _plain_forward)):
        out = forward(m, video)
        loss, _ = mgfn_loss(scores=out.scores, video_scores=out.video_scores, labels=labels, topk_features=out.topk_features)
        loss.backward()
        outs.append(out)
    new, old = outs
    assert torch.equal(new.topk_indices, old.topk_indices)
    for name in ("scores", "magnitudes", "video_scores", "topk_features"):
        assert torch.allclose(getattr(new, name), getattr(old, name), rtol=1e-4, atol=1e-5), name
    grads = dict(plain.named_parameters())
    for name, p in model.named_parameters():
        ref = grads[name].grad
        assert torch.allclose(p.grad, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()) + 1e-7), name
    # BatchNorm statistics moved alike (the token-major BN pools the same N x T values per channel).
    buffers = dict(plain.named_buffers())
    for name, buf in model.named_buffers():
        assert torch.allclose(buf.float(), buffers[name].float(), rtol=1e-4, atol=1e-5), name
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(model(video).scores, _plain_forward(plain, video).scores, atol=1e-5)


def test_conv_tokens_equals_conv1d() -> None:
    from aux_code.models.mgfn import conv_tokens

    torch.manual_seed(0)
    x = torch.randn(3, 7, 5)
    for k in (1, 3, 5):
        conv = torch.nn.Conv1d(5, 4, k, padding=k // 2)
        expected = conv(x.transpose(1, 2)).transpose(1, 2)
        assert torch.allclose(conv_tokens(x, conv), expected, atol=1e-6), k
