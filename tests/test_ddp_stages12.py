"""Stages 1 and 2 under torchrun (CPU, gloo, 2 processes) on the tiny world.

What is checked, and why it would fail if the distributed code were broken:

- the units (one torchrun launch of this file as the worker, ``_units``): each rank's shards of
  the global batches are disjoint and together the global batch; ``gather_rows`` and
  ``CrossRankBatchNorm`` give the single-process values and gradients of the concatenated
  batch; one minimax Step 1 + Step 2 on two shards updates every model exactly as one process
  does on the global batch, and the DDP comm hooks show Step 1 all-reducing fA's gradients
  only and Step 2 those of fT, the head and fB only; stage 2's target model is called on half
  of each global batch on each rank;
- the stages: the minimax and the target model trained by 2 processes at the same global batch
  give the metrics, selection and weights of one process (deterministic mode; ``TOL``), write
  one checkpoint pair, one results file and one metrics log; a run continues under another
  world size (2 -> 1 in stage 2, 1 -> 2 in stage 1) and ends where the uninterrupted
  one-process run ends; a 2-process run whose rank 1 is killed resumes in one process.

The resume comparisons stop the first run after an epoch by ``optim.epochs`` (a resumable key),
which leaves the run directory a kill after that epoch's checkpoint leaves, so the continued run
can be compared with the uninterrupted one; test_target_killed_rank_resumes_in_one_process kills
rank 1 of a running 2-process job for real and resumes it in one process.

Dropout draws its masks from each rank's own RNG (seed + rank), so a model with dropout is
the same in distribution only; the stage-1 comparison builds a fresh fT without dropout
(``init.utility=null``, ``model.utility_dropout=0``), stage 2's tiny target has none.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aux_code.checkpoint import load_checkpoint
from aux_code.config import PROJECT_ROOT
from aux_code.runtime import read_metrics
from tests.test_anomaly_stage import child_env
from tests.tiny import ANONYMIZATION_CONFIGS, ANONYMIZATION_FAST, anonymization_paths

# Two processes at the same global batch agree to float rounding: the sums of the gradient
# all-reduce, the BatchNorm statistics and the NT-Xent rows run in another order. Measured on the
# tiny world (docs/multi_gpu.md): stage 2's training loss within 3e-7 of one process, selected
# validation cMAP and test cMAP equal; its weights within 5.2e-4 (Adam's first steps move a
# parameter whose gradient is rounding noise by +-lr either way), hence WEIGHT_TOL.
TOL = 1e-3
WEIGHT_TOL = 5e-3
# Stage 1's training values (losses of 1-3 on 1-3 samples per rank) through BatchNorm over a few
# samples, after Adam's sign-like first steps (see MINIMAX): measured within 2.1e-3 of one process.
MINIMAX_TOL = 1e-2
RUNNING_TOL = 1e-2  # |a - b| <= RUNNING_TOL * (1 + |b|)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
PRIVACY_FAST = ["clip.resolution=32", "optim.batch_size=8", "data.anonymize_batch=16", "schedule.warmup_epochs=1",
                "leakage.enabled=false", "run.deterministic=true", "run.device=cpu"]
# Stage 1: the minimax of tests/tiny.py's quick settings, 2 steps of 2 clips + 4 image pairs, a fresh
# fT without dropout (see the module docstring), fixed negative distance, and learning rates of
# 1e-6. At the paper's rates the float32 trajectory of this tiny minimax is chaotic: Adam's first
# steps move every parameter by about the lr in the direction of its gradient's sign, and the
# gradients BatchNorm gives over 2-4 samples carry rounding noise larger than some of their
# values, so any change of summation order (another thread count, or float64 instead of
# float32, in ONE process) moves the step-4 budget loss by 0.5 on the tiny world, as far as 2
# ranks move it. The unit test shows the distributed maths exact in float64 (1e-13); here the
# small rates keep the runs comparable, so the stage plumbing (shards, gathers, selection, files,
# resume) is what is compared. Selection by action top-1: the tiny world's budget accuracy is a
# tie-break of rounding (see test_minimax_two_processes_match_one).
MINIMAX = ["eval.select=action_top1", "loss.negative_distance=8", "init.utility=null", "init.budget=null", "model.utility_dropout=0", "run.deterministic=true",
           "eval.every=1", "run.device=cpu", "optim.lr_anonymizer=1e-6", "optim.lr_utility=1e-6", "optim.lr_budget=1e-6"]


def torchrun(args: list[str], env: dict, *, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([*TORCHRUN, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def states(run_dir: Path, name: str = "last.pt") -> dict[str, dict[str, torch.Tensor]]:
    return {k: m["state_dict"] for k, m in load_checkpoint(run_dir / name)["models"].items()}


def max_weight_difference(a: dict, b: dict) -> float:
    """The largest parameter difference of two runs' models; BatchNorm running statistics (which
    follow batches of 2-6 samples deep in the tiny models, where a variance of a few values
    amplifies rounding) to RUNNING_TOL, integers exactly."""
    assert a.keys() == b.keys()
    worst = 0.0
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for name, t in a[key].items():
            if not t.is_floating_point():
                assert torch.equal(t, b[key][name]), (key, name)
            elif "running_" in name:
                excess = float(((t - b[key][name]).abs() - RUNNING_TOL * (1 + b[key][name].abs())).max())
                assert excess <= 0, (key, name, excess)
            else:
                worst = max(worst, float((t - b[key][name]).abs().max()))
    return worst


def assert_same_run(ddp: Path, single: Path, *, skip: str = "-", tol: float = TOL) -> dict:
    """The two runs selected the same epoch with the same training and validation numbers (keys
    containing ``skip`` left out) and hold the same weights, to TOL; rank 0 alone wrote (one
    record per epoch, no second copy of any file)."""
    r2, r1 = (json.loads((d / "results.json").read_text()) for d in (ddp, single))
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r2["selection"]["epoch"] == r1["selection"]["epoch"]
    assert r2["selected"].keys() == r1["selected"].keys()
    for k in r1["selected"]:
        if skip not in k:
            assert r2["selected"][k] == pytest.approx(r1["selected"][k], abs=tol), k
    h2, h1 = (load_checkpoint(d / "last.pt")["history"] for d in (ddp, single))
    assert [h["epoch"] for h in h2] == [h["epoch"] for h in h1]
    for a, b in zip(h2, h1):
        for k in b:
            if k.startswith(("train_", "val_")) and skip not in k:
                assert a[k] == pytest.approx(b[k], abs=tol), (a["epoch"], k)
    assert max_weight_difference(states(ddp), states(single)) < WEIGHT_TOL
    epochs = [r for r in read_metrics(ddp / "metrics.jsonl") if r["phase"] == "epoch"]
    assert [r["step"] for r in epochs] == [h["epoch"] for h in h1]
    assert sorted(p.name for p in ddp.glob("*.pt")) == ["best.pt", "last.pt"]
    assert not list(ddp.glob("*.tmp*"))
    return r2


# --------------------------------------------------------------------------- units


def test_units_under_two_ranks(tmp_path):
    env = child_env(tmp_path)
    done = torchrun([str(Path(__file__).resolve()), str(tmp_path)], env, timeout=240)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, rep in enumerate(reports):
        assert rep["shards_disjoint_and_cover"], rank
        assert rep["gather_forward"] < 1e-6 and rep["gather_grad"] < 1e-6, rep
        assert rep["bn_forward"] < 1e-5 and rep["bn_grad"] < 1e-5 and rep["bn_running"] < 1e-6, rep
        # One minimax step pair on two shards == one process on the global batch.
        assert rep["minimax_param_diff"] < 1e-9, rep  # float64
        # Step 1 all-reduces fA's gradients only, Step 2 those of fT, the head and fB only.
        hooks = rep["hooks"]
        assert hooks["step1"]["anonymizer"] > 0 and hooks["step2"]["anonymizer"] == 0, hooks
        for key in ("utility", "embedding", "budget"):
            assert hooks["step1"][key] == 0 and hooks["step2"][key] > 0, (key, hooks)
        # Stage 2: each rank's forward saw half of every global batch of 8.
        assert rep["target_rows"] == [4, 4], rep
        assert rep["target_param_diff"] < 1e-4, rep  # float32, two SGD steps at lr 0.5
    assert "Traceback" not in done.stderr


def _units(out: Path) -> None:
    """The worker of test_units_under_two_ranks: every rank writes rank<r>.json."""
    import copy

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from anonymization_training.data import epoch_batches
    from anonymization_training.steps import LossWeights, MinimaxModels, adversary_step, anonymizer_step
    from anonymization_training.train import _shard, step_views
    from aux_code.fit import Stepper
    from aux_code.models import build_anonymizer, build_budget, build_embedding_head, build_target, build_utility
    from aux_code.precision import Precision
    from aux_code.runtime import CrossRankBatchNorm, gather_rows, init_runtime, rank_rows, sync_batchnorm
    from aux_code.training import RunContext

    torch.set_num_threads(1)
    dist = init_runtime("cpu")
    rank, world = dist.rank, dist.world_size
    ctx = RunContext(run_dir=out, dist=dist, logger=None, resume=False)  # type: ignore[arg-type]
    report: dict = {}

    # Shards: every key of every global batch on exactly one rank, in order.
    keys = epoch_batches(20, batch_size=4, num_batches=5, seed=0, stream=1, epoch=3)
    mine = _shard(keys, ctx)
    everyone: list = [None] * world
    torch.distributed.all_gather_object(everyone, mine)
    report["shards_disjoint_and_cover"] = all(
        sum((everyone[r][b] for r in range(world)), []) == keys[b] and len(everyone[0][b]) == 2 for b in range(len(keys)))

    # gather_rows: the rows of every rank in rank order; the gradient of the sum of the ranks' losses.
    g = torch.Generator().manual_seed(0)
    full = torch.randn(5, 3, generator=g, dtype=torch.float64)
    weights = torch.randn(5, 3, generator=g, dtype=torch.float64)
    local = rank_rows(full, rank, world).clone().requires_grad_(True)  # uneven: 2 and 3 rows
    gathered = gather_rows(local)
    ((gathered * weights).sum() ** 2).backward()
    ref = full.clone().requires_grad_(True)
    ((ref * weights).sum() ** 2).backward()
    report["gather_forward"] = float((gathered - full).detach().abs().max())
    # Each rank computed the whole loss: its rows get world x the single-process gradient.
    report["gather_grad"] = float((local.grad - world * rank_rows(ref.grad, rank, world)).abs().max())

    # CrossRankBatchNorm on uneven shards == BatchNorm on the concatenated batch.
    x = torch.randn(7, 4, 5, 5, generator=g)
    w_out = torch.randn(7, 4, 5, 5, generator=g)
    bn_ref = torch.nn.BatchNorm2d(4)
    bn = sync_batchnorm(torch.nn.Sequential(copy.deepcopy(bn_ref)), torch.device("cpu"))[0]
    assert isinstance(bn, CrossRankBatchNorm)
    xl = rank_rows(x, rank, world).clone().requires_grad_(True)
    y_local = bn(xl)
    (y_local * rank_rows(w_out, rank, world)).sum().backward()
    xr = x.clone().requires_grad_(True)
    y_ref = bn_ref(xr)
    (y_ref * w_out).sum().backward()
    report["bn_forward"] = float((y_local - rank_rows(y_ref, rank, world)).detach().abs().max())
    # Every rank's loss is its own rows' part of the sum: its inputs get exactly their gradient,
    # the affine parameters' gradients summed over ranks are the single-process ones.
    report["bn_grad"] = float((xl.grad - rank_rows(xr.grad, rank, world)).abs().max())
    summed = torch.cat([bn.weight.grad, bn.bias.grad]).clone()
    torch.distributed.all_reduce(summed)
    report["bn_grad"] = max(report["bn_grad"], float((summed - torch.cat([bn_ref.weight.grad, bn_ref.bias.grad])).abs().max()))
    report["bn_running"] = float(max((bn.running_mean - bn_ref.running_mean).abs().max(),
                                     (bn.running_var - bn_ref.running_var).abs().max()))

    # One minimax step pair: DDP on two shards vs one process on the global batch (SGD: the
    # update is the gradient itself, no Adam normalisation to hide a wrong scale).
    torch.manual_seed(0)
    utility = build_utility(name="i3d_r50_tiny", num_classes=3, dropout=0.0)  # masks are per-rank draws
    net = MinimaxModels(anonymizer=build_anonymizer(name="unet_tiny"), utility=utility,
                        embedding=build_embedding_head(in_dim=utility.feature_dim, hidden_dim=16, out_dim=8),
                        budget=build_budget(name="resnet_tiny"))
    # float64: BatchNorm over a batch of a few clips divides by near-zero variances in some
    # channels, which turns float32 rounding (the other summation order) into 1e-2 differences
    # after one step; in float64 the two computations agree to 1e-10 unless the maths differs.
    for m in net.as_dict().values():
        m.double()
    reference = copy.deepcopy(net)
    gb = torch.Generator().manual_seed(1)
    clip = lambda: torch.rand(4, 3, 8, 16, 16, generator=gb, dtype=torch.float64)  # noqa: E731
    action = {"clip": clip(), "positive": clip(), "negative": clip(), "label": torch.tensor([0, 2, 1, 0])}
    images = {"view1": torch.rand(6, 3, 16, 16, generator=gb, dtype=torch.float64),
              "view2": torch.rand(6, 3, 16, 16, generator=gb, dtype=torch.float64)}
    shard = lambda batch: {k: rank_rows(v, rank, world) for k, v in batch.items()}  # noqa: E731

    def sgd(models: MinimaxModels):
        return (torch.optim.SGD(models.anonymizer.parameters(), lr=0.05),
                torch.optim.SGD([*models.utility.parameters(), *models.embedding.parameters()], lr=0.05),
                torch.optim.SGD(models.budget.parameters(), lr=0.05))

    stepper = Stepper(Precision("fp32", torch.device("cpu")), stage="test")
    ra, rt, rb = sgd(reference)
    anonymizer_step(reference, ra, action, images, weights=LossWeights(), stepper=stepper)
    adversary_step(reference, rt, rb, action, images, weights=LossWeights(), stepper=stepper)

    oa, ot, ob = sgd(net)
    step1, step2 = step_views(net, ctx, sync_bn=True)
    calls = {"step1": {}, "step2": {}}
    phase = ["step1"]
    for key, wrapper in (("anonymizer", step1.anonymizer), ("utility", step2.utility), ("embedding", step2.embedding),
                         ("budget", step2.budget)):
        assert isinstance(wrapper, torch.nn.parallel.DistributedDataParallel), key
        for p in calls:
            calls[p][key] = 0

        def hook(state, bucket, key=key):
            calls[phase[0]][key] += 1
            return allreduce_hook(state, bucket)

        wrapper.register_comm_hook(None, hook)
    across = LossWeights(across_ranks=True)
    anonymizer_step(step1, oa, shard(action), shard(images), weights=across, stepper=stepper)
    phase[0] = "step2"
    adversary_step(step2, ot, ob, shard(action), shard(images), weights=across, stepper=stepper)
    report["hooks"] = calls
    diff = 0.0
    for key, module in net.as_dict().items():
        ref_state = reference.as_dict()[key].state_dict()
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                d = float((t - ref_state[name]).abs().max())
                if d > 1e-5 and os.environ.get("DDP_DEBUG"):
                    print(rank, key, name, d, float(t.abs().max()), flush=True)
                diff = max(diff, d)
    report["minimax_param_diff"] = diff

    # Stage 2: the target model's forward sees this rank's half of each global batch, and one
    # step equals one process's step on the whole batch.
    from types import SimpleNamespace

    from privacy_training.target import TargetTask

    torch.manual_seed(0)
    model = build_target(name="resnet_tiny", num_classes=3)
    single_model = copy.deepcopy(model)
    images_u8 = torch.randint(0, 256, (16, 3, 16, 16), generator=gb, dtype=torch.uint8)
    labels = torch.randint(0, 2, (16, 3), generator=gb).float()
    cfg = SimpleNamespace(
        optim=SimpleNamespace(lr=1e-2, weight_decay=0.0, batch_size=8, epochs=1),
        eval=SimpleNamespace(batch_size=8, f1_threshold=0.5, every=1),
        augment=SimpleNamespace(min_crop_scale=0.8, flip=True), run=SimpleNamespace(seed=0),
        model=SimpleNamespace(weights=None), ddp=SimpleNamespace(sync_batchnorm=True),
        schedule=SimpleNamespace(warmup_epochs=0, warmup_start=0.1, plateau_patience=0, plateau_factor=0.5, min_lr=0.0))
    common = dict(images=images_u8, labels=labels, val=(images_u8, labels.numpy()), test=(images_u8, labels.numpy()),
                  attributes=("a", "b", "c"), cache_key="k", cfg=cfg, device=torch.device("cpu"), extra=lambda *a: {})
    single = TargetTask(single_model, {}, **common)
    task = TargetTask(model, {}, **common, dist=dist)
    rows: list[int] = []
    model.register_forward_pre_hook(lambda m, args: rows.append(int(args[0].shape[0])))
    for t in (single, task):
        t.optimizer = torch.optim.SGD(t.model.parameters(), lr=0.5)
        for batch in t.batches(0):  # two global batches of 8
            t.train_step(batch, stepper)
    report["target_rows"] = rows
    report["target_param_diff"] = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                                                   single_model.state_dict().values())
                                      if a.is_floating_point())
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def minimax_single(init_runs, tiny_world) -> tuple[list[str], Path]:
    """The one-process reference minimax of 2 epochs: (its arguments without run.name / epochs, runs root)."""
    from anonymization_training.__main__ import main

    base = ["--config", str(ANONYMIZATION_CONFIGS / "tedspad.yaml"), *anonymization_paths(tiny_world, init_runs),
            *ANONYMIZATION_FAST, *MINIMAX]
    with one_thread():
        assert main([*base, "run.name=ddp_single", "optim.epochs=2"]) == 0
    return base, init_runs / "anonymization"


@contextlib.contextmanager
def one_thread():
    """One intra-op thread, as the torchrun children have (OMP_NUM_THREADS=1): the tiny world's
    budget models score the validation views nearly alike (NT-Xent at log(2N - 1)), so which
    view wins an argmax, the budget accuracy, follows the summation order of the thread split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _stage1_env(init_runs: Path) -> dict:
    env = child_env(init_runs)
    env.pop("TEDSPAD_PATHS")  # the paths come as overrides, as in the other stage-1 tests
    return env


