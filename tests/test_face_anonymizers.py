"""Face blurring and blackening (aux_code.anonymizers face_blur / face_blacken): the box logic with a
stub detector injected through build_frame_anonymizer(detector=...), the Haar path itself, and the
count of images without a box in stage 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aux_code.anonymizers import AnonymizerSection, HaarFaceDetector, box_mask, build_frame_anonymizer, grow_boxes
from aux_code.config import PROJECT_ROOT, ConfigError, load_config
from aux_code.datasets.vispr import VISPR
from privacy_training.config import PrivacyConfig
from privacy_training.data import prepare_split


class StubFaces:
    """Stands in for the Haar cascade: one fixed box on images whose mean is above a threshold, none on the others."""

    def __init__(self, box=(4, 2, 12, 10), threshold: float = -1.0) -> None:
        self.box, self.threshold, self.calls = np.array([box], dtype=np.int32), threshold, []

    def describe(self) -> dict:
        return {"detector": "stub", "box": self.box.tolist(), "threshold": self.threshold}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls.append(image.shape)
        return self.box if image.mean() > self.threshold else np.zeros((0, 4), np.int32)


def _image(h=20, w=24, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _frames(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize("method", ["face_blur", "face_blacken"])
def test_face_methods_edit_only_the_detected_boxes(method, tmp_path):
    stub = StubFaces()
    fa = build_frame_anonymizer(AnonymizerSection(method=method), runs_root=tmp_path, detector=stub)
    assert fa.needs_boxes and fa.box_kind == "face" and fa.box_source == "haar"
    image = _image()
    boxes = fa.detect(image)
    assert stub.calls == [image.shape] and boxes.dtype == np.int32 and boxes.tolist() == [[4, 2, 12, 10]]
    frames = _frames(image)
    out = fa.apply_boxes(frames, [boxes])
    inside = box_mask([boxes], 20, 24).expand(-1, 3, -1, -1)
    assert torch.equal(out[~inside], frames[~inside])
    if method == "face_blacken":
        assert (out[inside] == 0).all()
    else:
        # The blur of uniform noise inside the box: its spread shrinks.
        assert out[inside].std() < 0.5 * frames[inside].std()
    # No face: the image goes through unchanged.
    assert torch.equal(fa.apply_boxes(frames, [np.zeros((0, 4), np.int32)]), frames)
    with pytest.raises(ValueError, match="needs face boxes"):
        fa.apply_boxes(frames, None)


def test_face_methods_describe_their_detector(tmp_path):
    real = build_frame_anonymizer(AnonymizerSection(method="face_blur", face_min_side=256), runs_root=tmp_path).describe()
    assert real["method"] == "face_blur" and real["detector"] == "haar_frontalface_default" and real["boxes"] == "haar"
    assert real["min_side"] == 256 and real["blur_kernel"] == 13 and real["opencv"]
    stub = build_frame_anonymizer(AnonymizerSection(method="face_blur"), runs_root=tmp_path, detector=StubFaces()).describe()
    # A stub's images must never share a cache entry (keyed by the description) with the cascade's.
    assert stub["detector"] == "stub" and stub != real
    blacken = build_frame_anonymizer(AnonymizerSection(method="face_blacken"), runs_root=tmp_path).describe()
    assert "blur_kernel" not in blacken and blacken["margin"] == 0.2


def test_face_settings_are_checked():
    with pytest.raises(ConfigError, match="face_margin = -0.1"):
        AnonymizerSection(method="face_blur", face_margin=-0.1).validate()
    with pytest.raises(ConfigError, match="blur_kernel"):
        AnonymizerSection(method="face_blur", blur_kernel=4).validate()
    AnonymizerSection(method="blur", face_margin=-1.0).validate()  # face keys mean nothing to person boxes


def test_grow_boxes_by_hand():
    grown = grow_boxes(np.array([[10, 20, 30, 30]]), 0.25, 40, 36)
    # width 20, height 10: 5 px left/right, 2.5 px up/down (outer pixels), clipped to the 36 px width.
    assert grown.tolist() == [[5, 17, 35, 33]] and grown.dtype == np.int32
    assert grow_boxes(np.array([[0, 0, 8, 8]]), 1.0, 10, 10).tolist() == [[0, 0, 10, 10]]
    assert grow_boxes(np.zeros((0, 4)), 0.2, 10, 10).shape == (0, 4)


def test_haar_path_loads_and_runs():
    det = HaarFaceDetector(min_side=64)
    boxes = det(np.full((48, 40, 3), 128, np.uint8))
    assert boxes.dtype == np.int32 and boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="RGB uint8"):
        det(np.zeros((48, 40), np.uint8))


def test_haar_finds_a_small_face_only_upscaled_and_maps_its_box_back():
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the astronaut photograph")
    import cv2

    full = data.astronaut()  # 512 x 512, one frontal face
    (fx0, fy0, fx1, fy1), = HaarFaceDetector(min_side=0, margin=0.0)(full)
    small = cv2.resize(full, (96, 96), interpolation=cv2.INTER_AREA)
    # At 96 px the face is about 18 px: below the cascade's 24 px window.
    assert len(HaarFaceDetector(min_side=0)(small)) == 0
    (x0, y0, x1, y1), = HaarFaceDetector(min_side=384, margin=0.0)(small)
    s = 96 / 512
    for got, want in ((x0, fx0 * s), (y0, fy0 * s), (x1, fx1 * s), (y1, fy1 * s)):
        assert abs(got - want) <= 2.0
    fa = build_frame_anonymizer(AnonymizerSection(method="face_blacken", face_min_side=384), runs_root=".")
    out = fa.apply_boxes(_frames(small), [fa.detect(small)])
    anonymized = (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert len(HaarFaceDetector(min_side=384)(anonymized)) == 0


def test_stage2_counts_images_without_a_box(tiny_world, tmp_path):
    """prepare_split asks the (stub) detector once per image and counts the images it gave no box."""
    vispr = VISPR(tiny_world / "VISPR", val_fraction=0.25, val_seed=0)
    items = vispr.items("test")
    means = []
    from privacy_training.data import decode_image

    for item in items:
        means.append(decode_image(item.path).mean())
    threshold = float(np.median(means))
    stub = StubFaces(threshold=threshold)
    fa = build_frame_anonymizer(AnonymizerSection(method="face_blacken"), runs_root=tmp_path, detector=stub)
    split = prepare_split(items, dataset=vispr, fa=fa, resolution=32, crop_scale=1.0, device=torch.device("cpu"), batch=8)
    expected_without = sum(m <= threshold for m in means)
    assert len(stub.calls) == len(items)
    assert split.box_counts.to_dict() == {"images": len(items), "without_box": expected_without,
                                          "boxes": len(items) - expected_without}
    assert 0 < expected_without < len(items)


def test_cli_face_blur_reports_boxes(make_paths, tmp_path, monkeypatch):
    """The shipped config runs (the Haar cascade for real, upscaling off to stay quick) and results.json
    says how many images got no face box."""
    from privacy_training.__main__ import main

    make_paths(tmp_path)
    monkeypatch.setenv("TEDSPAD_PATHS", str(tmp_path / "paths.yaml"))
    config = PROJECT_ROOT / "configs" / "synthetic" / "privacy" / "face_blur.yaml"
    cfg = load_config(PrivacyConfig, config, check_paths=False)
    assert cfg.anonymizer.method == "face_blur" and cfg.anonymizer.face_min_side == 384
    args = ["--config", str(config), "clip.resolution=32", "optim.epochs=1", "optim.batch_size=8", "schedule.warmup_epochs=1",
            "anonymizer.face_min_side=0", "eval.compare_to=null", "leakage.astronaut=false"]
    assert main(args) == 0
    res = json.loads((tmp_path / "runs" / "privacy" / "face_blur" / "results.json").read_text())
    boxes = res["boxes"]
    assert boxes["kind"] == "face" and boxes["source"] == "haar"
    assert boxes["total"]["images"] == 36 and 0 <= boxes["total"]["without_box"] <= 36
    assert sum(boxes[s]["without_box"] for s in ("train", "val", "test")) == boxes["total"]["without_box"]
    assert res["anonymizer"]["detector"] == "haar_frontalface_default"


def test_stage3_detects_faces_in_every_frame_of_a_clip(tmp_path):
    """Feature extraction's box path (BoxLookup + prepare_clip) asks a face method's detector about every
    frame of a clip and edits only its boxes."""
    from aux_code.transforms import ClipEval
    from feature_extraction.pipeline import BoxLookup, prepare_clip

    stub = StubFaces(box=(2, 2, 8, 6))
    fa = build_frame_anonymizer(AnonymizerSection(method="face_blacken"), runs_root=tmp_path, detector=stub)
    clip = np.stack([_image(16, 16, seed=t) for t in range(4)])  # (T, H, W, 3)
    lookup = BoxLookup(fa, adapter=None)
    boxes = lookup.for_clip(lookup.for_video(None, 4), 0, clip, clip_len=4, skip=1)
    assert len(stub.calls) == 4 and [b.tolist() for b in boxes] == [[[2, 2, 8, 6]]] * 4
    out = prepare_clip(torch.from_numpy(clip), transform=ClipEval(16, scale=1.0), anonymizer=fa, boxes=boxes)  # (C, T, H, W)
    assert (out[:, :, 2:6, 2:8] == 0).all()
    assert torch.allclose(out[:, :, 8:, :], torch.from_numpy(clip).permute(3, 0, 1, 2)[:, :, 8:, :].float() / 255.0, atol=1e-6)


def test_cli_stage3_face_blur_runs_the_cascade(tiny_world, tmp_path):
    """The shipped stage-3 config runs on the tiny world (upscaling off to stay quick) and names the cascade."""
    from aux_code.checkpoint import save_checkpoint
    from aux_code.features import read_manifest
    from aux_code.models import build_utility
    from aux_code.models.stored import pack_model
    from feature_extraction.__main__ import main

    runs = tmp_path / "runs"
    torch.manual_seed(0)
    spec = {"name": "i3d_r50_tiny", "num_classes": 4}
    save_checkpoint({"models": {"utility": pack_model("utility", spec, build_utility(**spec))}}, runs / "anonymization/utility/best.pt")
    config = PROJECT_ROOT / "configs" / "synthetic" / "extraction" / "face_blur.yaml"
    args = ["--config", str(config), f"paths.ucf_crime={tiny_world / 'UCF_Crime'}", f"paths.runs={runs}", "clip.resolution=32",
            "extract.batch_size=4", "extract.prefetch=2", "anonymizer.face_min_side=0"]
    assert main(args) == 0
    manifest = read_manifest(runs / "extraction" / "face_blur")
    assert manifest.anonymizer["method"] == "face_blur" and manifest.anonymizer["detector"] == "haar_frontalface_default"
    assert manifest.anonymizer["min_side"] == 0 and len(manifest.videos) == 8
