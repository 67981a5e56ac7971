"""LUSS-AE on anonymized video (issue 17, item 5): the frame path, the stage and the table driver."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly_detection.luss.__main__ import main
from aux_code.anonymizers import AnonymizerSection, Downsample, anonymized_grey_frames, build_frame_anonymizer
from aux_code.synthetic.unsupervised import generate


def _frames(n=5, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _anonymizer(**kw):
    return build_frame_anonymizer(AnonymizerSection(**kw), runs_root=".")


def test_raw_is_luma_at_size():
    frames = _frames()
    out = list(anonymized_grey_frames(frames, _anonymizer(method="raw"), (24, 32)))
    luma = [np.round(f.astype(np.float64) / 255 @ np.array([0.299, 0.587, 0.114]) * 255) / 127.5 - 1 for f in frames]
    assert len(out) == 5 and out[0].shape == (24, 32) and out[0].dtype == np.float32
    np.testing.assert_allclose(np.stack(out), np.stack(luma), atol=1 / 127.5 + 1e-6)


def test_model_runs_at_the_target_size_and_streams_in_chunks():
    frames = _frames(n=7)
    ds = _anonymizer(method="downsample", factor=4)
    out = np.stack(list(anonymized_grey_frames(frames, ds, (24, 32), chunk=3)))
    assert np.array_equal(out, np.stack(list(anonymized_grey_frames(frames, ds, (24, 32), chunk=32))))
    # the down/up sampler's output is what became grey: re-applying it changes little, raw frames much
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    low = Downsample(4)(x)
    grey = (low * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1).mul(255).round().div(127.5).sub(1)
    np.testing.assert_allclose(out, grey.numpy(), atol=1e-5)
    half = list(anonymized_grey_frames(frames, ds, (12, 16)))
    assert half[0].shape == (12, 16)


def test_box_method_edits_only_inside_the_boxes_and_needs_them():
    frames = _frames(n=4)
    blur = _anonymizer(method="blur", blur_kernel=5, blur_sigma=2.0)
    boxes = [np.array([[4, 4, 20, 16]])] * 4
    raw = np.stack(list(anonymized_grey_frames(frames, _anonymizer(method="raw"), (24, 32))))
    out = np.stack(list(anonymized_grey_frames(frames, blur, (24, 32), boxes=boxes)))
    changed = (out != raw).any(0)
    assert changed[4:16, 4:20].mean() > 0.9 and not changed[:, 21:].any() and not changed[17:, :].any()
    with pytest.raises(ValueError, match="needs person boxes for frames 0-3; got 0 box lists"):
        list(anonymized_grey_frames(frames, blur, (24, 32)))
    with pytest.raises(ValueError, match=r"expected RGB frames \(h, w, 3\)"):
        list(anonymized_grey_frames([f[..., 0] for f in frames], blur, (24, 32), boxes=boxes))


@pytest.fixture(scope="module")
def sh_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("luss_anon")
    generate(out / "data", seed=2, size="tiny", datasets=("shanghaitech_unsupervised",))
    return out


def _args(world, name, *extra):
    return ["--config", "configs/synthetic/luss/shanghaitech_unsupervised.yaml",
            f"paths.shanghaitech_unsupervised={world / 'data' / 'ShanghaiTech_unsupervised'}",
            f"paths.runs={world / 'runs'}", f"paths.results={world / 'results'}", "optim.epochs=1",
            "optim.steps_per_epoch=2", "clip.frame_size=[16,32]", "eval.validation_windows=8", "eval.plot_videos=0",
            f"run.name={name}", *extra]


def test_stage_trains_and_scores_on_anonymized_frames(sh_world, capsys):
    assert main(_args(sh_world, "raw")) == 0
    assert main(_args(sh_world, "ds4", "anonymizer.method=downsample", "anonymizer.factor=4")) == 0
    assert main(_args(sh_world, "blur", "anonymizer.method=blur", "anonymizer.boxes=gt")) == 0
    runs = sh_world / "runs" / "luss"
    results = {n: json.loads((runs / n / "results.json").read_text()) for n in ("raw", "ds4", "blur")}
    assert results["raw"]["anonymizer"] == {"method": "raw"}
    assert results["ds4"]["anonymizer"]["method"] == "downsample" and results["blur"]["anonymizer"]["method"] == "blur"
    scores = {n: np.load(runs / n / "test_scores.npz") for n in results}
    key = next(k for k in scores["raw"].files if k.endswith("/vcr_mse"))
    assert not np.allclose(scores["raw"][key], scores["ds4"][key])  # the model saw other frames
    # blur with ground-truth boxes on a world without them: one message naming the file, exit 2
    (sh_world / "data" / "ShanghaiTech_unsupervised" / "person_boxes.json").rename(sh_world / "boxes.json")
    try:
        assert main(_args(sh_world, "blur2", "anonymizer.method=blur")) == 2
        assert "person_boxes.json does not exist" in capsys.readouterr().err
    finally:
        (sh_world / "boxes.json").rename(sh_world / "data" / "ShanghaiTech_unsupervised" / "person_boxes.json")


def test_driver_table_from_a_reproduce_summary(sh_world, tmp_path):
    from scripts.luss_anonymized import anonymizer_overrides
    from scripts.luss_anonymized import main as driver

    ci = {"estimate": 0.6, "low": 0.58, "high": 0.62}
    steps = {
        "extraction/ucf_crime-raw": {"command": "python -m feature_extraction --config c.yaml run.name=ucf_crime-raw anonymizer.method=raw"},
        "extraction/ucf_crime-downsample4x": {"command": "python -m feature_extraction run.name=x anonymizer.method=downsample anonymizer.factor=4 utility.checkpoint=u.pt"},
        "extraction/ucf_crime-downsample4x_b": {"command": "python -m feature_extraction anonymizer.method=blur"},
    }
    points = {m: {"label": m.upper(), "cmap_ci": ci, "worst_case": {"attacker": "other_arch", "cmap_ci": ci},
                  "anomaly_ci": ci} for m in ("raw", "downsample4x")}
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"steps": steps, "points": points}))
    loaded = json.loads(summary.read_text())
    assert anonymizer_overrides(loaded, "downsample4x") == ["anonymizer.method=downsample", "anonymizer.factor=4"]
    with pytest.raises(SystemExit, match="one extraction step of method 'blur'"):
        anonymizer_overrides(loaded, "blur")
    extra = [a for a in _args(sh_world, "unused")[2:] if not a.startswith("run.name")]
    assert driver(["--summary", str(summary), "--seeds", "0", "1", "--methods", "downsample4x", *extra]) == 0
    from scripts.luss_table1 import overrides_tag

    tag = overrides_tag(extra)
    assert tag and tag == overrides_tag(list(reversed(extra)))  # the order of overrides does not matter
    assert overrides_tag([a for a in extra if a.startswith("paths.")]) == ""  # paths do not change numbers
    assert overrides_tag(extra + ["optim.epochs=2"]) != tag
    out = json.loads((sh_world / "results" / "luss" / f"anonymized_shanghaitech_unsupervised{tag}.json").read_text())
    assert list(out["methods"]) == ["raw", "downsample4x"]  # raw is added: the paired change needs it
    ds = out["methods"]["downsample4x"]
    assert len(ds["luss_micro_auc"]) == 2 and ds["anonymizer"] == ["anonymizer.method=downsample", "anonymizer.factor=4"]
    raw = out["methods"]["raw"]["luss_micro_auc"]
    assert ds["change_vs_raw"][0] == pytest.approx(np.mean(ds["luss_micro_auc"]) - np.mean(raw))
    run = json.loads((sh_world / "runs" / "luss" / f"anon_shanghaitech_unsupervised_downsample4x_s1{tag}" / "results.json").read_text())
    assert run["anonymizer"]["method"] == "downsample" and run["anonymizer"]["factor"] == 4
    md = (sh_world / "results" / "luss" / f"anonymized_shanghaitech_unsupervised{tag}.md").read_text()
    assert "| DOWNSAMPLE4X | 60.00 [58.00, 62.00] | 60.00 [58.00, 62.00] (other_arch) |" in md