def test_minimax_two_processes_match_one(minimax_single, init_runs):
    base, runs = minimax_single
    torchrun(["-m", "anonymization_training", *base, "run.name=ddp_two", "optim.epochs=2"], _stage1_env(init_runs))
    results = assert_same_run(runs / "ddp_two", runs / "ddp_single", skip="budget_acc", tol=MINIMAX_TOL)
    assert results["method"] == "tedspad"
    single = json.loads((runs / "ddp_single" / "results.json").read_text())
    # The tiny world's budget models embed the validation views nearly alike: NT-Xent at
    # log(2N - 1) (chunks of N = 6 pairs), so the budget accuracy is an argmax over similarities
    # equal to 1e-6, decided by rounding (two one-process runs at other thread counts differ as
    # much); it is left out of the comparison, and this checks it is still that degenerate.
    assert single["selected"]["budget_loss"] == pytest.approx(math.log(11), abs=1e-3)
    assert results["initial"] == single["initial"]  # epoch 0: the same inits, validated on every rank, rank 0 decides
    assert sorted(p.name for p in (runs / "ddp_two" / "grids").iterdir()) == ["epoch_000.png", "epoch_001.png", "epoch_002.png"]


def test_minimax_recomputing_its_blocks_under_two_ranks_matches_one_plain_process(minimax_single, init_runs):
    """optim.recompute under torchrun: the blocks are wrapped before DDP and synchronised
    BatchNorm recomputes across ranks; the run is the plain one-process run."""
    base, runs = minimax_single
    torchrun(["-m", "anonymization_training", *base, "run.name=ddp_recompute", "optim.epochs=2",
              "optim.recompute=[anonymizer,utility,budget]"], _stage1_env(init_runs))
    assert_same_run(runs / "ddp_recompute", runs / "ddp_single", skip="budget_acc", tol=MINIMAX_TOL)


