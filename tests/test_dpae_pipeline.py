"""The DP autoencoder through the pipeline on the tiny world (issue 16): its stage CLI, the ``dpae``
anonymizer in stages 2 and 3, and the remote split (camera encode, server score)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymization_training.dpae.__main__ import main as dpae_main
from aux_code.anonymizers import AnonymizerSection, build_frame_anonymizer
from aux_code.checkpoint import CheckpointError, save_checkpoint
from aux_code.config import PROJECT_ROOT
from aux_code.dp import epsilon_for
from aux_code.latent_codes import (
    decode_codes,
    encoder_digest,
    frames_to_tensor,
    load_half,
    load_pair,
    read_header,
)
from aux_code.models import build_utility
from aux_code.models.mgfn import build_mgfn
from aux_code.models.stored import load_stored_model, pack_model
from aux_code.video import iter_frames

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")]

CONFIGS = PROJECT_ROOT / "configs" / "synthetic"
# Tiny and quick: 10 frames of each chosen training video (3 classes in the tiny world: 30 frames,
# 22 / 4 / 4 after the split), 2 epochs of 3 Poisson batches of expected size 8.
FAST = ["optim.epochs=2", "optim.batch_size=8", "data.max_frames_per_video=10", "eval.batch_size=64"]


def _dpae(*args: str) -> int:
    """The stage's exit status (a config error exits through argparse: SystemExit)."""
    try:
        return dpae_main(["--config", str(CONFIGS / "dpae" / args[0]), *FAST, *args[1:]])
    except SystemExit as e:
        return int(e.code)


def _results(root: Path, stage: str, name: str, file: str = "results.json") -> dict:
    return json.loads((root / "runs" / stage / name / file).read_text())


@pytest.fixture(scope="module")
def root(make_paths, tmp_path_factory):
    """A paths file on the tiny world, two DP-AE runs (DP-Adagrad at noise 1.0, No-DP Adam), a fresh
    tiny fT where stage 1 would leave it, and a fresh tiny MGFN where stage 4 would leave it."""
    root = tmp_path_factory.mktemp("dpae")
    paths = make_paths(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEDSPAD_PATHS", str(paths))
        torch.set_num_threads(1)
        assert _dpae("dp_adagrad.yaml") == 0
        assert _dpae("no_dp_adam.yaml") == 0
    torch.manual_seed(0)
    spec = {"name": "i3d_r50_tiny", "num_classes": 4}
    save_checkpoint({"models": {"utility": pack_model("utility", spec, build_utility(**spec))}},
                    root / "runs" / "anonymization" / "utility" / "best.pt")
    mspec = {"preset": "tiny", "feature_dim": 256}
    save_checkpoint({"models": {"mgfn": pack_model("mgfn", mspec, build_mgfn(**mspec))}},
                    root / "runs" / "anomaly" / "dpae_dp_adagrad" / "best.pt")
    return root


@pytest.fixture()
def env(root, monkeypatch):
    monkeypatch.setenv("TEDSPAD_PATHS", str(root / "paths.yaml"))
    return root


# ------------------------------------------------------------------------------------ the stage


def test_stage_reports_epsilon_metrics_and_writes_separate_halves(root) -> None:
    r = _results(root, "dpae", "dp_adagrad")
    p = r["privacy"]
    assert (r["frames"]["train"], r["frames"]["val"], r["frames"]["test"]) == (22, 4, 4)
    assert p["private"] and p["optimizer"] == "dp-adagrad" and p["noise_multiplier"] == 1.0 and p["delta"] == 1e-5
    assert p["sample_rate"] == pytest.approx(1 / 3) and p["steps"] == 6
    assert p["epsilon"] == pytest.approx(epsilon_for(noise_multiplier=1.0, sample_rate=1 / 3, steps=6, delta=1e-5))
    assert set(r["test"]) == {"mse", "ssim", "psnr"} and 0 < r["test"]["mse"] < 0.2 and -1 < r["test"]["ssim"] < 1
    assert r["selection"]["metric"] == "val_mse" and r["data"]["frame_size"] == [32, 32]
    assert r["timing"]["steps_timed"] == 6 and r["timing"]["step_mean_s"] > 0
    nodp = _results(root, "dpae", "no_dp_adam")["privacy"]
    assert not nodp["private"] and nodp["epsilon"] is None and nodp["optimizer"] == "adam"

    run = root / "runs" / "dpae" / "dp_adagrad"
    enc, enc_info = load_half(run / "encoder.pt", "encoder")
    dec, dec_info = load_half(run / "decoder.pt", "decoder")
    # The camera's file holds no decoder, the server's no encoder.
    with pytest.raises(CheckpointError, match="holds no model 'decoder'; it holds: encoder"):
        load_stored_model(run / "encoder.pt", "decoder")
    with pytest.raises(CheckpointError, match="holds no model 'encoder'; it holds: decoder"):
        load_stored_model(run / "decoder.pt", "encoder")
    with pytest.raises(CheckpointError, match="holds the DP-AE decoder, not the encoder"):
        load_half(run / "decoder.pt", "encoder")
    assert enc_info.encoder_digest == dec_info.encoder_digest == encoder_digest(enc)
    assert enc_info.frame_size == (32, 32) and enc_info.crop_scale == 0.8 and dec_info.privacy["epsilon"] == p["epsilon"]
    # The halves are the selected epoch's models (best.pt).
    best_enc, _ = load_stored_model(run / "best.pt", "encoder")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), best_enc(x), rtol=0, atol=0)


