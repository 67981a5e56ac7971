"""The two-stream detector's training task (Giorgi et al., JoWUA 2022, s.3.4, 4.3) on the one loop.

:class:`TwoStreamTask` is a :class:`aux_code.fit.Task`. An epoch is a permutation of the
training pool cut into candidate sets of alpha*K frames (sampling without replacement,
aux_code.two_stream.candidate_batches); ``train_step`` scores a candidate set with the current
model in eval mode and trains on the K frames with the highest loss (hard sample mining, hard
positives and hard negatives alike), or, without mining, on candidate sets of K as they come.

The per-frame loss (:func:`frame_loss`) is the class-weighted BCE of the paper (normal 1,
anomaly 2) on targets from the frame kinds of the UCFCrime2Local-style annotation: a hard
anomaly is a positive, a normal frame a negative, and a soft anomaly is never a positive
(``soft_frames``: 'soft' trains it toward ``soft_target`` <= 0.5 with the normal weight,
'exclude' drops it from the pool and the loss, 'positive' is the opposite reading kept for
comparison). Validation (frames of training videos held out, never the test set) reports the
frame-level AUC (selection, early stopping) and the video-level F1 of the online sigmoidal
anomaly score; ``finish`` reports both on the test set, the FL-AUC's 95% interval over whole
test videos (aux_code.stats.frame_metric_ci), and writes ``test_scores.npz``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from einops import rearrange

from aux_code.checkpoint import atomic_write
from aux_code.datasets.ucf_crime2local import HARD, SOFT
from aux_code.fit import Selection, Stepper, StoredModel, Task
from aux_code.metrics import frame_auc, sigmoidal_anomaly_score, video_level_f1
from aux_code.models.two_stream import TwoStreamDetector
from aux_code.segments import expand_clip_scores
from aux_code.two_stream import candidate_batches, mine_hard_batch, weighted_bce
from two_stream_detection.data import FrameSet

__all__ = ["TwoStreamTaskConfig", "TwoStreamTask", "frame_targets", "frame_loss", "expand_scores"]


@dataclass
class TwoStreamTaskConfig:
    """The task's explicit arguments (paper values where the paper gives one)."""

    epochs: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32  # K
    mining: bool = True
    alpha: int = 3
    soft_frames: str = "soft"  # soft | exclude | positive
    soft_target: float = 0.5
    normal_weight: float = 1.0
    anomaly_weight: float = 2.0
    eval_batch_size: int = 256
    patience: int | None = 5
    tau: float = 0.5
    reactivity: float = 2.0
    upper: float = 7.0
    lower: float = -7.0
    threshold: float = 0.5
    resamples: int = 1000
    seed: int = 0


