"""Models: shapes, value ranges, gradient flow, the clip/frame layout, TF padding, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aux_code.models import (
    BudgetModel,
    EmbeddingHead,
    I3DResNet,
    IdentityAnonymizer,
    InceptionI3D,
    ResNet2d,
    TargetModel,
    UNetAnonymizer,
    anonymize_clip,
    available_models,
    build_anonymizer,
    build_budget,
    build_embedding_head,
    build_target,
    build_utility,
)
from aux_code.models.i3d_inception import ShiftBatchNorm3d, same_pad


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_r50(**kw) -> I3DResNet:
    return build_utility(name="i3d_r50_tiny", num_classes=5, **kw)


def assert_all_params_learn(model: nn.Module) -> None:
    """Every trainable parameter got a gradient, and not an all-zero one."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not bad, f"parameters without gradient: {bad}"


# --------------------------------------------------------------------------- anonymizer


def test_unet_shape_range_and_odd_sizes():
    unet = UNetAnonymizer(width=4).eval()
    for h, w in [(32, 48), (21, 27)]:
        x = torch.rand(2, 3, h, w)
        y = unet(x)
        assert y.shape == (2, 3, h, w)
        assert y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match=r"anonymize_clip"):
        unet(torch.rand(1, 3, 4, 16, 16))


def test_unet_gradients_reach_every_parameter():
    unet = UNetAnonymizer(width=4).train()
    y = unet(torch.rand(2, 3, 32, 32))
    (y * torch.randn_like(y)).sum().backward()
    assert_all_params_learn(unet)


def test_identity_anonymizer_then_i3d_equals_i3d_on_raw_clip():
    utility = tiny_r50().eval()
    clip = torch.rand(2, 3, 8, 32, 32)
    through = anonymize_clip(IdentityAnonymizer(), clip)
    assert through.shape == clip.shape
    assert torch.equal(through, clip)
    with torch.no_grad():
        assert torch.equal(utility(through)[0], utility(clip)[0])
        assert torch.equal(utility(through)[1], utility(clip)[1])


class ColourMix(nn.Module):
    """A per-frame op that depends on which input channel is which: y_o = sum_c M[o, c] x_c + b_o."""

    def __init__(self):
        super().__init__()
        self.register_buffer("m", torch.tensor([[0.2, 0.7, 0.1], [0.5, -0.3, 0.8], [0.0, 0.4, 0.6]]))
        self.register_buffer("b", torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,nchw->nohw", self.m, frames) + self.b.view(1, 3, 1, 1)


def test_anonymize_clip_applies_per_frame_and_catches_the_reshape_bug():
    mix = ColourMix()
    clip = torch.rand(2, 3, 4, 5, 6)
    expected = torch.einsum("oc,bcthw->bothw", mix.m, clip) + mix.b.view(1, 3, 1, 1, 1)
    assert torch.allclose(anonymize_clip(mix, clip), expected, atol=1e-6)
    # The public code's (B, C, T, H, W) -> (-1, C, H, W) reshape: the same op gives another answer,
    # so the assertion above would fail under that bug.
    b, c, t, h, w = clip.shape
    buggy = mix(clip.reshape(-1, c, h, w)).reshape(b, c, t, h, w)
    assert not torch.allclose(buggy, expected, atol=1e-3)


def test_anonymize_clip_with_unet_matches_frame_by_frame_and_chunks():
    unet = UNetAnonymizer(width=4).eval()
    clip = torch.rand(2, 3, 3, 16, 16)
    with torch.no_grad():
        out = anonymize_clip(unet, clip)
        for t in range(clip.shape[2]):
            assert torch.allclose(out[:, :, t], unet(clip[:, :, t]), atol=1e-6)
        assert torch.allclose(anonymize_clip(unet, clip, frames_per_pass=4), out, atol=1e-6)
    unet.train()
    with pytest.raises(ValueError, match="eval mode"):
        anonymize_clip(unet, clip, frames_per_pass=4)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        anonymize_clip(unet, clip[:, :, 0])


# --------------------------------------------------------------------------- utility fT


@pytest.mark.parametrize("stem,frames,t_out", [("resnet3d", 16, 2), ("resnet3d", 8, 1), ("pytorchvideo", 8, 4)])
def test_i3d_r50_shapes(stem, frames, t_out):
    model = tiny_r50(stem=stem).eval()
    clip = torch.rand(2, 3, frames, 64, 64)
    with torch.no_grad():
        fmap = model.feature_map(clip)
        logits, feature = model(clip)
    assert fmap.shape == (2, model.feature_dim, t_out, 2, 2)
    assert logits.shape == (2, 5) and feature.shape == (2, model.feature_dim) == (2, 256)
    assert torch.allclose(feature, fmap.mean(dim=(2, 3, 4)))
    assert torch.allclose(logits, model.fc(feature), atol=1e-6)  # eval: dropout is off


def test_i3d_r50_too_few_frames_is_a_clear_error():
    model = tiny_r50(stem="resnet3d")
    with pytest.raises(ValueError, match="at least 7 frames"):
        model(torch.rand(1, 3, 6, 32, 32))


def test_frame_difference_input_sees_only_what_changes():
    torch.manual_seed(0)
    model = tiny_r50().eval()  # the tiny preset: clip_input="difference"
    assert model.clip_input == "difference"
    still = torch.rand(1, 3, 1, 32, 32).expand(1, 3, 8, 32, 32)
    other_still = torch.rand(1, 3, 1, 32, 32).expand(1, 3, 8, 32, 32)
    with torch.no_grad():
        # a still clip is all zeros after differencing, whatever the picture
        assert torch.allclose(model(still)[1], model(other_still)[1])
        moving = torch.rand(1, 3, 8, 32, 32)
        assert not torch.allclose(model(moving)[1], model(still)[1])
        # adding a constant to every frame changes no difference
        assert torch.allclose(model(moving)[1], model(moving + 0.1)[1], atol=1e-5)
    rgb = tiny_r50(clip_input="rgb").eval()
    with torch.no_grad():
        assert not torch.allclose(rgb(still)[1], rgb(other_still)[1])
    with pytest.raises(ValueError, match="clip_input"):
        tiny_r50(clip_input="flow")


def test_rgb_difference_input_sees_appearance_and_motion():
    torch.manual_seed(0)
    model = tiny_r50(clip_input="rgb_difference").eval()
    assert model.stem.conv.in_channels == 6
    still = torch.rand(1, 3, 1, 32, 32).expand(1, 3, 8, 32, 32)
    other_still = torch.rand(1, 3, 1, 32, 32).expand(1, 3, 8, 32, 32)
    with torch.no_grad():
        # a still picture keeps a feature of its own (Table 1's probe needs this) ...
        assert not torch.allclose(model(still)[1], model(other_still)[1])
        # ... and the difference channels are really fed: zeroing the frame half of the stem
        # leaves a model that, like clip_input="difference", cannot tell two stills apart
        model.stem.conv.weight[:, :3] = 0
        assert torch.allclose(model(still)[1], model(other_still)[1])
        moving = torch.rand(1, 3, 8, 32, 32)
        assert not torch.allclose(model(moving)[1], model(still)[1])


def test_i3d_r50_temporal_kernels_follow_the_public_pattern():
    model = I3DResNet(width=4, blocks=(3, 4, 6, 3))
    kernels = [[b.conv_a.kernel_size[0] for b in getattr(model, f"layer{i}")] for i in range(1, 5)]
    assert kernels == [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]]
    assert model.stem.conv.kernel_size == (5, 7, 7) and model.stem.conv.stride == (2, 2, 2)