def test_bad_dp_input_stops_before_any_work(env, capsys) -> None:
    cases = [
        (["dp.noise_multiplier=0", "run.name=bad0"], r"dp.noise_multiplier = 0.0 must be > 0"),
        (["dp.noise_multiplier=-0.5", "run.name=bad1"], r"dp.noise_multiplier = -0.5 must be > 0"),
        (["dp.target_epsilon=1e-6", "run.name=bad2"], r"target_epsilon 1e-06 at delta 1e-05 cannot be reached"),
        (["data.classes=[Nope]", "run.name=bad3"], r"data.classes names \['Nope'\].*it has: "),
        (["data.frame_size=[30,40]", "run.name=bad4"], r"data.frame_size = \[30, 40\] must be .* multiples of 8"),
    ]
    for args, message in cases:
        assert _dpae("dp_adam.yaml", *args) == 2, args
        err = capsys.readouterr().err
        assert re.search(message, err), (args, err)
        assert not (env / "runs" / "dpae" / args[-1].split("=")[1]).exists(), args


# ------------------------------------------------------------------------------------ anonymizer


def test_anonymizer_is_the_round_trip_and_refuses_a_foreign_pair(root) -> None:
    section = AnonymizerSection(method="dpae", encoder="dpae/dp_adagrad/encoder.pt", decoder="dpae/dp_adagrad/decoder.pt")
    fa = build_frame_anonymizer(section, runs_root=root / "runs")
    d = fa.describe()
    assert d["method"] == "dpae" and d["privacy"]["optimizer"] == "dp-adagrad" and d["frame_size"] == [32, 32]
    run = root / "runs" / "dpae" / "dp_adagrad"
    enc, _ = load_half(run / "encoder.pt", "encoder")
    dec, _ = load_half(run / "decoder.pt", "decoder")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = dec(enc(x).half().float())
        torch.testing.assert_close(fa.model(x), expected, rtol=0, atol=0)
        assert float((fa.model(x) - dec(enc(x))).abs().max()) < 1e-2  # float16 on the wire, not far off
    mixed = AnonymizerSection(method="dpae", encoder="dpae/dp_adagrad/encoder.pt", decoder="dpae/no_dp_adam/decoder.pt")
    with pytest.raises(CheckpointError, match=r"no_dp_adam/decoder.pt decodes codes of encoder .* but .*dp_adagrad/encoder.pt "
                                              r"is encoder .*different trainings"):
        build_frame_anonymizer(mixed, runs_root=root / "runs")
    with pytest.raises(Exception, match="needs anonymizer.encoder and anonymizer.decoder"):
        build_frame_anonymizer(AnonymizerSection(method="dpae", encoder="x.pt"), runs_root=root / "runs")


def test_privacy_stage_runs_the_dpae(env) -> None:
    from privacy_training.__main__ import main

    fast = ["clip.resolution=32", "optim.epochs=1", "optim.batch_size=8", "data.anonymize_batch=16",
            "schedule.warmup_epochs=0", "eval.compare_to=null", "leakage.astronaut=false"]
    assert main(["--config", str(CONFIGS / "privacy" / "dpae_dp_adagrad.yaml"), *fast]) == 0
    r = _results(env, "privacy", "dpae_dp_adagrad")
    assert r["anonymizer"]["method"] == "dpae" and r["anonymizer"]["privacy"]["epsilon"] > 0
    sim = r["leakage"]["similarity"]
    # The reconstruction is not the original (a 4x4x16 code of a 32x32 frame), and the numbers say so.
    assert 0 < sim["mse"] and sim["ssim"] < 0.99
    assert set(r["leakage"]["faces"]) >= {"before", "after"}


# ------------------------------------------------------------------------------------ remote split


