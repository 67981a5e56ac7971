"""The camera side, run as ``python -m remote.encode [--config FILE] key=value ...`` (remote/encode/__main__.py).

Loads the encoder file alone (``encoder``; a DP-AE run's ``encoder.pt``: its weights, how to
cut a frame, its digest), encodes each video into ``<paths.runs>/camera/<run.name>/codes/
<video>.dpae`` and writes ``camera.json``: per video the source, its dataset item (so the
server can draw the ground truth), the code header and what one frame costs to send
(aux_code.latent_codes.bytes_per_frame: the code against the H.264 input, a JPEG of the
input frame, a JPEG and an H.264 stream of the cut frame, raw RGB), plus the means over
videos. An input problem (a missing or wrong encoder file, a video that does not decode)
ends the run with one message and exit status 2.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from aux_code.checkpoint import CheckpointError, atomic_write_json
from aux_code.config import ConfigError, path_under, resolve_under, write_run_config
from aux_code.datasets import DatasetError
from aux_code.datasets.registry import get_anomaly_dataset
from aux_code.latent_codes import CodeFileError, bytes_per_frame, encode_video, load_half
from aux_code.runtime import run_dir_for, select_device
from aux_code.video import VideoDecodeError
from remote.config import EncodeConfig

STAGE = "camera"
INPUT_ERRORS = (CheckpointError, DatasetError, VideoDecodeError, CodeFileError)
SIZE_KEYS = ("code", "code_file", "input_video", "jpeg_input", "jpeg", "h264", "raw_rgb")


def videos_to_encode(cfg: EncodeConfig) -> list[tuple[Path, str | None]]:
    """(video file, dataset item name or None) for every video to encode, in order."""
    root = getattr(cfg.paths, cfg.data.dataset)
    if cfg.data.videos:
        out = []
        for v in cfg.data.videos:
            path = resolve_under(root, v)
            if not path.is_file():
                raise ConfigError(f"data.videos: {v!r} -> {path} is not a file")
            out.append((path, None))
        return out
    items = get_anomaly_dataset(cfg.data.dataset, root).items(cfg.data.video_split)
    return [(item.path, item.name) for item in items[: cfg.data.max_videos]]


def code_name(video: Path, item: str | None) -> str:
    """The code file's name: the dataset item's name, else the video file's stem, + .dpae."""
    return f"{item or video.stem}.dpae"


def run(cfg: EncodeConfig) -> dict:
    """Encode; returns camera.json's dict."""
    device = select_device(cfg.run.device)
    encoder_path = resolve_under(cfg.paths.runs, cfg.encoder)
    encoder, info = load_half(encoder_path, "encoder", config_key="encoder")
    encoder = encoder.to(device)
    videos = videos_to_encode(cfg)
    if not videos:
        raise ConfigError(f"no videos to encode (data.videos is empty and {cfg.data.dataset} {cfg.data.video_split} has none)")
    out_dir = run_dir_for(cfg.paths.runs, STAGE, cfg.run.name)
    codes_dir = out_dir / "codes"
    codes_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(cfg, out_dir)
    names = [code_name(v, item) for v, item in videos]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"two videos would write the same code file ({', '.join(dup[:5])}); rename them or encode them apart")
    records = []
    started = time.perf_counter()
    for (video, item), name in zip(videos, names):
        path = path_under(codes_dir, name, what="code file name")
        t0 = time.perf_counter()
        header = encode_video(video, encoder, path, size=info.frame_size, crop_scale=info.crop_scale,
                              dtype=cfg.code.dtype, batch_size=cfg.code.batch_size, device=device)
        seconds = time.perf_counter() - t0
        sizes = bytes_per_frame(video, path, crop_scale=info.crop_scale, jpeg_quality=cfg.report.jpeg_quality,
                                max_frames=cfg.report.compare_frames)
        records.append({"video": str(video), "item": item, "code_file": f"codes/{name}", "frames": header.frames,
                        "code_shape": list(header.code_shape), "dtype": header.dtype, "encode_s": seconds,
                        "bytes_per_frame": sizes})
        print(f"[{STAGE}] {name}: {header.frames} frames -> {_fmt(sizes)}", flush=True)
    mean = {k: float(np.mean([r["bytes_per_frame"][k] for r in records])) for k in SIZE_KEYS}
    summary = {
        "encoder": cfg.encoder, "encoder_digest": info.encoder_digest, "frame_size": list(info.frame_size),
        "crop_scale": info.crop_scale, "privacy": info.privacy, "dataset": None if cfg.data.videos else cfg.data.dataset,
        "split": None if cfg.data.videos else cfg.data.video_split, "videos": records, "mean_bytes_per_frame": mean,
        "ratios": {"input_video_over_code": mean["input_video"] / mean["code"], "jpeg_over_code": mean["jpeg"] / mean["code"],
                   "jpeg_input_over_code": mean["jpeg_input"] / mean["code"], "h264_over_code": mean["h264"] / mean["code"]},
        "seconds": time.perf_counter() - started, "device": str(device),
    }
    atomic_write_json(out_dir / "camera.json", summary)
    print(f"[{STAGE}] {len(records)} videos; mean bytes per frame: {_fmt(mean)}; in {out_dir}", flush=True)
    return summary


def _fmt(sizes: dict) -> str:
    return (f"code {sizes['code']:.0f} B (file {sizes['code_file']:.0f}), H.264 input {sizes['input_video']:.0f}, "
            f"JPEG of the input frame {sizes['jpeg_input']:.0f}, JPEG of the cut frame {sizes['jpeg']:.0f}, "
            f"H.264 of the cut frames {sizes['h264']:.0f}, raw {sizes['raw_rgb']:.0f}")
