"""The DP autoencoder's training task (Giorgi et al., JoWUA 2022, s.4.1.2, 4.2) on video frames.

The paper trains on the frames of one video per class (6 anomaly classes + Normal of
UCF-Crime), split at random 70/15/15 into train / validation / test frames, with Adam
(no DP) or DP-SGD / DP-Adam / DP-Adagrad at noise multipliers 0.1-1.0, lr 1e-5, blocks
of 50 frames, stopping when the validation loss has not improved for 5 epochs, and
reports SSIM / PSNR / MSE of the reconstructions.

:class:`DPAETask` is a :class:`aux_code.fit.Task` on the project's one training loop:
``train_step`` forwards through the Opacus GradSampleModule and hands the DPOptimizer to
``stepper.update`` (its zero_grad clears per-example gradients, its step clips, adds noise
and steps). The encoder and decoder are stored as two records (``dpae_encoder`` /
``dpae_decoder``), the accountant's history and the sampling / noise generators in the
task state, so a resumed run keeps counting its privacy spend. Validation metrics carry
``epsilon`` (spent so far); results.json gets a ``privacy`` block and the test metrics.

Early stopping: :meth:`DPAETask.should_stop` says when ``patience`` validations have
passed without a lower validation MSE (the paper's rule), or, with ``quality_patience``,
when neither SSIM nor PSNR has risen above its best for that many validations (the paper's
second rule, there counted in blocks of 50 frames, here in validations); fit() asks it
before every epoch, and the selection (lowest validation MSE) picks the model early
stopping kept.

With ``export_dir`` the selected halves are also written there as the camera's
``encoder.pt`` and the server's ``decoder.pt`` (aux_code.latent_codes.save_half), each with
the run's privacy block and the frame geometry the training frames were cut with
(``data_info``: ``frame_size``, ``crop_scale``; reported in results.json's ``data``).

The command line is ``python -m anonymization_training.dpae`` (config.py, train.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from aux_code.dp import DPSettings, DPTraining, make_training, mean_over_batch
from aux_code.fit import Selection, Stepper, StoredModel, Task
from aux_code.models.dpae import DPAutoencoder
from aux_code.models.registry import build_dpae_decoder, build_dpae_encoder

__all__ = ["DPAEConfig", "DPAETask", "FrameDataset", "pick_videos", "load_frames", "frame_counts", "split_sizes",
           "split_indices", "reconstruction_metrics"]


@dataclass
class DPAEConfig:
    """The DP autoencoder training (paper values where the paper gives one)."""

    model: str = "dpae"  # registry name of both halves: dpae | dpae_tiny
    optimizer: str = "adam"  # sgd | adam | adagrad (DP-SGD / DP-Adam / DP-Adagrad when private)
    private: bool = True  # False: the paper's plain-Adam "No DP" baseline
    lr: float = 1e-5
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float | None = None  # solves the noise multiplier when set
    delta: float = 1e-5
    accountant: str = "rdp"
    batch_size: int = 50  # the paper's blocks of 50 frames (the expected Poisson batch)
    epochs: int = 50
    patience: int = 5
    quality_patience: int | None = None  # the paper's SSIM/PSNR rule (6 blocks there), in validations
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    eval_batch_size: int = 64
    seed: int = 0  # initial weights, Poisson batches, DP noise
    split_seed: int = 0  # the train / validation / test split (the same for every method)

    def settings(self) -> DPSettings:
        return DPSettings(optimizer=self.optimizer, lr=self.lr, private=self.private,
                          noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                          target_epsilon=self.target_epsilon, delta=self.delta, accountant=self.accountant)


# ------------------------------------------------------------------------------------ data


def pick_videos(items: Sequence[Any], *, per_class: int = 1, seed: int = 0) -> list[Any]:
    """``per_class`` videos of each ``class_name`` (AnomalyVideo items), drawn at random, classes sorted."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Any]] = {}
    for item in items:
        by_class.setdefault(item.class_name, []).append(item)
    out = []
    for name in sorted(by_class):
        group = sorted(by_class[name], key=lambda v: str(v.path))
        take = rng.permutation(len(group))[:per_class]
        out.extend(group[i] for i in sorted(take))
    return out