def test_remote_encode_then_score_reproduces_stage_3_features(env) -> None:
    from feature_extraction.__main__ import main as extract_main
    from remote.encode.__main__ import main as encode_main
    from remote.score.__main__ import main as score_main
    from remote.server import clip_features

    camera = ["encoder=dpae/dp_adagrad/encoder.pt", "data.max_videos=null", "report.compare_frames=16", "run.name=cam"]
    assert encode_main(["--config", str(CONFIGS / "camera" / "default.yaml"), *camera]) == 0
    cam = _results(env, "camera", "cam", "camera.json")
    assert len(cam["videos"]) == 4 and cam["frame_size"] == [32, 32]
    for v in cam["videos"]:
        b = v["bytes_per_frame"]
        assert b["code"] == 16 * 4 * 4 * 2 and b["raw_rgb"] == 32 * 32 * 3 and b["jpeg"] > 0 and b["h264"] > 0
        assert v["frames"] == read_header(env / "runs" / "camera" / "cam" / v["code_file"]).frames

    # Encode then decode: the video's frames come back within the model's own reconstruction error.
    first = cam["videos"][0]
    frames = np.stack(list(iter_frames(first["video"])))
    x = frames_to_tensor(frames, size=(32, 32), crop_scale=0.8)
    run = env / "runs" / "dpae" / "dp_adagrad"
    rt, _ = load_pair(run / "encoder.pt", run / "decoder.pt")
    dec, dec_info = load_half(run / "decoder.pt", "decoder")
    decoded = decode_codes(env / "runs" / "camera" / "cam" / first["code_file"], dec,
                           expected_encoder_digest=dec_info.encoder_digest, frame_size=(32, 32))
    with torch.no_grad():
        own = rt(x)
    torch.testing.assert_close(decoded, own, rtol=0, atol=1e-6)
    assert float(((decoded - x) ** 2).mean()) == pytest.approx(float(((own - x) ** 2).mean()), rel=1e-6)

    # Stage 3 with the dpae anonymizer gives the server's features of the same videos.
    fast = ["clip.resolution=32", "extract.batch_size=4", "extract.prefetch=2", "data.splits=[test]"]
    assert extract_main(["--config", str(CONFIGS / "extraction" / "dpae_dp_adagrad.yaml"), *fast]) == 0
    utility, _ = load_stored_model(env / "runs" / "anonymization" / "utility" / "best.pt", "utility")
    for v in cam["videos"]:
        stage3 = np.load(env / "runs" / "extraction" / "dpae_dp_adagrad" / f"{v['item']}.npy")
        frames = decode_codes(env / "runs" / "camera" / "cam" / v["code_file"], dec)
        server = clip_features(frames, utility, clip_len=8, skip=2, resolution=32, crop_scale=1.0)
        assert server.shape == stage3.shape
        np.testing.assert_allclose(server, stage3, rtol=1e-4, atol=1e-5)

    server = ["codes=camera/cam", "decoder=dpae/dp_adagrad/decoder.pt", "detector.checkpoint=anomaly/dpae_dp_adagrad/best.pt",
              "run.name=srv"]
    assert score_main(["--config", str(CONFIGS / "server" / "default.yaml"), *server]) == 0
    s = _results(env, "server", "srv", "score.json")
    assert len(s["videos"]) == 4 and "video_level_f1" in s and s["privacy"]["optimizer"] == "dp-adagrad"
    for v in s["videos"]:
        assert len(v["clip_scores"]) == len(v["sas"]) == v["clips"] == v["frames"] // 16
        assert (env / "runs" / "server" / "srv" / v["plot"]).is_file() and v["label"] in (0, 1)
    # eval.plot_videos=1: one plot, of an anomalous video.
    assert score_main(["--config", str(CONFIGS / "server" / "default.yaml"), *server[:-1], "run.name=srv1", "eval.plot_videos=1"]) == 0
    plotted = [v for v in _results(env, "server", "srv1", "score.json")["videos"] if "plot" in v]
    assert len(plotted) == 1 and plotted[0]["label"] == 1


def test_server_refuses_codes_of_another_encoder_before_decoding(env, capsys) -> None:
    from remote.encode.__main__ import main as encode_main
    from remote.score.__main__ import main as score_main

    assert encode_main(["--config", str(CONFIGS / "camera" / "default.yaml"), "encoder=dpae/no_dp_adam/encoder.pt",
                        "data.max_videos=1", "report.compare_frames=4", "run.name=cam_other"]) == 0
    server = ["codes=camera/cam_other", "decoder=dpae/dp_adagrad/decoder.pt", "detector.checkpoint=anomaly/dpae_dp_adagrad/best.pt",
              "run.name=srv_other"]
    assert score_main(["--config", str(CONFIGS / "server" / "default.yaml"), *server]) == 2
    err = capsys.readouterr().err
    assert ".dpae: was written by encoder" in err and "this decoder is paired with encoder" in err
    assert not (env / "runs" / "server" / "srv_other").exists()  # refused before any output