def test_minimax_resumes_under_another_world_size(minimax_single, init_runs):
    """1 epoch in one process, then epoch 2 by 2 ranks: it ends where the uninterrupted run ends."""
    from anonymization_training.__main__ import main

    base, runs = minimax_single
    with one_thread():
        assert main([*base, "run.name=ddp_grow", "optim.epochs=1"]) == 0
    done = torchrun(["-m", "anonymization_training", *base, "run.name=ddp_grow", "optim.epochs=2"], _stage1_env(init_runs))
    assert done.stdout.count("resuming") == 1  # rank 0 alone speaks
    grown = json.loads((runs / "ddp_grow" / "results.json").read_text())
    single = json.loads((runs / "ddp_single" / "results.json").read_text())
    assert grown["world_size"] == 2 and grown["selection"]["epoch"] == single["selection"]["epoch"]
    assert max_weight_difference(states(runs / "ddp_grow"), states(runs / "ddp_single")) < WEIGHT_TOL
    for k, v in single["selected"].items():
        if "budget_acc" not in k:  # see test_minimax_two_processes_match_one
            assert grown["selected"][k] == pytest.approx(v, abs=MINIMAX_TOL), k


@pytest.fixture(scope="module")
def privacy_single(make_paths, tmp_path_factory) -> tuple[list[str], dict, Path]:
    """The one-process reference target run of 2 epochs: (arguments, child environment, runs root)."""
    from privacy_training.__main__ import main

    root = tmp_path_factory.mktemp("ddp_privacy")
    make_paths(root)
    env = child_env(root)
    base = ["--config", str(PROJECT_ROOT / "configs" / "synthetic" / "privacy" / "default.yaml"), *PRIVACY_FAST]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEDSPAD_PATHS", env["TEDSPAD_PATHS"])
        with one_thread():
            assert main([*base, "run.name=single", "optim.epochs=2"]) == 0
    return base, env, root / "runs" / "privacy"