def load_frames(videos: Sequence[str | Path], *, size: tuple[int, int] | None = None, crop_scale: float = 1.0,
                stride: int = 1, max_per_video: int | None = None, batch: int = 64) -> np.ndarray:
    """Every ``stride``-th frame (at most ``max_per_video``) of each video, RGB uint8 (N, H, W, 3), cut to
    ``size`` = (H, W) as the camera cuts them (aux_code.latent_codes.frames_to_tensor, ``crop_scale``)."""
    from aux_code.latent_codes import frames_to_tensor
    from aux_code.video import iter_frames, probe

    out: list[np.ndarray] = []

    def flush(buf: list[np.ndarray]) -> None:
        if size is None:
            out.extend(buf)
            return
        x = frames_to_tensor(np.stack(buf), size=size, crop_scale=crop_scale)
        out.extend(rearrange((x * 255.0).round().clamp_(0, 255).to(torch.uint8), "t c h w -> t h w c").numpy())

    for video in videos:
        n = probe(video).num_frames
        wanted = list(range(0, n, stride))[:max_per_video]
        buf: list[np.ndarray] = []
        for f in iter_frames(video, indices=wanted):
            buf.append(f)
            if len(buf) == batch:
                flush(buf)
                buf = []
        if buf:
            flush(buf)
    if not out:
        raise ValueError(f"load_frames: no frames in {len(videos)} videos")
    return np.ascontiguousarray(np.stack(out))


def frame_counts(videos: Sequence[str | Path], *, stride: int = 1, max_per_video: int | None = None) -> list[int]:
    """How many frames :func:`load_frames` takes from each video (from the container, no decoding)."""
    from aux_code.video import probe

    return [len(list(range(0, probe(v).num_frames, stride))[:max_per_video]) for v in videos]