def frame_targets(kind: torch.Tensor, *, soft_frames: str = "soft", soft_target: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame kinds (N,) NORMAL / SOFT / HARD -> (targets (N,) float, kept (N,) bool)."""
    if soft_frames not in ("soft", "exclude", "positive"):
        raise ValueError(f"soft_frames must be 'soft', 'exclude' or 'positive', got {soft_frames!r}")
    hard, soft = kind == HARD, kind == SOFT
    targets = hard.float()
    if soft_frames == "soft":
        targets = torch.where(soft, torch.full_like(targets, soft_target), targets)
    elif soft_frames == "positive":
        targets = torch.where(soft, torch.ones_like(targets), targets)
    kept = ~soft if soft_frames == "exclude" else torch.ones_like(soft)
    return targets, kept


def frame_loss(logits: torch.Tensor, kind: torch.Tensor, cfg: TwoStreamTaskConfig) -> torch.Tensor:
    """Per-frame weighted BCE (N,) of logits (N,) against the targets of ``kind`` (N,); 0 for excluded frames."""
    targets, kept = frame_targets(kind, soft_frames=cfg.soft_frames, soft_target=cfg.soft_target)
    loss = weighted_bce(logits.float(), targets, normal_weight=cfg.normal_weight, anomaly_weight=cfg.anomaly_weight)
    return loss * kept.float()


def expand_scores(scores: np.ndarray, stride: int, num_frames: int) -> np.ndarray:
    """Scores of frames 0, s, 2s, ... (K,) -> one per frame (num_frames,), each standing for the s frames it starts."""
    out = expand_clip_scores(scores, clip_span=stride)[:num_frames]
    if out.size < num_frames:  # fewer scored frames than the video has: the last score carries on
        out = np.concatenate([out, np.full(num_frames - out.size, out[-1] if out.size else 0.0)])
    return out


class _Tensors:
    """A FrameSet's arrays as torch tensors laid out for the streams (kept on the CPU as uint8)."""

    def __init__(self, fs: FrameSet) -> None:
        self.rgb = torch.from_numpy(np.ascontiguousarray(rearrange(fs.rgb, "n h w c -> n c h w")))
        self.flow = torch.from_numpy(np.ascontiguousarray(rearrange(fs.flow, "n h w c -> n c h w")))
        self.bag = torch.from_numpy(np.ascontiguousarray(fs.bag, dtype=np.float32))
        self.kind = torch.from_numpy(fs.kind.astype(np.int64))


class TwoStreamTask(Task):
    """Train the detector on frames with hard / soft labels and hard mining; select on validation FL-AUC."""

    name = "two_stream"

    def __init__(self, cfg: TwoStreamTaskConfig, spec: Mapping[str, Any], train: FrameSet, val: FrameSet,
                 test: FrameSet | None = None, *, device: torch.device | str = "cpu", export_dir: str | Path | None = None,
                 data_info: Mapping[str, Any] | None = None, weights: str | Path | None = None,
                 freeze_backbones: bool = False) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.epochs = cfg.epochs
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.data_info = dict(data_info or {})
        stop = "off" if cfg.patience is None else f"patience {cfg.patience}"
        self.selection = Selection(metric="fl_auc", mode="max",
                                   rule=f"highest frame-level AUC on validation videos carved from training (early stopping: {stop})")
        self.train_set, self.val_set, self.test_set = train, val, test
        self.train_t = _Tensors(train)
        _, kept = frame_targets(self.train_t.kind, soft_frames=cfg.soft_frames, soft_target=cfg.soft_target)
        self.pool = torch.nonzero(kept).squeeze(1)  # what an epoch draws candidates from
        if self.pool.numel() == 0:
            raise ValueError("two_stream: no training frame is left to train on")
        self.k = min(cfg.batch_size, int(self.pool.numel()))
        torch.manual_seed(cfg.seed)
        self.spec = dict(spec)
        self.model = TwoStreamDetector(**self.spec)
        self.load_report = []
        if weights is not None:
            from aux_code.models.two_stream import load_imagenet

            self.load_report = load_imagenet(self.model, weights)
        if freeze_backbones:
            for trunk in self.model.trunks():
                trunk.requires_grad_(False)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.val_history: list[float] = []
        self.last_trained: torch.Tensor | None = None  # training-set indices of the last step's K frames

    # -- inputs
    def _inputs(self, t: _Tensors, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        rgb = t.rgb[idx].to(self.device).float().div_(255.0)
        flow = t.flow[idx].to(self.device).float().div_(255.0) if self.model.streams == 2 else None
        bag = t.bag[idx].to(self.device) if self.model.bag_dim else None
        return rgb, flow, bag

    # -- fit.Task
    def models(self) -> dict[str, StoredModel]:
        return {"detector": StoredModel("two_stream", self.spec, self.model)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def _sizes(self) -> list[int]:
        return [len(self.train_set), len(self.val_set), len(self.test_set) if self.test_set is not None else 0]

    def task_state(self) -> dict:
        return {"val_history": list(self.val_history), "frames": self._sizes(),
                "annotations": dict(self.data_info.get("annotation_digests", {}))}

    def load_task_state(self, state: Mapping[str, Any]) -> None:
        if list(state.get("frames", self._sizes())) != self._sizes():
            raise ValueError(f"two_stream: the checkpoint was trained on {state['frames']} train/val/test frames, "
                             f"this run has {self._sizes()}; use another run.name or run.resume=false")
        held, now = state.get("annotations", {}), dict(self.data_info.get("annotation_digests", {}))
        if held and held != now:
            changed = sorted(k for k in set(held) | set(now) if held.get(k) != now.get(k))
            raise ValueError(f"two_stream: frame annotations changed since the run started ({', '.join(changed[:5])}); "
                             "use another run.name or run.resume=false")
        self.val_history = [float(v) for v in state.get("val_history", [])]

    def batches(self, epoch: int) -> list[torch.Tensor]:
        # One generator per epoch: a resumed run draws the same candidates as an uninterrupted one.
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        alpha = self.cfg.alpha if self.cfg.mining else 1
        return [self.pool[c] for c in candidate_batches(int(self.pool.numel()), self.k, alpha, generator=g)]

    def per_sample_loss(self, batch: tuple) -> torch.Tensor:
        rgb, flow, bag, kind = batch
        return frame_loss(self.model(rgb, flow, bag), kind, self.cfg)

    def train_step(self, batch: torch.Tensor, stepper: Stepper) -> Mapping[str, float]:
        rgb, flow, bag = self._inputs(self.train_t, batch)
        kind = self.train_t.kind[batch].to(self.device)
        chosen = torch.arange(batch.numel())
        if self.cfg.mining and batch.numel() > self.k:
            # mine_hard_batch indexes every candidate tensor: pass only the inputs this variant has.
            present = [x for x in (rgb, flow, bag) if x is not None]
            slots = [x is not None for x in (rgb, flow, bag)]

            def unpack(c: tuple) -> tuple:
                it = iter(c[:-1])
                return tuple(next(it) if has else None for has in slots) + (c[-1],)

            with stepper.autocast():
                chosen, mined = mine_hard_batch(lambda c: self.per_sample_loss(unpack(c)), (*present, kind), self.k,
                                                model=self.model)
            rgb, flow, bag, kind = unpack(mined)
            chosen = chosen.cpu()
        self.last_trained = batch[chosen]
        self.model.train()
        with stepper.autocast():
            logits = self.model(rgb, flow, bag)
        losses = frame_loss(logits, kind, self.cfg)
        _, kept = frame_targets(kind, soft_frames=self.cfg.soft_frames, soft_target=self.cfg.soft_target)
        loss = losses.sum() / kept.sum().clamp(min=1)
        return stepper.update({"loss": loss, "hard_fraction": (kind == HARD).float().mean()}, self.optimizer)

    @torch.no_grad()
    def scores(self, fs: FrameSet) -> np.ndarray:
        """Anomaly probabilities (N,) of every sampled frame of ``fs`` (eval mode)."""
        t = _Tensors(fs)
        was = self.model.training
        self.model.eval()
        out = []
        try:
            for s in range(0, len(fs), self.cfg.eval_batch_size):
                idx = torch.arange(s, min(s + self.cfg.eval_batch_size, len(fs)))
                out.append(torch.sigmoid(self.model(*self._inputs(t, idx)).float()).cpu())
        finally:
            self.model.train(was)
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    def evaluate(self, fs: FrameSet) -> dict[str, Any]:
        """FL-AUC (classifier probability per frame), VL-F1 (SAS), and per video: frame scores (F_i,), labels, SAS stream."""
        p = self.scores(fs)
        frame_scores, sas = [], []
        for i, n in enumerate(fs.num_frames):
            mine = p[fs.video == i]
            frame_scores.append(expand_scores(mine, fs.stride, n))
            sas.append(sigmoidal_anomaly_score(mine, tau=self.cfg.tau, v=self.cfg.reactivity, upper=self.cfg.upper,
                                               lower=self.cfg.lower))
        labels = np.concatenate(fs.frame_labels)
        auc = frame_auc(labels, np.concatenate(frame_scores)) if 0 < labels.sum() < labels.size else math.nan
        f1 = video_level_f1(sas, fs.labels, threshold=self.cfg.threshold)
        return {"fl_auc": float(auc), "vl_f1": f1, "frame_scores": frame_scores, "sas": sas, "probabilities": p}

    def validate(self, epoch: int) -> dict[str, float]:
        r = self.evaluate(self.val_set)
        self.val_history.append(r["fl_auc"] if math.isfinite(r["fl_auc"]) else 0.0)
        return {"fl_auc": r["fl_auc"], "vl_f1": r["vl_f1"]}

    def score(self, metrics: Mapping[str, float]) -> float:
        # An undefined AUC (one class among the validation frames) must not be taken for the best epoch.
        v = float(metrics["fl_auc"])
        return v if math.isfinite(v) else 0.0

    def should_stop(self) -> bool:
        h, p = self.val_history, self.cfg.patience
        return p is not None and len(h) > p and max(h[-p:]) <= max(h[:-p])

    def finish(self, selected: Mapping[str, Any]) -> dict:
        results: dict[str, Any] = {"two_stream": asdict(self.cfg), "model": dict(self.spec), "data": dict(self.data_info),
                                   "frames": {"train": len(self.train_set), "train_pool": int(self.pool.numel()),
                                              "val": len(self.val_set),
                                              "test": len(self.test_set) if self.test_set is not None else 0}}
        if self.load_report:
            results["weights"] = self.load_report
        if self.test_set is None:
            return results
        from aux_code.stats import BootstrapError, frame_metric_ci

        r = self.evaluate(self.test_set)
        test: dict[str, Any] = {"fl_auc": r["fl_auc"], "vl_f1": r["vl_f1"], "videos": len(self.test_set.names),
                                "scored_frames": len(self.test_set), "stride": self.test_set.stride}
        try:
            ci = frame_metric_ci(self.test_set.frame_labels, [r["frame_scores"]], metric="auc",
                                 resamples=self.cfg.resamples, seed=self.cfg.seed)
            test["fl_auc_ci"] = ci.as_dict()
        except BootstrapError as e:
            test["fl_auc_ci"] = {"error": str(e)}
        results["test"] = test
        if self.export_dir is not None:
            path = self.export_dir / "test_scores.npz"
            save_scores(path, self.test_set, r["frame_scores"], r["sas"], r["probabilities"])
            results["test_scores"] = str(path)
        return results


def save_scores(path: Path, fs: FrameSet, frame_scores: list[np.ndarray], sas: list[np.ndarray], probabilities: np.ndarray) -> None:
    """Per-video arrays flat with offsets (no pickle): names (V,), labels (V,), frame_offsets (V+1,),
    frame_labels / frame_scores (sum F_i,), sample_offsets (V+1,), probabilities / sas / sampled_frames
    (sum K_i,), stride (). Video i's frames: [frame_offsets[i], frame_offsets[i+1])."""
    frame_offsets = np.concatenate([[0], np.cumsum([len(x) for x in frame_scores])]).astype(np.int64)
    sample_offsets = np.concatenate([[0], np.cumsum([len(s) for s in sas])]).astype(np.int64)
    arrays = {
        "names": np.array(fs.names, dtype=str), "labels": np.array(fs.labels, dtype=np.int64),
        "frame_offsets": frame_offsets, "frame_labels": np.concatenate(fs.frame_labels).astype(np.int8),
        "frame_scores": np.concatenate(frame_scores), "sample_offsets": sample_offsets,
        "probabilities": np.asarray(probabilities, np.float64), "sas": np.concatenate(sas) if sas else np.zeros(0),
        "sampled_frames": fs.frame.astype(np.int64), "stride": np.array(fs.stride, dtype=np.int64),
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_scores(path: str | Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(video names, frame labels per video, frame scores per video) of a test_scores.npz."""
    with np.load(path, allow_pickle=False) as z:
        o = z["frame_offsets"]
        labels = [z["frame_labels"][o[i]:o[i + 1]] for i in range(len(o) - 1)]
        scores = [z["frame_scores"][o[i]:o[i + 1]] for i in range(len(o) - 1)]
        return [str(n) for n in z["names"]], labels, scores
