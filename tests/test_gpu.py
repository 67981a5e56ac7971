"""CUDA-only checks (marker ``gpu``; skipped with the reason where no CUDA device is visible):
stage 1's minimax iteration under bf16 and under fp16 with gradient scaling, stage 3's model on
CUDA against the CPU, and stage 4 (MGFN) end to end on CUDA. scripts/gpu_check.sh runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def _minimax(amp: str):
    from anonymization_training.steps import LossWeights, adversary_step, anonymizer_step
    from aux_code.fit import Stepper
    from aux_code.precision import Precision
    from benchmarks.bench_anonymization import SIZES, batches, build

    size = SIZES["synthetic"]
    models = build(size, CUDA)
    opts = (torch.optim.Adam(models.anonymizer.parameters(), lr=1e-3),
            torch.optim.Adam([*models.utility.parameters(), *models.embedding.parameters()], lr=1e-3),
            torch.optim.Adam(models.budget.parameters(), lr=1e-3))
    precision = Precision(amp, CUDA)
    stepper = Stepper(precision, stage="gpu-test")
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in models.as_dict().items()}
    w = LossWeights(method="tedspad", omega=0.1, margin=1.0, temperature=0.1, w_t=0.7, w_b=1.0)
    action, images = batches(size, CUDA, 1)
    action2, images2 = batches(size, CUDA, 2)
    for _ in range(2):
        stepper.step += 1
        a = anonymizer_step(models, opts[0], action, images, weights=w, stepper=stepper)
        b = adversary_step(models, opts[1], opts[2], action2, images2, weights=w, stepper=stepper)
    return precision, models, before, {**a, **b}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_minimax_iteration_on_cuda(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    precision, models, before, logs = _minimax(amp)
    assert precision.name == amp
    if amp == "fp16":
        assert precision.scaler() is not None  # fp16 steps through a GradScaler
    assert all(np.isfinite(v) for v in logs.values()), logs
    for key, m in models.as_dict().items():
        assert all(p.is_cuda for p in m.parameters())
        moved = any(not torch.equal(p.detach(), q) for p, q in zip(m.parameters(), before[key]))
        assert moved, f"{key} did not change in two {amp} iterations"


def test_extraction_model_on_cuda_matches_cpu():
    from aux_code.models import IdentityAnonymizer
    from aux_code.models.i3d_resnet import I3DResNet
    from feature_extraction.model import FeatureModel

    torch.manual_seed(0)
    model = I3DResNet(width=8, blocks=(1, 1, 1, 1), num_classes=3)
    clips = torch.rand(3, 3, 16, 64, 64)
    cpu = FeatureModel(IdentityAnonymizer(), model, device=torch.device("cpu"), precision="fp32")(clips)
    fp32 = FeatureModel(IdentityAnonymizer(), model, device=CUDA, precision="fp32")(clips)
    np.testing.assert_allclose(fp32, cpu, atol=1e-3, rtol=1e-3)  # TF32 convolutions may differ by ~1e-4
    auto = FeatureModel(IdentityAnonymizer(), model, device=CUDA)  # bf16 / fp16 autocast, channels-last
    assert auto.path.startswith(("eager bf16", "eager fp16")) and "channels-last" in auto.path
    low = auto(clips)
    assert low.dtype == np.float32 and np.isfinite(low).all()
    assert np.abs(low - cpu).max() < 0.05 * np.abs(cpu).max() + 1e-3


def test_extraction_compiled_on_cuda_matches_eager():
    from aux_code.models import IdentityAnonymizer
    from aux_code.models.i3d_resnet import I3DResNet
    from feature_extraction.model import FeatureModel

    torch.manual_seed(0)
    model = I3DResNet(width=8, blocks=(1, 1, 1, 1), num_classes=3)
    clips = torch.rand(5, 3, 16, 64, 64)
    eager = FeatureModel(IdentityAnonymizer(), model, device=CUDA, precision="fp32")(clips)
    compiled = FeatureModel(IdentityAnonymizer(), model, device=CUDA, precision="fp32", compile=True, chunk=4)
    np.testing.assert_allclose(compiled(clips), eager, atol=1e-3, rtol=1e-3)


def test_mgfn_stage_on_cuda(tmp_path, monkeypatch):
    from anomaly_detection.fake_features import make_fake_feature_set
    from anomaly_detection.train import run
    from aux_code.config import PROJECT_ROOT, load_config
    from anomaly_detection.config import AnomalyConfig

    paths = tmp_path / "paths.yaml"
    paths.write_text("runs: runs\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(paths))
    make_fake_feature_set(tmp_path / "runs" / "extraction" / "fake")
    cfg = load_config(AnomalyConfig, PROJECT_ROOT / "configs" / "synthetic" / "anomaly" / "default.yaml",
                      ["data.features=extraction/fake", "optim.batch_per_class=4", "optim.epochs=4", "eval.every=1",
                       "eval.plot_videos=0", "run.device=cuda"])
    results = run(cfg)
    assert results["test"]["frame"]["roc_auc"] > 0.9, results["test"]["frame"]
