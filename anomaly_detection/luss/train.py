"""LUSS-AE as a task on the project's training loop (aux_code.fit), and its test scoring.

Training: windows of T + 1 frames from the normal training videos (all starts every
``data.skip`` frames, shuffled each epoch), each with a PRP clip of the same video drawn 50/50
original / accelerated (aux_code.losses.luss). Validation (the selection, lowest total loss):
fixed windows and PRP draws of the held-out training videos. Test: every test video streamed
through aux_code.luss_scoring; results.json holds micro (the paper's) and macro frame AUC of the
final score and of each task alone, the error-measure and rescaling ablations, and one score
plot per test video.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from einops import rearrange

from anomaly_detection.luss.config import LussConfig
from aux_code.config import ConfigError
from aux_code.datasets.avenue import Avenue
from aux_code.datasets.ped2 import Ped2
from aux_code.datasets.shanghaitech_unsupervised import ShanghaiTechUnsupervised
from aux_code.anonymizers import FrameAnonymizer, anonymized_grey_frames, build_frame_anonymizer
from aux_code.datasets.unsupervised import UnsupervisedAdapter, UnsupervisedVideo, prepared_frames
from aux_code.fit import Selection, StoredModel, Stepper, Task, fit
from aux_code.losses.luss import LossWeights, draw_prp, luss_loss
from aux_code.luss_scoring import MEASURES, TASKS, combine, micro_macro_auc, score_video
from aux_code.models.luss_ae import build_luss_ae
from aux_code.precision import Precision
from aux_code.schedule import Schedule
from aux_code.training import RunContext, start_run

STAGE = "luss"
ADAPTERS = {"ped2": Ped2, "avenue": Avenue, "shanghaitech_unsupervised": ShanghaiTechUnsupervised}


def split_training(videos: list[UnsupervisedVideo], fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation) by whole videos: round(fraction * n) held out, at least one when fraction > 0."""
    if fraction <= 0 or len(videos) < 2:
        return list(videos), []
    k = min(len(videos) - 1, max(1, round(fraction * len(videos))))
    order = np.random.default_rng([seed, 1717]).permutation(len(videos))
    held = set(order[:k].tolist())
    return [v for i, v in enumerate(videos) if i not in held], [v for i, v in enumerate(videos) if i in held]


def model_frames(video: UnsupervisedVideo, size: tuple[int, int], anonymizer: FrameAnonymizer | None,
                 adapter: UnsupervisedAdapter, device: torch.device | str = "cpu") -> Iterator[np.ndarray]:
    """The video as the autoencoder sees it: float32 ``h w`` frames in [-1, 1] at ``size``, streamed.

    ``anonymizer`` None (method raw): the release's grey frames resized. Otherwise RGB frames
    through the method (aux_code.anonymizers.anonymized_grey_frames); a box method takes the
    analogue's ground-truth boxes (``boxes: gt``) or detects them on the original frames first.
    """
    if anonymizer is None:
        return prepared_frames(video.frames(), size)
    boxes = None
    if anonymizer.needs_boxes:
        boxes = (adapter.person_boxes(video) if anonymizer.box_source == "gt"
                 else [anonymizer.detect(f) for f in video.frames(color=True)])
    return anonymized_grey_frames(video.frames(color=True), anonymizer, size, boxes=boxes, device=device)