def test_i3d_r50_gradients():
    model = tiny_r50().train()
    logits, feature = model(torch.rand(2, 3, 8, 32, 32))
    (logits * torch.randn_like(logits)).sum().add((feature * torch.randn_like(feature)).sum()).backward()
    assert_all_params_learn(model)


def test_same_pad_matches_tensorflow_rule():
    x = torch.zeros(1, 1, 5, 6, 7)
    # n=5,k=3,s=2 -> total 2 -> (1, 1); n=6,k=3,s=2 -> total 1 -> (0, 1); n=7,k=1,s=1 -> 0.
    y = same_pad(x, (3, 3, 1), (2, 2, 1), value=1.0)
    assert y.shape == (1, 1, 7, 7, 7)
    assert y[0, 0, :, 0, 0].tolist() == [1, 0, 0, 0, 0, 0, 1]  # time: one before, one after
    assert y[0, 0, 1, :, 0].tolist() == [0, 0, 0, 0, 0, 0, 1]  # height: none before, one after
    for n, k, s in [(224, 7, 2), (112, 3, 2), (9, 3, 2), (8, 2, 2), (5, 3, 1)]:
        padded = same_pad(torch.zeros(1, 1, n, 1, 1), (k, 1, 1), (s, 1, 1))
        assert (padded.shape[2] - k) // s + 1 == math.ceil(n / s)


def test_inception_max_pool_pads_with_minus_infinity():
    model = InceptionI3D(width_mult=1 / 16)
    x = -torch.rand(1, 2, 3, 5, 5) - 1.0  # all negative: a zero pad would win the max
    y = model.pool_2a(x)
    assert y.shape == (1, 2, 3, 3, 3)
    assert y.max() < -1.0


def test_shift_batchnorm_has_no_scale_and_eps_1e3():
    bn = ShiftBatchNorm3d(4)
    assert bn.weight is None and bn.eps == 1e-3
    assert [n for n, _ in bn.named_parameters()] == ["bias"]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 4, 3, 2, 2)
    ref = (x - bn.running_mean.view(1, 4, 1, 1, 1)) / torch.sqrt(bn.running_var.view(1, 4, 1, 1, 1) + 1e-3) + bn.bias.view(1, 4, 1, 1, 1)
    assert torch.allclose(bn(x), ref, atol=1e-6)


