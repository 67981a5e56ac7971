"""The server side, run as ``python -m remote.score [--config FILE] key=value ...`` (remote/score/__main__.py).

Holds the decoder file alone (``decoder``: the decoder and the digest of the encoder it was
trained with), the utility model fT (``utility``) and a stage-4 detector (``detector``). For
every code file of ``codes`` (a remote.encode run directory: ``codes/*.dpae``):

1. every header is checked before any decoding (format version, code shape against the
   decoder, the writing encoder's digest against the decoder's pair), naming the file;
2. the codes are decoded to frames; clips of ``clip.clip_len`` frames at ``clip.skip``,
   non-overlapping as stage 3 cuts them (aux_code.clips), go through ``clip``'s crop /
   resize and fT: one feature per clip, the features stage 3 extracts with the ``dpae``
   anonymizer from the same video;
3. the detector scores the clips (``eval.causal``: clip t from clips 0..t only), the
   sigmoidal anomaly score (SAS) runs over the clip scores, and an alarm is raised where
   SAS first exceeds ``eval.sas.threshold`` (``alarm_frame``: the frames seen by then);
4. one line per video is printed, ``score.json`` gets every clip score and SAS value, and a
   PNG per video shows them over the frames (ground truth shaded when camera.json names a
   dataset item the paths file can read).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from aux_code.checkpoint import CheckpointError, atomic_write_json
from aux_code.clips import clip_frame_indices, extraction_starts
from aux_code.config import ConfigError, path_under, resolve_under, write_run_config
from aux_code.datasets import DatasetError
from aux_code.latent_codes import CodeFileError, decode_codes, load_half, read_header
from aux_code.metrics import frame_auc, sigmoidal_anomaly_score, video_level_f1
from aux_code.models.anonymizer import IdentityAnonymizer
from aux_code.models.stored import load_stored_model
from aux_code.runtime import run_dir_for, select_device
from aux_code.segments import append_magnitude, expand_clip_scores, frame_ground_truth
from aux_code.transforms import ClipEval
from aux_code.video import VideoDecodeError
from remote.config import ScoreConfig

STAGE = "server"
INPUT_ERRORS = (CheckpointError, CodeFileError, DatasetError, VideoDecodeError)


def code_files(cfg: ScoreConfig) -> tuple[Path, list[Path]]:
    """(the received folder, its code files in name order); refused when there are none."""
    folder = path_under(cfg.paths.runs, cfg.codes, what="codes")
    files = sorted((folder / "codes").glob("*.dpae"))
    if not files:
        raise ConfigError(f"codes = {cfg.codes!r}: {folder / 'codes'} holds no .dpae code files (run python -m remote.encode first)")
    return folder, files


def check_headers(files: list[Path], *, expected_digest: str, code_channels: int) -> dict[Path, Any]:
    """Every file's header, checked against the decoder before any decoding (CodeFileError naming the file)."""
    headers = {}
    for f in files:
        h = read_header(f)
        if h.code_shape[0] != code_channels:
            raise CodeFileError(f, f"holds codes of shape {h.code_shape}; this decoder takes {code_channels} code channels")
        if h.encoder_digest != expected_digest:
            raise CodeFileError(f, f"was written by encoder {h.encoder_digest[:12]}; this decoder is paired with encoder "
                                   f"{expected_digest[:12]}")
        headers[f] = h
    return headers


@torch.inference_mode()
def clip_features(frames: torch.Tensor, utility: torch.nn.Module, *, clip_len: int, skip: int, resolution: int,
                  crop_scale: float, batch_size: int = 16, device: torch.device | str = "cpu") -> np.ndarray:
    """Reconstructed frames (T, 3, h, w) in [0, 1] -> fT features (S, D), S = T // (clip_len * skip) clips cut as stage 3 cuts them."""
    transform = ClipEval(resolution, scale=crop_scale)
    starts = extraction_starts(frames.shape[0], clip_len=clip_len, skip=skip)
    if not starts:
        raise ValueError(f"{frames.shape[0]} frames hold no clip of {clip_len} frames at skip {skip}")
    clips = [transform(rearrange(frames[clip_frame_indices(s, clip_len=clip_len, skip=skip)], "t c h w -> c t h w"))
             for s in starts]
    from feature_extraction.pipeline import FeatureModel

    model = FeatureModel(IdentityAnonymizer(), utility, device=torch.device(device), precision="fp32")
    return np.concatenate([model(torch.stack(clips[i:i + batch_size])) for i in range(0, len(clips), batch_size)])