def test_target_two_processes_match_one(privacy_single):
    base, env, runs = privacy_single
    torchrun(["-m", "privacy_training", *base, "run.name=two", "optim.epochs=2"], env)
    results = assert_same_run(runs / "two", runs / "single")
    single = json.loads((runs / "single" / "results.json").read_text())
    assert results["test"]["cmap"] == pytest.approx(single["test"]["cmap"], abs=TOL)
    assert (runs / "two" / "test_predictions.npz").is_file()


def test_target_resumes_under_another_world_size(privacy_single, monkeypatch):
    """Epoch 1 by 2 ranks, then epoch 2 in one process: it ends where the uninterrupted run ends."""
    from privacy_training.__main__ import main

    base, env, runs = privacy_single
    torchrun(["-m", "privacy_training", *base, "run.name=shrink", "optim.epochs=1"], env)
    monkeypatch.setenv("TEDSPAD_PATHS", env["TEDSPAD_PATHS"])
    with one_thread():
        assert main([*base, "run.name=shrink", "optim.epochs=2"]) == 0
    shrunk = json.loads((runs / "shrink" / "results.json").read_text())
    single = json.loads((runs / "single" / "results.json").read_text())
    assert shrunk["world_size"] == 1 and shrunk["selection"]["epoch"] == single["selection"]["epoch"]
    assert max_weight_difference(states(runs / "shrink"), states(runs / "single")) < WEIGHT_TOL
    assert shrunk["test"]["cmap"] == pytest.approx(single["test"]["cmap"], abs=TOL)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (a descendant of ``parent`` with RANK=<rank>), if it runs."""
    todo = [parent]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return child
            todo.append(child)
    return None


def test_target_killed_rank_resumes_in_one_process(privacy_single, monkeypatch):
    """Rank 1 of a 2-process run is killed (SIGKILL) after epoch 1's checkpoint; torchrun stops
    the job; one process resumes the run directory after the last finished epoch and finishes."""
    import signal
    import time

    from aux_code.checkpoint import checkpoint_epoch
    from privacy_training.__main__ import main

    base, env, runs = privacy_single
    run_dir = runs / "killed"
    job = subprocess.Popen([*TORCHRUN, "-m", "privacy_training", *base, "run.name=killed", "optim.epochs=40"],
                           cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while (checkpoint_epoch(run_dir / "last.pt") or 0) < 1:
            assert job.poll() is None and time.monotonic() < deadline, "the 2-process run ended or stalled before epoch 1"
            time.sleep(0.2)
        victim = _rank_pid(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and not (run_dir / "results.json").exists(), err[-2000:]
    done = checkpoint_epoch(run_dir / "last.pt")
    assert done is not None and 1 <= done < 40
    monkeypatch.setenv("TEDSPAD_PATHS", env["TEDSPAD_PATHS"])
    with one_thread():
        assert main([*base, "run.name=killed", f"optim.epochs={done + 1}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 1 and results["epochs"] == done + 1
    assert [h["epoch"] for h in load_checkpoint(run_dir / "last.pt")["history"]] == list(range(1, done + 2))


def test_global_batch_must_divide_over_the_ranks(tmp_path, tiny_world, make_paths, monkeypatch, capsys):
    """A global batch the world size does not divide stops before any run folder is made."""
    from anonymization_training.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "3")
    rc = main(["--config", str(ANONYMIZATION_CONFIGS / "tedspad.yaml"), *anonymization_paths(tiny_world, tmp_path),
               *ANONYMIZATION_FAST, "run.name=odd"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "optim.batch_size = 2 is the global batch" in err and "world size 3" in err
    assert not (tmp_path / "anonymization" / "odd").exists()

    from privacy_training.__main__ import main as privacy_main

    monkeypatch.setenv("TEDSPAD_PATHS", str(make_paths(tmp_path / "privacy")))
    assert privacy_main(["--config", str(PROJECT_ROOT / "configs" / "synthetic" / "privacy" / "default.yaml"),
                         *PRIVACY_FAST, "run.name=odd"]) == 2
    assert "optim.batch_size = 8 is the global batch" in capsys.readouterr().err
    assert not (tmp_path / "privacy" / "runs" / "privacy").exists()  # no run folder, no image cache


def test_reproduce_launches_the_stages_that_scale_under_torchrun(monkeypatch):
    """launcher = torchrun: stages 1-4 as torchrun child processes with the step's own arguments,
    the stages that refuse torchrun (here luss) in this process; launcher = process: all in it."""
    import scripts.reproduce as reproduce
    from aux_code.config import load_config

    ran: list = []
    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd: ran.append(("torchrun", cmd)) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr(reproduce, "launch", lambda step: ran.append(("here", step.stage)) or 0)
    cfg = load_config(reproduce.ReproduceConfig, PROJECT_ROOT / reproduce.DEFAULT_CONFIG,
                      ["launcher=torchrun", "nproc_per_node=4", "torchrun_args=[--nnodes=2,--node_rank=1,--rdzv_endpoint=h:29500]"])
    launch = reproduce.launcher_for(cfg)
    privacy = reproduce.Step("privacy", "configs/synthetic/privacy/default.yaml", "raw", ("run.seed=0",))
    assert launch(privacy) == 0
    assert launch(reproduce.Step("luss", "configs/synthetic/luss/default.yaml", "x")) == 0
    kind, cmd = ran[0]
    assert kind == "torchrun" and cmd[1:] == ["-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1",
                                              "--rdzv_endpoint=h:29500", "--nproc_per_node=4", "-m", "privacy_training",
                                              *privacy.argv()]
    assert ran[1] == ("here", "luss")
    assert reproduce.launcher_for(load_config(reproduce.ReproduceConfig, PROJECT_ROOT / reproduce.DEFAULT_CONFIG, [])) is reproduce.launch


if __name__ == "__main__":
    _units(Path(sys.argv[1]))
