"""Stage 3's compiled model path (extract.compile): when it is chosen, what it costs to decide,
and that the compiled graph is the frozen one and gives eager's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aux_code.models import IdentityAnonymizer, build_utility
from aux_code.models.i3d_resnet import I3DResNet
from feature_extraction.model import COMPILE_MIN_GFLOP, FeatureModel, clip_gflop, resolve_compile

CPU = torch.device("cpu")


def test_clip_gflop_counts_like_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    tiny = build_utility(name="i3d_r50_tiny", num_classes=4).train()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tiny.eval()(torch.zeros(1, 3, 8, 32, 32))
    tiny.train()
    # Below the probe size the count is exact: torch's counter gives the same convolution + linear total.
    assert clip_gflop(IdentityAnonymizer(), tiny, (3, 8, 32, 32)) == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-9)
    assert tiny.training  # left as it was
    assert clip_gflop(IdentityAnonymizer(), tiny, (3, 8, 32, 32)) < 0.01 * COMPILE_MIN_GFLOP


@pytest.mark.slow
def test_clip_gflop_of_i3d_r50_at_full_size():
    # 32.83 GFLOP for 16x224x224 counted at full size; the stem alone is 9.44
    # (8 x 112 x 112 outputs x 64 channels x 3 x 5 x 7 x 7 taps x 2). The 64-pixel probe's estimate is within 5%.
    model = I3DResNet()
    assert clip_gflop(IdentityAnonymizer(), model, (3, 16, 224, 224), probe=224) == pytest.approx(32.83, abs=0.01)
    assert clip_gflop(IdentityAnonymizer(), model, (3, 16, 224, 224)) == pytest.approx(32.83, rel=0.05)


def test_resolve_compile_rules():
    assert resolve_compile("auto", CPU, 32.8) is True
    assert resolve_compile("auto", CPU, 0.1) is False
    assert resolve_compile("auto", CPU, None) is False  # could not count: stay eager
    assert resolve_compile("auto", torch.device("cuda"), 32.8) is False  # no GPU run has measured it yet
    assert resolve_compile("on", CPU, 0.1) is True and resolve_compile("off", CPU, 99.0) is False
    with pytest.raises(ValueError, match="extract.compile"):
        resolve_compile("yes", CPU, 1.0)


def test_eager_path_is_named_and_unchanged():
    torch.manual_seed(0)
    model = I3DResNet(width=4, blocks=(1, 1, 1, 1), num_classes=3)
    fm = FeatureModel(IdentityAnonymizer(), model, device=CPU)
    x = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        expected = model(x)[1].numpy()
    np.testing.assert_array_equal(fm(x), expected)
    assert fm.path == "eager fp32" and fm.compile_seconds is None


@pytest.mark.slow
def test_compiled_path_is_frozen_matches_eager_and_compiles_once():
    """Inductor with freezing (BN folded, oneDNN convolutions with prepacked weights), chunks of 2
    clips: batches of 3 and 1 pad their last chunk and reuse the one graph."""
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = I3DResNet(width=8, blocks=(1, 1, 1, 1), num_classes=3)
    with torch.no_grad():  # BN statistics that are not the identity, so folding them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    eager = FeatureModel(IdentityAnonymizer(), model, device=CPU)
    fm = FeatureModel(IdentityAnonymizer(), model, device=CPU, compile=True, chunk=2)
    assert fm.path.startswith("inductor fp32 (frozen), 2 clip(s)")
    torch._dynamo.reset()
    counters.clear()
    x = torch.rand(3, 3, 8, 32, 32)
    np.testing.assert_allclose(fm(x), eager(x), atol=1e-4, rtol=1e-4)
    assert fm.compile_seconds is not None and fm.compile_seconds > 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one = fm(x[:1])
    np.testing.assert_allclose(one, eager(x[:1]), atol=1e-4, rtol=1e-4)
    ops = {e.key for e in prof.key_averages()}
    # Frozen graphs call oneDNN's fused convolution; an unfrozen one would call aten's convolutions.
    assert any("_convolution_pointwise" in op for op in ops), sorted(ops)
    assert not {"aten::slow_conv3d_forward", "aten::mkldnn_convolution", "aten::native_batch_norm"} & ops
    assert counters["stats"]["unique_graphs"] == 1


def test_a_failed_compile_falls_back_to_eager_only_when_auto_chose_it(capsys):
    torch.manual_seed(0)
    model = I3DResNet(width=4, blocks=(1, 1, 1, 1), num_classes=3)
    x = torch.rand(2, 3, 8, 32, 32)
    expected = FeatureModel(IdentityAnonymizer(), model, device=CPU)(x)

    def broken(part):
        raise RuntimeError("no C++ compiler")

    auto = FeatureModel(IdentityAnonymizer(), model, device=CPU, compile=True, eager_fallback=True)
    auto._compiled = broken
    np.testing.assert_array_equal(auto(x), expected)
    assert auto.path == "eager fp32" and "compiling the model failed (RuntimeError: no C++ compiler)" in capsys.readouterr().out
    forced = FeatureModel(IdentityAnonymizer(), model, device=CPU, compile=True)  # extract.compile=on: the error stands
    forced._compiled = broken
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        forced(x)
