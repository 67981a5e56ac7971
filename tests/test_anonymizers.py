"""The shared anonymization methods: raw, trained UNet, downsample, blur and blacken of boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aux_code.anonymizers import (
    AnonymizerSection,
    Downsample,
    HOGPersonDetector,
    blacken_boxes,
    blur_boxes,
    box_mask,
    build_frame_anonymizer,
    gaussian_kernel1d,
)
from aux_code.checkpoint import CheckpointError, save_checkpoint
from aux_code.config import ConfigError
from aux_code.models import build_anonymizer
from aux_code.models.stored import pack_model


def _frames(n=2, h=24, w=32, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_box_mask_is_half_open_and_clipped():
    mask = box_mask([np.array([[2, 1, 5, 3]]), np.array([[-4, -4, 100, 2]])], 6, 8)
    assert mask.shape == (2, 1, 6, 8)
    assert mask[0, 0].sum() == 3 * 2 and mask[0, 0, 1:3, 2:5].all()
    assert mask[1, 0, :2].all() and not mask[1, 0, 2:].any()


def test_blacken_only_inside_boxes():
    frames = _frames()
    boxes = [np.array([[4, 4, 10, 12]]), np.zeros((0, 4), np.int32)]
    out = blacken_boxes(frames, boxes)
    assert (out[0, :, 4:12, 4:10] == 0).all()
    inside = box_mask(boxes, 24, 32).expand(-1, 3, -1, -1)
    assert torch.equal(out[~inside], frames[~inside])
    assert torch.equal(out[1], frames[1])


def test_blur_changes_only_box_pixels_and_smooths_them():
    frames = _frames(n=1, h=40, w=40)
    boxes = [np.array([[10, 10, 30, 30]])]
    out = blur_boxes(frames, boxes, kernel=13, sigma=10.0)
    inside = box_mask(boxes, 40, 40).expand(-1, 3, -1, -1)
    assert torch.equal(out[~inside], frames[~inside])
    # Uniform noise has std ~0.29; a 13-tap near-box blur removes most of it.
    assert out[inside].std() < 0.35 * frames[inside].std()


def test_blur_of_a_constant_image_is_the_constant():
    frames = torch.full((1, 3, 20, 20), 0.4)
    out = blur_boxes(frames, [np.array([[0, 0, 20, 20]])], kernel=13, sigma=10.0)
    assert torch.allclose(out, frames, atol=1e-6)


def test_gaussian_taps_are_normalised_and_symmetric():
    taps = gaussian_kernel1d(13, 10.0)
    assert taps.shape == (13,) and abs(float(taps.sum()) - 1.0) < 1e-6
    assert torch.allclose(taps, taps.flip(0))


@pytest.mark.parametrize("factor", [2, 4])
def test_downsample_keeps_size_and_removes_detail(factor):
    frames = _frames(n=1, h=32, w=32)
    out = Downsample(factor)(frames)
    assert out.shape == frames.shape
    # The output is a function of the pooled image alone: detail that averages to zero inside
    # every factor x factor block is gone.
    detail = torch.randn(1, 3, 32 // factor, 32 // factor, factor, factor, generator=torch.Generator().manual_seed(1))
    detail = detail - detail.mean(dim=(-2, -1), keepdim=True)
    from einops import rearrange

    other = frames + 0.01 * rearrange(detail, "n c h w a b -> n c (h a) (w b)")
    assert torch.allclose(Downsample(factor)(other), out, atol=1e-6)
    assert (out - frames).abs().mean() > 0.05


def test_raw_and_box_methods_describe_themselves(tmp_path):
    raw = build_frame_anonymizer(AnonymizerSection(method="raw"), runs_root=tmp_path)
    frames = _frames()
    assert torch.equal(raw.model(frames), frames) and not raw.needs_boxes and raw.box_source is None
    assert raw.describe() == {"method": "raw"}
    blur = build_frame_anonymizer(AnonymizerSection(method="blur"), runs_root=tmp_path)
    assert blur.needs_boxes and blur.box_source == "gt"
    assert blur.describe() == {"method": "blur", "blur_kernel": 13, "blur_sigma": 10.0, "boxes": "gt"}
    with pytest.raises(ValueError, match="needs person boxes"):
        blur.apply_boxes(frames, None)
    down = build_frame_anonymizer(AnonymizerSection(method="downsample", factor=4), runs_root=tmp_path)
    assert down.describe() == {"method": "downsample", "factor": 4}


def test_unet_method_loads_a_stage_checkpoint(tmp_path):
    torch.manual_seed(0)
    unet = build_anonymizer(name="unet_tiny").eval()
    ckpt = tmp_path / "anonymization" / "x" / "best.pt"
    save_checkpoint({"models": {"anonymizer": pack_model("anonymizer", {"name": "unet_tiny"}, unet)}}, ckpt)
    section = AnonymizerSection(method="unet", checkpoint="anonymization/x/best.pt")
    fa = build_frame_anonymizer(section, runs_root=tmp_path)
    frames = _frames(h=32, w=32)
    with torch.no_grad():
        assert torch.equal(fa.model(frames), unet(frames))
    d = fa.describe()
    assert d["method"] == "unet" and len(d["digest"]) == 16 and d["spec"] == {"name": "unet_tiny"}
    assert all(not p.requires_grad for p in fa.model.parameters())


def test_unet_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="anonymizer.checkpoint"):
        build_frame_anonymizer(AnonymizerSection(method="unet"), runs_root=tmp_path)
    save_checkpoint({"models": {}}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="holds no model 'anonymizer'"):
        build_frame_anonymizer(AnonymizerSection(method="unet", checkpoint="empty.pt"), runs_root=tmp_path)
    with pytest.raises(CheckpointError, match="missing.pt"):
        build_frame_anonymizer(AnonymizerSection(method="unet", checkpoint="missing.pt"), runs_root=tmp_path)


def test_bad_baseline_parameters_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="factor"):
        build_frame_anonymizer(AnonymizerSection(method="downsample", factor=1), runs_root=tmp_path)
    with pytest.raises(ConfigError, match="blur_kernel"):
        build_frame_anonymizer(AnonymizerSection(method="blur", blur_kernel=12), runs_root=tmp_path)


def test_hog_detector_finds_nothing_on_flat_image_and_returns_int_boxes():
    det = HOGPersonDetector()
    boxes = det(np.full((80, 96, 3), 128, np.uint8))
    assert boxes.dtype == np.int32 and boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="RGB uint8"):
        det(np.zeros((80, 96), np.uint8))


def test_hog_detector_finds_the_astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the astronaut photograph")
    image = data.astronaut()
    boxes = HOGPersonDetector()(image)
    assert len(boxes) >= 1
    x0, y0, x1, y1 = boxes[0]
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