def split_sizes(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> tuple[int, int, int]:
    """(train, validation, test) sizes of :func:`split_indices` (validation and test at least 1 each)."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {tuple(fractions)}")
    if n < 3:
        raise ValueError(f"cannot split {n} frames into train / validation / test")
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split {tuple(fractions)} of {n} frames leaves no training frame")
    return n_train, n_val, n_test


def split_indices(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15), *, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A random split of range(n) into train / validation / test by ``fractions`` (each part non-empty)."""
    n_train, n_val, _ = split_sizes(n, fractions)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


class FrameDataset(Dataset):
    """RGB uint8 frames (N, H, W, 3) -> float (3, H, W) in [0, 1] per item."""

    def __init__(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"FrameDataset: expected RGB uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        self.frames = torch.from_numpy(np.ascontiguousarray(rearrange(frames, "n h w c -> n c h w")))

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.frames[i].float() / 255.0


@torch.no_grad()
def reconstruction_metrics(model: torch.nn.Module, frames: FrameDataset, *, batch_size: int = 64,
                           device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean MSE (the training loss), SSIM and PSNR (dB, peak 1, over frames that differ) of the reconstructions
    against their frames (the leakage measures of privacy_training.leakage; SSIM NaN below 11x11 frames)."""
    from privacy_training.leakage import psnr, ssim

    was_training = model.training
    model.eval()
    mses, ssims, psnrs = [], [], []
    try:
        for start in range(0, len(frames), batch_size):
            x = frames.frames[start : start + batch_size].to(device).float() / 255.0
            y = model(x).float()
            mses.append(((y - x) ** 2).flatten(1).mean(1).double().cpu())
            if min(x.shape[-2:]) >= 11:
                ssims.append(ssim(y, x).cpu())
            psnrs.append(psnr(y, x).cpu())
    finally:
        model.train(was_training)
    p = torch.cat(psnrs)
    p = p[torch.isfinite(p)]
    return {
        "mse": float(torch.cat(mses).mean()),
        "ssim": float(torch.cat(ssims).mean()) if ssims else math.nan,
        "psnr": float(p.mean()) if p.numel() else math.inf,
    }


# ------------------------------------------------------------------------------------ task


class DPAETask(Task):
    """Train encoder + decoder on frames with (DP-)Adam / SGD / Adagrad; select on validation MSE."""

    name = "dpae"

    def __init__(self, cfg: DPAEConfig, frames: np.ndarray, *, device: torch.device | str = "cpu",
                 precision_name: str = "fp32", split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 export_dir: str | Path | None = None, data_info: Mapping[str, Any] | None = None) -> None:
        if cfg.private and precision_name != "fp32":
            # fp16's GradScaler unscales p.grad, not Opacus's per-example p.grad_sample (the clipping
            # would act on scaled gradients); bf16 per-example gradients are untested.
            raise ValueError(f"dpae: DP training runs in fp32; precision is {precision_name!r} (set precision=fp32)")
        if cfg.patience < 1:
            raise ValueError(f"dpae: patience must be >= 1, got {cfg.patience}")
        if cfg.quality_patience is not None and cfg.quality_patience < 1:
            raise ValueError(f"dpae: quality_patience must be >= 1 or None, got {cfg.quality_patience}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.epochs = cfg.epochs
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.data_info = dict(data_info or {})  # how the frames were made: frame_size, crop_scale, videos
        stop = f"patience {cfg.patience}" + ("" if cfg.quality_patience is None
                                              else f"; SSIM/PSNR patience {cfg.quality_patience}")
        self.selection = Selection(metric="mse", mode="min",
                                   rule=f"lowest validation reconstruction MSE (early stopping: {stop})")
        train_idx, val_idx, test_idx = split if split is not None else split_indices(len(frames), cfg.split, seed=cfg.split_seed)
        self.train_set = FrameDataset(frames[train_idx])
        self.val_set = FrameDataset(frames[val_idx])
        self.test_set = FrameDataset(frames[test_idx])
        torch.manual_seed(cfg.seed)
        self.spec = {"name": cfg.model}
        self.encoder = build_dpae_encoder(**self.spec)
        self.decoder = build_dpae_decoder(**self.spec)
        self.ae = DPAutoencoder(self.encoder, self.decoder).to(self.device)
        # Validation before any work: settings, budget, layers (aux_code.dp).
        self.dp: DPTraining = make_training(self.ae, self.train_set, settings=cfg.settings(),
                                            batch_size=min(cfg.batch_size, len(self.train_set)),
                                            epochs=cfg.epochs, seed=cfg.seed)
        self.val_history: list[float] = []
        self.quality_history: list[tuple[float, float]] = []  # (ssim, psnr) per validation
        self.step_seconds: list[float] = []  # this process's steps (a resumed run times only its own)

    # -- fit.Task
    def models(self) -> dict[str, StoredModel]:
        return {"encoder": StoredModel("dpae_encoder", self.spec, self.encoder),
                "decoder": StoredModel("dpae_decoder", self.spec, self.decoder)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.dp.optimizer}

    def task_state(self) -> dict:
        return {"dp": self.dp.state_dict(), "val_history": list(self.val_history),
                "quality_history": [list(q) for q in self.quality_history],
                "frames": [len(self.train_set), len(self.val_set), len(self.test_set)]}

    def load_task_state(self, state: Mapping[str, Any]) -> None:
        sizes = [len(self.train_set), len(self.val_set), len(self.test_set)]
        if list(state.get("frames", sizes)) != sizes:
            raise ValueError(f"dpae: the checkpoint was trained on {state['frames']} train/val/test frames, "
                             f"this run has {sizes}")
        self.dp.load_state_dict(state.get("dp", {"private": self.dp.private}))
        self.val_history = [float(v) for v in state.get("val_history", [])]
        self.quality_history = [(float(a), float(b)) for a, b in state.get("quality_history", [])]

    def batches(self, epoch: int):
        return self.dp.loader

    def train_step(self, batch: Any, stepper: Stepper) -> Mapping[str, float]:
        started = time.perf_counter()
        x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(self.device)
        self.ae.train()
        with stepper.autocast():
            recon = self.dp.module(x)
        # Per-frame MSE, then the mean over the batch (0, not NaN, on an empty Poisson batch).
        loss = mean_over_batch(((recon.float() - x) ** 2).flatten(1).mean(1))
        terms = stepper.update({"loss": loss}, self.dp.optimizer)
        self.step_seconds.append(time.perf_counter() - started)
        return terms

    def validate(self, epoch: int) -> dict[str, float]:
        metrics = reconstruction_metrics(self.ae, self.val_set, batch_size=self.cfg.eval_batch_size, device=self.device)
        self.val_history.append(metrics["mse"])
        self.quality_history.append((metrics["ssim"], metrics["psnr"]))
        if self.dp.private:
            metrics["epsilon"] = self.dp.epsilon()
        return metrics

    def should_stop(self) -> bool:
        """True once ``patience`` validations in a row have not lowered the best validation MSE, or
        (``quality_patience``) ``quality_patience`` in a row have raised neither SSIM nor PSNR."""
        h, p = self.val_history, self.cfg.patience
        if len(h) > p and min(h[-p:]) >= min(h[:-p]):
            return True
        q, k = self.quality_history, self.cfg.quality_patience
        if k is None or len(q) <= k:
            return False
        ssim_best, psnr_best = (max(_finite(v[i] for v in q[:-k])) for i in (0, 1))
        return all(s <= ssim_best and r <= psnr_best for s, r in q[-k:])

    def finish(self, selected: Mapping[str, Any] | int) -> dict:
        # fit passes the selected epoch's history record (an earlier fit passed the epoch number).
        selected_epoch = int(selected["epoch"] if isinstance(selected, Mapping) else selected)
        test = reconstruction_metrics(self.ae, self.test_set, batch_size=self.cfg.eval_batch_size, device=self.device)
        steps_per_epoch = len(self.dp.loader)
        privacy: dict[str, Any] = {
            "private": self.dp.private,
            "optimizer": ("dp-" if self.dp.private else "") + self.cfg.optimizer,
            "noise_multiplier": self.dp.noise_multiplier,
            "max_grad_norm": self.cfg.max_grad_norm if self.dp.private else None,
            "sample_rate": self.dp.sample_rate,
            "delta": self.cfg.delta if self.dp.private else None,
            "accountant": self.cfg.accountant if self.dp.private else None,
            "steps": self.dp.steps_taken(),
            "epsilon": self.dp.epsilon(),  # all steps taken, so every epoch's model is covered
            "selected_epoch_steps": selected_epoch * steps_per_epoch,
        }
        if self.dp.private:
            from aux_code.dp import epsilon_for

            privacy["selected_epoch_epsilon"] = epsilon_for(
                noise_multiplier=self.dp.noise_multiplier, sample_rate=self.dp.sample_rate,
                steps=selected_epoch * steps_per_epoch, delta=self.cfg.delta, accountant=self.cfg.accountant)
        steps = np.asarray(self.step_seconds[1:] or self.step_seconds)  # the first step pays start-up costs
        results = {"test": test, "privacy": _json_safe(privacy), "dpae": _json_safe(asdict(self.cfg)),
                   "frames": {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set)},
                   "data": _json_safe(self.data_info),
                   "timing": {"steps_timed": int(len(self.step_seconds)), "train_step_s": float(sum(self.step_seconds)),
                              "step_mean_s": float(steps.mean()) if steps.size else None,
                              "frames_per_s": (float(len(self.train_set) * self.dp.sample_rate / steps.mean())
                                               if steps.size and steps.mean() > 0 else None)}}
        if self.export_dir is not None:
            results["files"] = self.export(self.export_dir, privacy=results["privacy"])
        return results

    def export(self, directory: Path, *, privacy: Mapping[str, Any]) -> dict[str, str]:
        """Write the current halves as ``encoder.pt`` (camera) and ``decoder.pt`` (server) into ``directory``."""
        from aux_code.latent_codes import DECODER_FILE, ENCODER_FILE, encoder_digest, save_half

        size = tuple(self.data_info.get("frame_size") or self.train_set.frames.shape[-2:])
        crop = float(self.data_info.get("crop_scale", 1.0))
        digest = encoder_digest(self.encoder)
        out = {}
        for half, module, name in (("encoder", self.encoder, ENCODER_FILE), ("decoder", self.decoder, DECODER_FILE)):
            out[half] = str(save_half(directory / name, half, module, self.spec, frame_size=size, crop_scale=crop,
                                      encoder_digest=digest, privacy=dict(privacy)))
        out["encoder_digest"] = digest
        return out


def _finite(values) -> list[float]:
    """The finite values (a PSNR of identical frames is inf; max() of nothing is -inf)."""
    out = [float(v) for v in values if math.isfinite(float(v))]
    return out or [-math.inf]


def _json_safe(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