@torch.inference_mode()
def detector_scores(detector: torch.nn.Module, features: np.ndarray, *, causal: bool,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Clip scores (S,) in [0, 1] of features (S, D); ``causal``: clip t scored on clips 0..t alone."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    x = rearrange(append_magnitude(rearrange(x, "s d -> s 1 d")), "s n c -> 1 n s c")
    detector.eval()
    if not causal:
        return detector(x).scores[0].double().cpu().numpy()
    return np.array([float(detector(x[:, :, : t + 1]).scores[0, -1]) for t in range(x.shape[2])])


def ground_truth(folder: Path, cfg: ScoreConfig) -> dict[str, tuple[int, tuple]]:
    """Code file name -> (video label, abnormal frame intervals) from camera.json's dataset items,
    where the paths file points at that dataset; {} when camera.json names none."""
    record = folder / "camera.json"
    if not record.is_file():
        return {}
    camera = json.loads(record.read_text())
    dataset, split = camera.get("dataset"), camera.get("split")
    if not dataset or not Path(getattr(cfg.paths, dataset, "")).is_dir():
        return {}
    from aux_code.datasets.registry import get_anomaly_dataset

    items = {item.name: item for item in get_anomaly_dataset(dataset, getattr(cfg.paths, dataset)).items(split)}
    out = {}
    for v in camera.get("videos", []):
        item = items.get(v.get("item"))
        if item is not None and item.intervals is not None:
            out[Path(v["code_file"]).name] = (int(item.label), tuple(item.intervals))
    return out


def plot_scores(path: Path, name: str, clip_scores: np.ndarray, sas: np.ndarray, *, clip_span: int, threshold: float,
                intervals: tuple | None) -> Path:
    """One PNG: clip score and SAS over the covered frames, the alarm threshold, ground truth shaded when known."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    frames = expand_clip_scores(clip_scores, clip_span=clip_span)
    x = np.arange(frames.size)
    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=100)
    if intervals:
        gt = frame_ground_truth(intervals, frames.size)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], gt, [0]])))
        for start, end in zip(edges[::2], edges[1::2]):
            ax.axvspan(start, end, color="tab:red", alpha=0.2, lw=0)
    ax.plot(x, frames, lw=1.2, color="tab:blue", label="detector clip score")
    ax.plot(x, expand_clip_scores(sas, clip_span=clip_span), lw=1.0, ls="--", color="tab:orange", label="SAS (online)")
    ax.axhline(threshold, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, max(frames.size, 1))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("frame")
    ax.set_title(name, fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(cfg: ScoreConfig) -> dict:
    """Score every received code file; returns score.json's dict."""
    device = select_device(cfg.run.device)
    decoder_path = resolve_under(cfg.paths.runs, cfg.decoder)
    decoder, dec_info = load_half(decoder_path, "decoder", config_key="decoder")
    folder, files = code_files(cfg)
    headers = check_headers(files, expected_digest=dec_info.encoder_digest, code_channels=decoder.code_channels)
    utility, utility_info = cfg.utility.load(cfg.paths)
    detector, _ = load_stored_model(resolve_under(cfg.paths.runs, cfg.detector.checkpoint), cfg.detector.model_key,
                                    config_key="detector.checkpoint")
    decoder, utility, detector = decoder.to(device), utility.to(device), detector.to(device)
    truth = ground_truth(folder, cfg)
    out_dir = run_dir_for(cfg.paths.runs, STAGE, cfg.run.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(cfg, out_dir)
    sas_cfg = cfg.eval.sas
    clip_span = cfg.clip.clip_len * cfg.clip.skip
    # Anomalous videos first (where the ground truth is known), as stage 4 picks the videos it plots.
    by_interest = sorted(files, key=lambda f: (truth.get(f.name, (None,))[0] != 1, f.name))
    plotted = set(by_interest if cfg.eval.plot_videos is None else by_interest[: cfg.eval.plot_videos])
    videos, timing = [], {"decode_s": 0.0, "features_s": 0.0, "detector_s": 0.0, "frames": 0, "clips": 0}
    for f in files:
        t0 = time.perf_counter()
        frames = decode_codes(f, decoder, expected_encoder_digest=dec_info.encoder_digest, device=device)
        t1 = time.perf_counter()
        feats = clip_features(frames, utility, clip_len=cfg.clip.clip_len, skip=cfg.clip.skip,
                              resolution=cfg.clip.resolution, crop_scale=cfg.clip.crop_scale, device=device)
        t2 = time.perf_counter()
        scores = detector_scores(detector, feats, causal=cfg.eval.causal, device=device)
        t3 = time.perf_counter()
        sas = sigmoidal_anomaly_score(scores, tau=sas_cfg.tau, v=sas_cfg.v, upper=sas_cfg.upper, lower=sas_cfg.lower)
        above = np.flatnonzero(sas > sas_cfg.threshold)
        alarm = None if above.size == 0 else int(above[0])
        label, intervals = truth.get(f.name, (None, None))
        record: dict[str, Any] = {"code_file": f.name, "frames": headers[f].frames, "clips": int(scores.size),
                                  "clip_scores": scores.tolist(), "sas": sas.tolist(), "alarm_clip": alarm,
                                  "alarm_frame": None if alarm is None else (alarm + 1) * clip_span, "label": label}
        if intervals is not None:
            gt = frame_ground_truth(intervals, scores.size * clip_span)
            if 0 < gt.sum() < gt.size:
                record["frame_auc"] = frame_auc(gt, expand_clip_scores(scores, clip_span=clip_span))
        if f in plotted:
            record["plot"] = str(plot_scores(out_dir / "plots" / f"{f.stem}.png", f.stem, scores, sas, clip_span=clip_span,
                                             threshold=sas_cfg.threshold, intervals=intervals).relative_to(out_dir))
        videos.append(record)
        timing["decode_s"] += t1 - t0
        timing["features_s"] += t2 - t1
        timing["detector_s"] += t3 - t2
        timing["frames"] += headers[f].frames
        timing["clips"] += int(scores.size)
        state = "no alarm" if alarm is None else f"ALARM after frame {(alarm + 1) * clip_span} (clip {alarm})"
        truth_text = "" if label is None else f"; truth: {'anomalous' if label else 'normal'}"
        print(f"[{STAGE}] {f.stem}: {scores.size} clips, max score {scores.max():.3f}, max SAS {sas.max():.3f}: "
              f"{state}{truth_text}", flush=True)
    labelled = [v for v in videos if v["label"] is not None]
    summary: dict[str, Any] = {
        "codes": cfg.codes, "decoder": cfg.decoder, "utility": utility_info, "detector": cfg.detector.checkpoint,
        "causal": cfg.eval.causal, "sas": {k: getattr(sas_cfg, k) for k in ("tau", "v", "upper", "lower", "threshold")},
        "privacy": dec_info.privacy, "videos": videos, "alarms": sum(v["alarm_clip"] is not None for v in videos),
        "timing": timing, "device": str(device),
    }
    if labelled and len(labelled) == len(videos):
        summary["video_level_f1"] = video_level_f1([np.asarray(v["sas"]) for v in videos], [v["label"] for v in videos],
                                                   threshold=sas_cfg.threshold)
    atomic_write_json(out_dir / "score.json", summary)
    f1 = "" if "video_level_f1" not in summary else f", video-level F1 {summary['video_level_f1']:.3f}"
    print(f"[{STAGE}] {len(videos)} videos, {summary['alarms']} alarms{f1}; decode {1e3 * timing['decode_s'] / max(timing['frames'], 1):.2f} "
          f"ms/frame, features {1e3 * timing['features_s'] / max(timing['clips'], 1):.1f} ms/clip; in {out_dir}", flush=True)
    return summary
