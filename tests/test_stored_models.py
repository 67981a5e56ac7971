from __future__ import annotations

import pytest
import torch

from aux_code.checkpoint import CheckpointError, save_checkpoint
from aux_code.models.registry import build_anonymizer, build_utility
from aux_code.models.stored import load_stored_model, pack_model


def test_stored_models_rebuild_exactly(tmp_path):
    torch.manual_seed(0)
    spec_a = {"name": "unet_tiny"}
    spec_t = {"name": "i3d_r50_tiny", "num_classes": 5}
    fa, ft = build_anonymizer(**spec_a), build_utility(**spec_t)
    path = save_checkpoint(
        {"models": {"anonymizer": pack_model("anonymizer", spec_a, fa), "utility": pack_model("utility", spec_t, ft)}},
        tmp_path / "best.pt",
    )
    fa2, spec = load_stored_model(path, "anonymizer")
    assert spec == spec_a and not fa2.training
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(fa.eval()(x), fa2(x))
    ft2, _ = load_stored_model(path, "utility")
    clip = torch.rand(1, 3, 8, 32, 32)
    assert torch.allclose(ft.eval()(clip)[1], ft2(clip)[1])
    with pytest.raises(CheckpointError, match=r"holds no model 'budget'; it holds: anonymizer, utility"):
        load_stored_model(path, "budget", config_key="anonymizer.checkpoint")