def test_inception_shapes_and_logits_from_feature():
    model = build_utility(name="i3d_inception_tiny", num_classes=6).eval()
    assert model.feature_dim == 64  # 1024 / 16
    for frames, size in [(16, 64), (9, 37)]:
        clip = torch.rand(2, 3, frames, size, size)
        with torch.no_grad():
            logits, feature = model(clip)
        assert logits.shape == (2, 6) and feature.shape == (2, 64)
        assert torch.allclose(logits, model.fc(feature), atol=1e-5)
    # 16 frames -> 2 time steps after Mixed_5c, where the feature is the plain global average.
    clip = torch.rand(1, 3, 16, 64, 64)
    with torch.no_grad():
        fmap = model.feature_map(clip)
        assert fmap.shape[2] == 2
        assert torch.allclose(model(clip)[1], fmap.mean(dim=(2, 3, 4)), atol=1e-6)


def test_inception_temporal_windows_match_deepmind_logits_head():
    # Logits endpoint: 2-step windows (stride 1) over time, logits per window, then their mean.
    model = InceptionI3D(width_mult=1 / 16).eval()
    clip = torch.rand(1, 3, 40, 32, 32)
    with torch.no_grad():
        fmap = model.feature_map(clip)
        per_step = fmap.mean(dim=(3, 4))
        t = per_step.shape[-1]
        assert t >= 3
        windows = torch.stack([per_step[..., i : i + 2].mean(-1) for i in range(t - 1)], dim=-1)
        expected = torch.stack([model.fc(windows[..., i]) for i in range(t - 1)], dim=-1).mean(-1)
        assert torch.allclose(model(clip)[0], expected, atol=1e-5)


def test_inception_gradients():
    model = InceptionI3D(num_classes=4, width_mult=1 / 16).train()
    logits, feature = model(torch.rand(2, 3, 8, 32, 32))
    (logits * torch.randn_like(logits)).sum().add((feature * torch.randn_like(feature)).sum()).backward()
    assert_all_params_learn(model)


def test_embedding_head_unit_norm_and_gradients():
    head = build_embedding_head(in_dim=32, hidden_dim=16, out_dim=8).train()
    z = head(torch.randn(6, 32))
    assert z.shape == (6, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)
    (z * torch.randn_like(z)).sum().backward()
    assert_all_params_learn(head)
    assert head.net[3].bias is None
    with pytest.raises(ValueError, match=r"\(B, 32\)"):
        head(torch.randn(6, 31))
    assert EmbeddingHead().net[0].in_features == 2048


# --------------------------------------------------------------------------- budget fB / target fB'


def test_budget_and_target_shapes_and_gradients():
    budget = build_budget(name="resnet_tiny").train()
    z = budget(torch.rand(4, 3, 32, 32))
    assert z.shape == (4, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    (z * torch.randn_like(z)).sum().backward()
    assert_all_params_learn(budget)
    assert budget.backbone.fc is None

    target = build_target(name="resnet_tiny").train()
    logits = target(torch.rand(4, 3, 32, 32))
    assert logits.shape == (4, 7)
    (logits * torch.randn_like(logits)).sum().backward()
    assert_all_params_learn(target)


def test_resnet2d_full_size_equals_torchvision_resnet50():
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet50().eval()
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so a swapped BN would show
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ours = ResNet2d(num_classes=1000).eval()
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv((x - mean) / std), atol=1e-5)


# --------------------------------------------------------------------------- registry


def test_registry_names_overrides_and_errors():
    assert available_models("utility") == ["i3d_inception", "i3d_inception_tiny", "i3d_r50", "i3d_r50_tiny"]
    assert "identity" in available_models("anonymizer")
    assert isinstance(build_anonymizer(name="identity"), IdentityAnonymizer)
    assert build_anonymizer(name="unet", width=2).width == 2
    model = build_utility(name="i3d_r50_tiny", num_classes=3, width=4, blocks=(1, 1, 1, 1))
    assert model.feature_dim == 128 and model.fc.out_features == 3
    assert isinstance(build_target(name="resnet_tiny"), TargetModel)
    assert isinstance(build_budget(name="resnet_tiny", proj_dim=16), BudgetModel)
    with pytest.raises(ValueError, match=r"unknown utility model 'i3d_r18'.*i3d_r50"):
        build_utility(name="i3d_r18")
    with pytest.raises(TypeError, match=r"does not take \['depth'\]"):
        build_utility(name="i3d_r50_tiny", depth=3)
    with pytest.raises(TypeError, match=r"identity.*does not take \['width'\]"):
        build_anonymizer(name="identity", width=3)
    with pytest.raises(ValueError, match="unknown model kind"):
        available_models("detector")


def test_full_size_parameter_counts():
    # About 1.5 s on 2 cores (instantiation only), so it runs by default.
    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert n(build_anonymizer(name="unet")) == 17_267_523
    r50 = build_utility(name="i3d_r50", num_classes=400)
    assert n(r50) == 28_043_472 and r50.feature_dim == 2048
    inc = build_utility(name="i3d_inception", num_classes=400)
    assert n(inc) == 12_689_984 and inc.feature_dim == 1024
    assert n(build_budget(name="resnet50")) == 27_966_656
    assert n(build_target(name="resnet50", num_classes=7)) == 23_522_375
    assert n(build_embedding_head(in_dim=2048)) == 1_115_904