def load_frames(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Model frames in [-1, 1] as uint8 ``n h w`` (a training video kept in memory; the input is x / 127.5 - 1)."""
    return np.stack([np.round((f + 1.0) * 127.5).astype(np.uint8) for f in frames])


def _to_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float().div_(127.5).sub_(1.0)


class Windows:
    """A Sized, re-iterable list of batches: (clip b 1 T h w, next frame b 1 h w, PRP clip b 1 T h w, labels b)."""

    def __init__(self, videos: list[np.ndarray], names: list[str], samples: list[tuple[int, int]], clip_len: int,
                 batch_size: int, seed: Any, device: torch.device) -> None:
        self.videos, self.names, self.samples = videos, names, samples
        self.T, self.bs, self.seed, self.device = clip_len, batch_size, seed, device

    def __len__(self) -> int:
        return math.ceil(len(self.samples) / self.bs)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for b in range(len(self)):
            chunk = self.samples[b * self.bs:(b + 1) * self.bs]
            clips, prp, labels = [], [], []
            for v, s in chunk:
                frames = self.videos[v]
                clips.append(frames[s:s + self.T + 1])
                d = draw_prp(rng, len(frames), self.T, video=self.names[v])
                prp.append(frames[d.indices])
                labels.append(d.label)
            win = rearrange(_to_input(np.stack(clips)), "b t h w -> b 1 t h w").to(self.device)
            yield (win[:, :, :self.T], win[:, :, self.T], rearrange(_to_input(np.stack(prp)), "b t h w -> b 1 t h w").to(self.device),
                   torch.tensor(labels, device=self.device))


class LussTask(Task):
    name = "luss_ae"

    def __init__(self, cfg: LussConfig, ctx: RunContext, precision: Precision) -> None:
        self.cfg, self.ctx, self.precision = cfg, ctx, precision
        self.device = ctx.device
        self.T = cfg.clip.clip_len
        self.size = (cfg.clip.frame_size[0], cfg.clip.frame_size[1])
        adapter = ADAPTERS[cfg.data.dataset](getattr(cfg.paths, cfg.data.dataset))
        self.adapter = adapter
        self.test_videos = adapter.videos("test")
        train, val = split_training(adapter.videos("train"), cfg.data.validation_fraction, cfg.run.seed)
        for v in train + val:
            if v.num_frames < self.T + 1:
                raise ConfigError(f"training video {v.name} has {v.num_frames} frames; clip.clip_len + 1 = {self.T + 1} needed")
        self.train_names, self.val_names = [v.name for v in train], [v.name for v in val]
        self.anonymizer = (None if cfg.anonymizer.method == "raw"
                           else build_frame_anonymizer(cfg.anonymizer, runs_root=cfg.paths.runs, device=self.device))
        self.train_frames = [load_frames(self.frames_of(v)) for v in train]
        self.val_frames = [load_frames(self.frames_of(v)) for v in val]
        self.model = build_luss_ae(preset=cfg.model.preset, clip_len=self.T).to(self.device)
        self.spec = {"preset": cfg.model.preset, "clip_len": self.T}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr)
        self.weights = LossWeights(cfg.loss.vcr, cfg.loss.ffp, cfg.loss.prp)
        self.epochs = cfg.optim.epochs
        self.eval_every = cfg.eval.every
        self.selection = Selection("loss", "min", "lowest total loss (Eq. 7) on held-out normal training videos") if val else None
        self.schedule = Schedule(cfg.schedule, lr=cfg.optim.lr, optimizers=[self.optimizer], mode="min")
        self.starts = [(i, s) for i, f in enumerate(self.train_frames) for s in range(0, len(f) - self.T, cfg.data.window_stride)]
        if not self.starts:
            raise ConfigError("no training window fits: every training video is shorter than clip.clip_len + 1")
        val_starts = [(i, s) for i, f in enumerate(self.val_frames) for s in range(0, len(f) - self.T)]
        pick = np.linspace(0, len(val_starts) - 1, min(len(val_starts), cfg.eval.validation_windows)).round().astype(int) \
            if val_starts else []
        self.val_starts = [val_starts[i] for i in pick]

    def frames_of(self, video: UnsupervisedVideo) -> Iterator[np.ndarray]:
        return model_frames(video, self.size, self.anonymizer, self.adapter, self.device)

    def models(self) -> dict[str, StoredModel]:
        return {"model": StoredModel("luss_ae", self.spec, self.model)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def task_state(self) -> dict:
        return {"train_videos": self.train_names, "validation_videos": self.val_names}

    def load_task_state(self, state: Mapping[str, Any]) -> None:
        if state and (state.get("train_videos") != self.train_names or state.get("validation_videos") != self.val_names):
            raise ConfigError(f"{self.ctx.run_dir}: the checkpoint was trained on another training/validation split; "
                              "use another run.name or run.resume=false")

    def batches(self, epoch: int) -> Windows:
        rng = np.random.default_rng([self.cfg.run.seed, epoch, 3])
        order = rng.permutation(len(self.starts))
        steps = self.cfg.optim.steps_per_epoch
        n = len(order) if steps is None else steps * self.cfg.optim.batch_size
        order = np.resize(order, n) if n > len(order) else order[:n]
        samples = [self.starts[i] for i in order]
        return Windows(self.train_frames, self.train_names, samples, self.T, self.cfg.optim.batch_size,
                       [self.cfg.run.seed, epoch, 4], self.device)

    def _terms(self, batch) -> dict[str, torch.Tensor]:
        clip, nxt, prp_clip, labels = batch
        with self.precision.autocast():
            recon, frame, logits = self.model(clip, prp_clip)
        terms = luss_loss(recon, clip, frame, nxt, logits, labels, self.weights)
        terms["prp_acc"] = (logits.argmax(1) == labels).float().mean()
        return terms

    def train_step(self, batch, stepper: Stepper) -> Mapping[str, float]:
        self.model.train()
        terms = self._terms(batch)
        acc = float(terms.pop("prp_acc"))
        out = stepper.update(terms, self.optimizer)
        out["prp_acc"] = acc
        return out

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, float] = {}
        n = 0
        batches = Windows(self.val_frames, self.val_names, self.val_starts, self.T, self.cfg.eval.batch_size,
                          [self.cfg.run.seed, 99], self.device)
        for batch in batches:
            terms = self._terms(batch)
            b = batch[0].shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
            n += b
        return {k: v / n for k, v in sums.items()}

    def finish(self, selected_epoch: int) -> dict:
        test = score_test_set(self.model, self.test_videos, self.cfg, self.ctx.run_dir, self.device, self.precision,
                              frames_of=self.frames_of)
        anonymizer = {"method": "raw"} if self.anonymizer is None else self.anonymizer.describe()
        return {**test, "anonymizer": anonymizer}


def score_test_set(model, videos: list[UnsupervisedVideo], cfg: LussConfig, run_dir: Path, device, precision, *,
                   frames_of: Callable[[UnsupervisedVideo], Iterator[np.ndarray]]) -> dict:
    """Score every test video (``frames_of``: its model frames, streamed), write scores.npz and the plots;
    the ``test`` part of results.json."""
    alphas = cfg.alphas()
    measure, rescaling = cfg.eval.measure, cfg.eval.rescaling
    raws, labels = {}, []
    for v in videos:
        raw = score_video(model, frames_of(v), clip_len=cfg.clip.clip_len, batch_size=cfg.eval.batch_size, device=device,
                          autocast=precision.autocast(), video=v.name)
        if len(raw["prp"]) != v.num_frames:
            raise ConfigError(f"test video {v.name}: {len(raw['prp'])} frames decoded but {v.num_frames} labelled")
        raws[v.name] = raw
        labels.append(v.frame_labels())
    names = [v.name for v in videos]
    combined = {n: combine(raws[n], alphas, measure=measure, rescaling=rescaling) for n in names}

    def auc(key: str, per_video: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
        return micro_macro_auc(labels, [per_video[n][key] for n in names])

    test: dict[str, Any] = {
        "frame_auc_micro": None, "frame_auc_macro": None,
        "alphas": list(alphas), "measure": measure, "rescaling": rescaling,
        "first_frames": f"the first clip_len = {cfg.clip.clip_len} frames of each video take the score of its first window",
        "videos": len(names), "frames": int(sum(len(y) for y in labels)),
        "abnormal_frames": int(sum(int(y.sum()) for y in labels)),
    }
    final = auc("final", combined)
    test["frame_auc_micro"], test["frame_auc_macro"] = final["micro_auc"], final["macro_auc"]
    test["macro_videos"] = final["macro_videos"]
    test["per_task"] = {t: auc(t, combined) for t in TASKS}
    ablation: dict[str, Any] = {}
    for m in MEASURES:
        alt = {n: combine(raws[n], alphas, measure=m, rescaling=rescaling) for n in names}
        ablation[m] = {t: auc(t, alt)["micro_auc"] for t in ("vcr", "ffp", "final")}
    for r in ("robust", "minmax"):
        alt = {n: combine(raws[n], alphas, measure=measure, rescaling=r) for n in names}
        ablation[f"rescaling_{r}"] = auc("final", alt)["micro_auc"]
    test["ablation_micro_auc"] = ablation
    arrays = {}
    for n, y in zip(names, labels):
        arrays.update({f"{n}/{k}": v for k, v in raws[n].items()})
        arrays.update({f"{n}/rescaled_{t}": v for t, v in combined[n].items()})
        arrays[f"{n}/labels"] = y
    np.savez_compressed(run_dir / "test_scores.npz", **arrays)
    plots = plot_scores(run_dir / "plots", names[:cfg.eval.plot_videos], combined, dict(zip(names, labels)), alphas)
    test["plots"] = [str(p.relative_to(run_dir)) for p in plots]
    return {"dataset": cfg.data.dataset, "test": test}


def plot_scores(out_dir: Path, names, combined, labels, alphas) -> list[Path]:
    """One PNG per video: the three rescaled task scores and the final score over frames, anomalies shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        s, y = combined[name], labels[name]
        fig, ax = plt.subplots(figsize=(8, 2.8), dpi=100)
        x = np.arange(len(y))
        edges = np.flatnonzero(np.diff(np.concatenate([[0], y, [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            ax.axvspan(a, b, color="tab:red", alpha=0.18, lw=0)
        for key, colour, width in (("vcr", "tab:blue", 0.9), ("ffp", "tab:green", 0.9), ("prp", "tab:purple", 0.9),
                                   ("final", "black", 1.6)):
            ax.plot(x, s[key], color=colour, lw=width, label=f"A_{key.upper()}" if key != "final" else
                    f"final ({alphas[0]:g}/{alphas[1]:g}/{alphas[2]:g})")
        ax.set_xlim(0, max(len(y), 1))
        ax.set_xlabel("frame")
        ax.set_ylabel("rescaled score")
        ax.set_title(f"{name} (shaded: annotated anomaly)", fontsize=9)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
        fig.tight_layout()
        path = out_dir / f"{name.replace('/', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def run(cfg: LussConfig) -> dict:
    """The stage; returns results.json's dict."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("anomaly_detection.luss runs as a single process; launch it without torchrun")
    ctx = start_run(cfg, stage=STAGE)
    try:
        precision = Precision(cfg.precision, ctx.device)
        results = fit(LussTask(cfg, ctx, precision), ctx, cfg=cfg, stage=STAGE, precision=precision,
                      log_every=cfg.run.log_every)
        if ctx.dist.is_main:
            t = results["test"]
            print(f"[{STAGE}] {cfg.data.dataset}: frame AUC micro {100 * t['frame_auc_micro']:.2f} "
                  f"(macro {100 * t['frame_auc_macro']:.2f}); results in {ctx.run_dir / 'results.json'}", flush=True)
        return results
    finally:
        ctx.finish()
