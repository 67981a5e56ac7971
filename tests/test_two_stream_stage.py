"""The two-stream detector stage of the DP-AE paper (issue 16): UCFCrime2Local-style annotations,
the hard / soft loss, hard mining inside the task's step, the CLI on the tiny world (results,
resume, the dpae anonymizer) and the Table 1 / Fig. 10 driver."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aux_code.config import PROJECT_ROOT
from aux_code.datasets import DatasetError
from aux_code.datasets.ucf_crime2local import HARD, NORMAL, SOFT, UCFCrime2Local, parse_vatic
from aux_code.fit import Stepper
from aux_code.metrics import frame_auc
from aux_code.precision import Precision
from aux_code.synthetic.frame_annotations import SOFT_MARGIN_FRAMES, write_frame_annotations
from two_stream_detection.__main__ import main as stage_main
from two_stream_detection.data import FrameSet
from two_stream_detection.task import TwoStreamTask, TwoStreamTaskConfig, frame_loss, frame_targets

CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "two_stream" / "default.yaml"
# The tiny world has 2 + 2 training videos: half of each label is held out for validation.
FAST = ["optim.epochs=2", "data.validation_fraction=0.5", "eval.resamples=200", "model.hidden=32"]


def _meta(world: Path) -> dict:
    return json.loads((world / "UCF_Crime" / "synthetic_meta.json").read_text())["videos"]


# ------------------------------------------------------------------------------------ annotations


def test_adapter_reads_the_generators_hard_and_soft_frames(tiny_world, tmp_path) -> None:
    root = tiny_world / "UCF_Crime"
    ann = UCFCrime2Local(root)
    meta = _meta(tiny_world)
    abnormal_train = sorted(n for n, v in meta.items() if v["split"] == "train" and v["label"])
    assert ann.names() == abnormal_train and abnormal_train
    for name in abnormal_train:
        n = meta[name]["num_frames"]
        kinds = ann.kinds(name, n)
        hard = np.zeros(n, bool)
        near = np.zeros(n, bool)
        for _, start, end in meta[name]["events"]:
            hard[start:end] = True
            near[max(0, start - SOFT_MARGIN_FRAMES):min(n, end + SOFT_MARGIN_FRAMES)] = True
        assert np.array_equal(kinds == HARD, hard), name
        assert np.array_equal(kinds == SOFT, near & ~hard), name
        assert (kinds == SOFT).sum() > 0 and (kinds == NORMAL).sum() > 0
    # The files come from synthetic_meta.json and boxes/ alone: an existing world gets the same bytes.
    copy = Path(shutil.copytree(root, tmp_path / "UCF_Crime"))
    shutil.rmtree(copy / "UCFCrime2Local")
    written = write_frame_annotations(copy)
    assert [p.name for p in written] == [f"{n}.txt" for n in abnormal_train]
    for p in written:
        assert p.read_bytes() == ann.path(p.stem).read_bytes()
    # Only abnormal training videos: the test split keeps its own (temporal) annotation only.
    assert not any(meta[p.stem]["split"] == "test" for p in written)


@pytest.mark.parametrize("line, message", [
    ('0 1 2 3 4 5 0 0 "Person"', "has 9 fields, expected 10"),
    ('0 1 2 3 x 5 0 0 0 "Person"', "are not all integers"),
    ('0 1 2 3 4 5 2 0 0 "Person"', "lost=2 must be 0 or 1"),
    ('0 5 2 3 4 5 0 0 0 "Person"', "xmax < xmin"),
    ('0 1 2 3 4 5 0 0 0 "Person', "malformed"),
])
def test_adapter_refuses_a_malformed_line_naming_file_and_line(tmp_path, line, message) -> None:
    folder = tmp_path / "UCFCrime2Local" / "Txt annotations"
    folder.mkdir(parents=True)
    path = folder / "Fighting001_x264.txt"
    path.write_text('0 1 2 3 4 0 0 0 0 "Person"\n\n' + line + "\n")
    with pytest.raises(DatasetError, match=rf"{path}:3: .*{message}"):
        parse_vatic(path)
    with pytest.raises(DatasetError, match=rf"{path}:3"):
        UCFCrime2Local(tmp_path).kinds("Fighting001_x264", 10)


def test_adapter_refuses_frames_past_the_video_and_videos_without_a_hard_frame(tmp_path) -> None:
    folder = tmp_path / "UCFCrime2Local" / "Txt annotations"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text('0 1 2 3 4 12 0 0 0 "Person"\n')
    (folder / "b.txt").write_text('0 1 2 3 4 2 1 0 0 "Person"\n')
    ann = UCFCrime2Local(tmp_path)
    with pytest.raises(DatasetError, match=r"a\.txt: frame 12 is past the video's last frame 9"):
        ann.kinds("a", 10)
    assert ann.kinds("a", 13)[12] == HARD
    with pytest.raises(DatasetError, match=r"b\.txt: no frame with a box in view"):
        ann.kinds("b", 10)
    with pytest.raises(DatasetError, match="has no annotation"):
        ann.kinds("c", 10)
    with pytest.raises(DatasetError, match="annotation folder .* does not exist"):
        UCFCrime2Local(tmp_path / "nowhere")


def test_stage_stops_on_a_broken_annotation_naming_it(tiny_world_copy, make_paths, tmp_path, monkeypatch, capsys) -> None:
    folder = tiny_world_copy / "UCF_Crime" / "UCFCrime2Local" / "Txt annotations"
    victim = sorted(folder.glob("*.txt"))[0]
    lines = victim.read_text().splitlines()
    lines[1] = lines[1].replace('"Person"', "")
    victim.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(make_paths(tmp_path)))
    rc = stage_main(["--config", str(CONFIG), *FAST, f"paths.ucf_crime={tiny_world_copy / 'UCF_Crime'}", "run.name=broken"])
    assert rc == 2
    assert f"{victim}:2:" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "two_stream" / "broken").exists()  # stopped before any work


# ------------------------------------------------------------------------------------ the loss


def test_soft_frames_are_never_positives_in_the_loss() -> None:
    kind = torch.tensor([NORMAL, SOFT, HARD, SOFT])
    logits = torch.tensor([0.3, 2.0, -1.0, -0.5], requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    soft = TwoStreamTaskConfig(soft_frames="soft", soft_target=0.25, normal_weight=1.0, anomaly_weight=2.0)
    loss = frame_loss(logits, kind, soft)
    expected = torch.stack([bce(logits[0], torch.tensor(0.0)), bce(logits[1], torch.tensor(0.25)),
                            2.0 * bce(logits[2], torch.tensor(1.0)), bce(logits[3], torch.tensor(0.25))])
    assert torch.allclose(loss, expected)
    loss.sum().backward()
    assert logits.grad[1] > 0  # a confident soft frame is pushed down, never up toward 1
    targets, kept = frame_targets(kind, soft_frames="soft", soft_target=0.25)
    assert targets.tolist() == [0.0, 0.25, 1.0, 0.25] and kept.all()

    excluded = frame_loss(logits, kind, TwoStreamTaskConfig(soft_frames="exclude"))
    assert excluded[1] == 0 and excluded[3] == 0 and excluded[0] > 0 and excluded[2] > 0
    assert torch.allclose(excluded[[0, 2]], expected[[0, 2]])
    # The opposite reading is a different loss: soft frames as weighted positives.
    positive = frame_loss(logits, kind, TwoStreamTaskConfig(soft_frames="positive"))
    assert torch.allclose(positive[1], 2.0 * bce(logits[1], torch.tensor(1.0)))


def _frame_set(n: int, *, size: int = 8, bag: int = 3, seed: int = 0, kinds=None) -> FrameSet:
    rng = np.random.default_rng(seed)
    kind = np.asarray(kinds if kinds is not None else rng.choice([NORMAL, SOFT, HARD], size=n), np.int8)
    return FrameSet(rgb=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                    flow=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                    bag=rng.integers(0, 3, (n, bag)).astype(np.float32), kind=kind,
                    video=np.zeros(n, np.int64), frame=np.arange(n), names=["v"], labels=[int((kind == HARD).any())],
                    num_frames=[n], frame_labels=[(kind == HARD).astype(np.int8)])


def _task(train: FrameSet, **cfg) -> TwoStreamTask:
    tcfg = TwoStreamTaskConfig(**{"batch_size": 4, "alpha": 3, "mining": True, "seed": 0, **cfg})
    spec = {"backbone": "tiny", "streams": 2, "bag_dim": 3, "hidden": 16, "dropout": 0.0}
    return TwoStreamTask(tcfg, spec, train, _frame_set(6, seed=1, kinds=[0, 2, 2, 0, 0, 2]))


def test_exclude_mode_leaves_soft_frames_out_of_the_pool() -> None:
    train = _frame_set(30, seed=3)
    task = _task(train, soft_frames="exclude")
    assert set(task.pool.tolist()) == set(np.flatnonzero(train.kind != SOFT).tolist())
    drawn = torch.cat(task.batches(0))
    assert not (task.train_t.kind[drawn] == SOFT).any()
    assert _task(train, soft_frames="soft").pool.numel() == 30


# ------------------------------------------------------------------------------------ hard mining


def test_hard_mining_trains_on_exactly_the_k_highest_loss_candidates() -> None:
    train = _frame_set(24, seed=2)
    task = _task(train)
    stepper = Stepper(Precision("fp32", torch.device("cpu")), stage="test")
    batches = task.batches(0)
    assert [b.numel() for b in batches] == [12, 12]  # alpha * K candidates, without replacement
    assert len(set(torch.cat(batches).tolist())) == 24
    candidates = batches[0]
    # What the current model gets most wrong, scored as the step scores it (eval mode).
    task.model.eval()
    with torch.no_grad():
        losses = frame_loss(task.model(*task._inputs(task.train_t, candidates)), task.train_t.kind[candidates], task.cfg)
    expected = candidates[torch.topk(losses, 4).indices]
    assert len(set(losses.tolist())) == 12  # distinct losses: the top 4 is one set
    seen: list[torch.Tensor] = []
    trunk = task.model.rgb  # its first conv sees the normalised frames of every forward
    hook = trunk.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    before = [p.detach().clone() for p in task.model.parameters()]
    try:
        terms = task.train_step(candidates, stepper)
    finally:
        hook.remove()
    assert set(task.last_trained.tolist()) == set(expected.tolist())
    assert len(seen) == 1 and seen[0].shape[0] == 4  # one training forward, on K frames
    trained_rgb = task.train_t.rgb[task.last_trained].float() / 255.0
    assert torch.allclose(seen[0], (trained_rgb - trunk.mean) / trunk.std)
    assert np.isfinite(terms["loss"]) and any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters()))
    # Without mining every candidate batch is K frames, trained on as drawn.
    plain = _task(train, mining=False)
    b = plain.batches(0)
    assert all(x.numel() == 4 for x in b) and len(b) == 6
    plain.train_step(b[0], stepper)
    assert torch.equal(plain.last_trained, b[0])


# ------------------------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def stage_root(make_paths, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_stream")
    make_paths(root)
    return root


@pytest.fixture()
def env(stage_root, monkeypatch) -> Path:
    monkeypatch.setenv("TEDSPAD_PATHS", str(stage_root / "paths.yaml"))
    torch.set_num_threads(1)
    return stage_root


def test_cli_run_writes_results_and_a_rerun_resumes_to_the_same_result(env, tiny_world, capsys, monkeypatch) -> None:
    args = ["--config", str(CONFIG), *FAST, "run.name=tiny"]
    assert stage_main(args) == 0
    run = env / "runs" / "two_stream" / "tiny"
    r = json.loads((run / "results.json").read_text())
    t = r["test"]
    assert 0.0 <= t["fl_auc"] <= 1.0 and 0.0 <= t["vl_f1"] <= 1.0
    assert t["fl_auc_ci"]["low"] <= t["fl_auc"] <= t["fl_auc_ci"]["high"]
    assert r["task"] == "two_stream" and r["selection"]["metric"] == "val_fl_auc" and r["epochs"] == 2
    meta = _meta(tiny_world)
    # Validation videos come from the training split, never the test set.
    assert set(r["data"]["val_videos"]) <= {n for n, v in meta.items() if v["split"] == "train"}
    assert set(r["data"]["val_videos"]).isdisjoint(r["data"]["train_videos"])
    assert r["data"]["train_frames"]["soft"] > 0 and r["data"]["train_frames"]["hard"] > 0
    with np.load(r["test_scores"], allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        assert sorted(names) == sorted(n for n, v in meta.items() if v["split"] == "test")
        o = z["frame_offsets"]
        assert [int(o[i + 1] - o[i]) for i in range(len(names))] == [meta[n]["num_frames"] for n in names]
        assert frame_auc(z["frame_labels"], z["frame_scores"]) == pytest.approx(t["fl_auc"])
        assert z["frame_labels"].sum() == sum(e[2] - e[1] for n in names for e in meta[n]["events"])
    entries = sorted((run / "cache").glob("*.npz"))  # frames and flow cached in the run's folder
    assert len(entries) == len(meta) - len([n for n, v in meta.items() if v["split"] == "train"]) + 4
    with np.load(entries[0]) as z:
        assert z["flow"].shape == z["rgb"].shape and np.abs(z["flow"][..., :2].astype(int) - 128).max() > 0
        assert z["bag"].shape == (len(z["rgb"]), 80) and z["bag"][:, 0].sum() > 0 and z["bag"][:, 1:].sum() == 0
    capsys.readouterr()

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again: the cache should have served it")

    monkeypatch.setattr("two_stream_detection.data._decode", no_decoding)
    assert stage_main(args) == 0
    assert "resuming" in capsys.readouterr().out
    again = json.loads((run / "results.json").read_text())
    assert again["test"] == t and again["selection"] == r["selection"]


def _tiny_pair(directory: Path, frame_size=(32, 32)) -> None:
    from aux_code.latent_codes import encoder_digest, save_half
    from aux_code.models.registry import build_dpae_decoder, build_dpae_encoder

    torch.manual_seed(0)
    spec = {"name": "dpae_tiny"}
    enc, dec = build_dpae_encoder(**spec), build_dpae_decoder(**spec)
    privacy = {"private": True, "optimizer": "dp-adagrad", "epsilon": 3.5}
    for half, module in (("encoder", enc), ("decoder", dec)):
        save_half(directory / f"{half}.pt", half, module, spec, frame_size=frame_size, crop_scale=1.0,
                  encoder_digest=encoder_digest(enc), privacy=privacy)
    (directory / "results.json").write_text(json.dumps({"privacy": privacy}))


@pytest.fixture(scope="module")
def dpae_run(stage_root) -> str:
    directory = stage_root / "runs" / "dpae" / "tiny_pair"
    directory.mkdir(parents=True)
    _tiny_pair(directory)
    other = stage_root / "runs" / "dpae" / "pair_48"
    other.mkdir(parents=True)
    _tiny_pair(other, frame_size=(48, 48))
    return "dpae/tiny_pair"


def test_dpae_anonymizer_feeds_reconstructed_frames(env, dpae_run, tiny_world, capsys) -> None:
    from aux_code.latent_codes import frames_to_tensor, load_pair
    from aux_code.video import iter_frames

    pair = [f"anonymizer.encoder={dpae_run}/encoder.pt", f"anonymizer.decoder={dpae_run}/decoder.pt"]
    args = ["--config", str(CONFIG), *FAST, "optim.epochs=1", "anonymizer.method=dpae", *pair, "run.name=dpae"]
    assert stage_main(args) == 0
    run = env / "runs" / "two_stream" / "dpae"
    r = json.loads((run / "results.json").read_text())
    assert r["data"]["anonymizer"]["method"] == "dpae" and r["data"]["anonymizer"]["privacy"]["epsilon"] == 3.5
    # A test video's cached frames are the round trip of its frames, cut to 32x32.
    name = sorted(n for n, v in _meta(tiny_world).items() if v["split"] == "test")[0]
    entry = next((run / "cache").glob(f"{name}-*.npz"))
    model, _ = load_pair(env / "runs" / dpae_run / "encoder.pt", env / "runs" / dpae_run / "decoder.pt")
    video = next((tiny_world / "UCF_Crime" / "Videos").rglob(f"{name}.mp4"))
    frames = np.stack(list(iter_frames(video)))[::2]
    with torch.no_grad():
        recon = model(frames_to_tensor(frames, size=(32, 32))).clamp(0, 1)
    expected = (recon * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with np.load(entry) as z:
        assert z["rgb"].shape == expected.shape
        assert np.abs(z["rgb"].astype(int) - expected.astype(int)).max() <= 1
        raw = (frames_to_tensor(frames, size=(32, 32)) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.abs(z["rgb"].astype(int) - raw.astype(int)).mean() > 5  # not the raw frames
    # A pair trained at another frame size is refused before any work.
    capsys.readouterr()
    bad = ["anonymizer.encoder=dpae/pair_48/encoder.pt", "anonymizer.decoder=dpae/pair_48/decoder.pt"]
    assert stage_main(["--config", str(CONFIG), *FAST, "anonymizer.method=dpae", *bad, "run.name=bad"]) == 2
    assert "trained at [48, 48]" in capsys.readouterr().err


def test_table1_driver_writes_every_row_and_fig10(env, dpae_run) -> None:
    from scripts.two_stream_table1 import VARIANTS, main

    assert main(["--dpae", f"dp_adagrad={dpae_run}", *FAST, "optim.epochs=1"]) == 0
    out = env / "results" / "two_stream"
    table = (out / "table1.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split("|")[1].strip() for row in rows] == list(VARIANTS)
    for row in rows:
        auc = row.split("|")[2]
        assert "[" in auc and "]" in auc  # FL-AUC with its interval
    summary = json.loads((out / "table1_summary.json").read_text())
    assert set(summary["table1"]) == set(VARIANTS)
    runs = env / "runs" / "two_stream"
    assert json.loads((runs / "table1_2S-bag-no-hm_s0" / "results.json").read_text())["two_stream"]["mining"] is False
    assert json.loads((runs / "table1_1S-bag-ha_s0" / "results.json").read_text())["model"]["streams"] == 1
    assert json.loads((runs / "table1_1S-bag-ha_s0" / "results.json").read_text())["two_stream"]["soft_frames"] == "exclude"
    assert json.loads((runs / "table1_2S-no-bag_s0" / "results.json").read_text())["model"]["bag_dim"] == 0
    assert json.loads((runs / "table1_2S-bag-ha_s0" / "results.json").read_text())["two_stream"]["soft_frames"] == "exclude"
    base = json.loads((runs / "table1_2S-bag_s0" / "results.json").read_text())
    assert base["model"]["streams"] == 2 and base["two_stream"]["mining"] and base["two_stream"]["soft_frames"] == "soft"
    fig = (out / "fig10.md").read_text()
    assert "| raw |" in fig and "| dp_adagrad | dpae/tiny_pair | dp-adagrad | 3.5 |" in fig
    assert summary["fig10"]["dp_adagrad"]["fl_auc"] == pytest.approx(
        json.loads((runs / "fig10_dp_adagrad_s0" / "results.json").read_text())["test"]["fl_auc_ci"]["estimate"])
