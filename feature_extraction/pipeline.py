"""Stage 3: every video of an anomaly dataset -> clips -> fA -> fT pooled feature -> one .npy each.

``run(cfg)`` is the whole stage; the pieces it chains are functions with explicit
arguments, each tested alone:

1. :func:`build_jobs` lists the videos of the configured splits; :func:`resume_state`
   keeps the ones whose finished entry (manifest or journal, same producer, same source
   fingerprint, .npy present with the right row count) lets them be skipped.
2. A clip source turns pending videos into a stream of events (:class:`Clip`,
   :class:`VideoDone`, :class:`VideoFailed`): :func:`pyav_events` (decoding, boxes, crop and
   resize in DataLoader workers or a background thread) or :func:`dali_events` (DALI
   decodes ahead in its own threads; boxes, crop and resize on the model's device).
   :func:`prepare_clip` is the one place a decoded clip becomes model input, for both.
3. :func:`extract_stream` batches clips across videos through :class:`FeatureModel`
   (inference_mode; channels-last and bf16 autocast on CUDA; an inductor-compiled graph of fA
   and fT on the CPU for full-size models, ``extract.compile``) and hands each finished video
   to a :class:`FeatureWriter` (atomic .npy + a resume journal line).
4. Under torchrun every rank takes every world_size-th video; rank 0 gathers the entries and
   failures and writes manifest.json (+ train/test lists), failures.json and, when nothing
   failed, results.json as the last action.

Memory does not grow with video length: a video is decoded one clip at a time
(aux_code.video.iter_clips or DALI sequences) and only its (S, D) features accumulate; the
rest is bounded by extract.prefetch and extract.batch_size (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

import av

from aux_code.anonymizers import FrameAnonymizer, build_frame_anonymizer
from aux_code.checkpoint import CheckpointError, atomic_write_json
from aux_code.clips import clip_frame_indices, extraction_starts
from aux_code.config import config_hash, resolve_under
from aux_code.datasets import AnomalyVideo, DatasetError, dataset_digests, get_anomaly_dataset
from aux_code.features import MANIFEST, FeatureSetInfo, VideoEntry, save_features, write_manifest
from aux_code.runtime import DistInfo
from aux_code.training import start_run
from aux_code.transforms import ClipEval
from aux_code.video import VideoDecodeError, probe
from feature_extraction.config import ExtractionConfig
from feature_extraction.model import FeatureModel, clip_gflop, resolve_compile
from feature_extraction.decoders import choose_decoder, dali_available, dali_clips, pyav_clips, video_codec

STAGE = "extraction"
FAILURES = "failures.json"
RESULTS = "results.json"
JOURNAL_DIR = "journal"

# Per-video problems that are reported and skipped; anything else is a bug and stops the run.
VIDEO_ERRORS = (VideoDecodeError, DatasetError, av.FFmpegError, OSError)


# ------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class VideoJob:
    """One video to extract. ``index`` is its position in the run's full (all-rank) job list."""

    index: int
    split: str
    item: AnomalyVideo
    fingerprint: str

    @property
    def name(self) -> str:
        return self.item.name

    @property
    def file(self) -> str:
        return f"{self.item.name}.npy"


def video_fingerprint(path: str | Path, *, chunk: int = 1 << 16) -> str:
    """Short digest of a video's size, first and last 64 KiB: a changed or replaced file is re-extracted.

    Not a full hash on purpose: a resumed run re-checks every video, and reading 100 GB of
    UCF-Crime to decide that nothing changed would cost minutes.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


def build_jobs(adapter, splits: Sequence[str], *, limit: int | None = None,
               exclude: Sequence[str] = ()) -> tuple[list[VideoJob], dict[str, dict[str, str]]]:
    """(every video of ``splits`` to extract, in adapter order; the videos of those splits left out).

    Names must be unique (they name the .npy files). ``exclude`` names videos not to extract
    (each must be in one of the splits); ``limit`` keeps the first N of each split. The left-out
    videos are returned as the manifest's ``missing`` records ({"split", "why", "detail"}).
    """
    jobs: list[VideoJob] = []
    missing: dict[str, dict[str, str]] = {}
    seen: dict[str, str] = {}
    excluded = set(exclude)
    for split in splits:
        items = adapter.items(split)  # an empty split is a DatasetError of the adapter
        for i, item in enumerate(items):
            if item.name in seen:
                raise DatasetError(f"video name {item.name} appears in split {seen[item.name]} and {split}; "
                                   "feature files are named by video, names must be unique")
            seen[item.name] = split
            if item.name in excluded:
                missing[item.name] = {"split": split, "why": "excluded", "detail": "named in data.exclude"}
                continue
            if limit is not None and i >= limit:
                missing[item.name] = {"split": split, "why": "limit", "detail": f"beyond data.limit = {limit}"}
                continue
            try:
                fp = video_fingerprint(item.path)
            except OSError:
                fp = ""  # unreadable: decoding will report it as this video's failure
            jobs.append(VideoJob(index=len(jobs), split=split, item=item, fingerprint=fp))
    unknown = sorted(excluded - set(seen))
    if unknown:
        raise DatasetError(f"data.exclude names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not a "
                           f"video of the {' / '.join(splits)} split(s) of {adapter.dataset_name}")
    for split in splits:
        if not any(j.split == split for j in jobs):
            raise DatasetError(f"data.exclude leaves no video of the {split} split of {adapter.dataset_name} to extract")
    return jobs, missing


def entry_for(job: VideoJob, *, num_frames: int, num_clips: int) -> VideoEntry:
    """The manifest entry of a finished video; intervals come from the dataset's metadata."""
    intervals = [] if job.item.intervals is None else [[int(s), int(e)] for s, e in job.item.intervals]
    return VideoEntry(
        name=job.name,
        file=job.file,
        split=job.split,
        label=int(job.item.label),
        class_name=job.item.class_name,
        num_frames=int(num_frames),
        num_clips=int(num_clips),
        intervals=intervals,
        source_sha=job.fingerprint,
    )


# ------------------------------------------------------------------------------------ resume


def producer_hash(info: FeatureSetInfo) -> str:
    return config_hash(info.producer_key(), length=16)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def previous_entries(out_dir: Path, info: FeatureSetInfo) -> dict[str, VideoEntry]:
    """Entries a previous run of the same producer finished: manifest.json, then journal lines.

    Entries of another producer (a different anonymizer, checkpoint, resolution, decoder...)
    are not reused. A truncated last journal line (a crash mid-write) is ignored.
    """
    key = producer_hash(info)
    found: dict[str, VideoEntry] = {}
    manifest = _read_json(out_dir / MANIFEST)
    if isinstance(manifest, dict) and isinstance(manifest.get("videos"), dict):
        videos = manifest.pop("videos")
        manifest.pop("version", None)
        try:
            same = producer_hash(FeatureSetInfo(**manifest)) == key
        except TypeError:
            same = False
        if same:
            for name, raw in videos.items():
                try:
                    found[name] = VideoEntry(**raw)
                except TypeError:
                    continue
    journal = out_dir / JOURNAL_DIR
    for path in sorted(journal.glob("*.jsonl")) if journal.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                if record.get("producer") == key:
                    entry = VideoEntry(**record["entry"])
                    found[entry.name] = entry
            except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
                continue
    return found


def reusable(entry: VideoEntry | None, job: VideoJob, out_dir: Path) -> bool:
    """A previous entry stands for this job: same split and source, .npy with num_clips rows."""
    if entry is None or entry.split != job.split or not job.fingerprint or entry.source_sha != job.fingerprint:
        return False
    if entry.file != job.file or entry.num_clips < 1:
        return False
    try:
        rows = np.load(out_dir / entry.file, mmap_mode="r", allow_pickle=False).shape[0]
    except (OSError, ValueError):
        return False
    return rows == entry.num_clips


def resume_state(jobs: Sequence[VideoJob], out_dir: Path, info: FeatureSetInfo) -> tuple[dict[str, VideoEntry], list[VideoJob]]:
    """(entries kept from earlier runs, jobs still to extract).

    A kept entry's features stay, but its label, class and intervals are read afresh from the
    dataset: a corrected annotation file changes the manifest without re-extracting anything."""
    previous = previous_entries(out_dir, info)
    done: dict[str, VideoEntry] = {}
    pending: list[VideoJob] = []
    for job in jobs:
        entry = previous.get(job.name)
        if reusable(entry, job, out_dir):
            done[job.name] = entry_for(job, num_frames=entry.num_frames, num_clips=entry.num_clips)
        else:
            pending.append(job)
    return done, pending


# ------------------------------------------------------------------------------------ clips


def prepare_clip(
    clip: torch.Tensor,
    *,
    transform: ClipEval,
    anonymizer: FrameAnonymizer | None = None,
    boxes: Sequence[np.ndarray] | None = None,
) -> torch.Tensor:
    """A decoded clip (T, H, W, 3) uint8 RGB -> model input (C, T, r, r) float in [0, 1].

    The one place both decoders' output becomes model input: person boxes are blurred or
    blackened at the original resolution (``boxes``: one (n, 4) array per frame), then the
    centre crop and resize of ``transform``. Runs on the clip's device.
    """
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected a uint8 clip (T, H, W, 3), got {clip.dtype} {tuple(clip.shape)}")
    frames = rearrange(clip, "t h w c -> t c h w").float().div_(255.0)
    if anonymizer is not None and anonymizer.needs_boxes:
        frames = anonymizer.apply_boxes(frames, boxes)
    return transform(rearrange(frames, "t c h w -> c t h w"))


class BoxLookup:
    """Person boxes for the frames of a clip: the dataset's ground truth or HOG detections.

    ``for_video`` is called once per video (ground truth is read once), ``for_clip`` per clip.
    """

    def __init__(self, anonymizer: FrameAnonymizer | None, adapter) -> None:
        self.source = None if anonymizer is None else anonymizer.box_source
        self.anonymizer = anonymizer
        self.adapter = adapter

    def for_video(self, item: AnomalyVideo, num_frames: int) -> list[np.ndarray] | None:
        if self.source == "gt":
            return self.adapter.person_boxes(item, num_frames)
        return None

    def for_clip(self, video_boxes: list[np.ndarray] | None, start: int, clip: np.ndarray | torch.Tensor, *,
                 clip_len: int, skip: int) -> list[np.ndarray] | None:
        if self.source is None:
            return None
        if self.source == "gt":
            return [video_boxes[i] for i in clip_frame_indices(start, clip_len=clip_len, skip=skip)]
        frames = clip.cpu().numpy() if torch.is_tensor(clip) else clip
        return [self.anonymizer.detect(np.ascontiguousarray(f)) for f in frames]


@dataclass
class Clip:
    """Model input of one clip: ``data`` (C, T, r, r) float; ``k`` its position in the video."""

    job: int
    k: int
    data: torch.Tensor


@dataclass
class VideoDone:
    job: int
    num_frames: int
    num_clips: int


@dataclass
class VideoFailed:
    job: int
    error: str


Event = Clip | VideoDone | VideoFailed


@dataclass
class ClipSpec:
    clip_len: int
    skip: int
    resolution: int
    crop_scale: float


def _too_short(job: VideoJob, num_frames: int, spec: ClipSpec) -> VideoDecodeError:
    span = spec.clip_len * spec.skip
    return VideoDecodeError(job.item.path, f"has {num_frames} frames; one clip of {spec.clip_len} frames at skip "
                                           f"{spec.skip} needs {span}")


def video_events(job: VideoJob, spec: ClipSpec, *, boxes: BoxLookup, anonymizer: FrameAnonymizer | None,
                 threads: int = 1) -> Iterator[Event]:
    """PyAV: the events of one video (its clips then VideoDone, or VideoFailed at the first problem)."""
    transform = ClipEval(spec.resolution, scale=spec.crop_scale)
    try:
        num_frames = probe(job.item.path).num_frames
        expected = len(extraction_starts(num_frames, clip_len=spec.clip_len, skip=spec.skip))
        if expected == 0:
            raise _too_short(job, num_frames, spec)
        video_boxes = boxes.for_video(job.item, num_frames)
        for k, (start, clip) in enumerate(pyav_clips(job.item.path, num_frames, clip_len=spec.clip_len, skip=spec.skip,
                                                     threads=threads)):
            clip_boxes = boxes.for_clip(video_boxes, start, clip, clip_len=spec.clip_len, skip=spec.skip)
            yield Clip(job.index, k, prepare_clip(torch.from_numpy(clip), transform=transform, anonymizer=anonymizer,
                                                  boxes=clip_boxes))
        yield VideoDone(job.index, num_frames, expected)
    except VIDEO_ERRORS as e:
        yield VideoFailed(job.index, f"{type(e).__name__}: {e}")


class PyAVClipStream(IterableDataset):
    """The events of ``jobs``; inside DataLoader workers each worker takes every n-th video."""

    def __init__(self, jobs: Sequence[VideoJob], spec: ClipSpec, *, boxes: BoxLookup,
                 anonymizer: FrameAnonymizer | None, threads: int = 1) -> None:
        self.jobs = list(jobs)
        self.spec = spec
        self.boxes = boxes
        self.anonymizer = anonymizer
        self.threads = threads

    def __iter__(self) -> Iterator[Event]:
        worker = get_worker_info()
        jobs = self.jobs if worker is None else self.jobs[worker.id :: worker.num_workers]
        for job in jobs:
            yield from video_events(job, self.spec, boxes=self.boxes, anonymizer=self.anonymizer, threads=self.threads)


def _identity_collate(item):
    return item


class _Stop(Exception):
    pass


def background(iterable: Iterable, depth: int) -> Iterator:
    """Iterate ``iterable`` in a daemon thread, ``depth`` items ahead (decoding overlaps the model).

    PyAV decoding and torch ops release the GIL, so the thread runs while the model computes.
    An exception in the thread is re-raised in the consumer; a consumer that stops early stops
    the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def produce() -> None:
        try:
            for item in iterable:
                put(item)
            put(end)
        except _Stop:
            pass
        except BaseException as e:  # handed to the consumer, which re-raises it
            try:
                put(("__error__", e))
            except _Stop:
                pass

    thread = threading.Thread(target=produce, name="clip-decoder", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, tuple) and len(item) == 2 and item[0] == "__error__":
                raise item[1]
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def pyav_events(jobs: Sequence[VideoJob], spec: ClipSpec, *, boxes: BoxLookup, anonymizer: FrameAnonymizer | None,
                workers: int, prefetch: int, thread: bool, threads: int = 1) -> Iterator[Event]:
    """The PyAV event stream: ``workers`` DataLoader processes, else a background thread (or inline)."""
    if not jobs:
        return iter(())
    stream = PyAVClipStream(jobs, spec, boxes=boxes, anonymizer=anonymizer, threads=threads)
    if workers > 0:
        loader = DataLoader(stream, batch_size=None, num_workers=min(workers, len(jobs)),
                            collate_fn=_identity_collate, prefetch_factor=prefetch, persistent_workers=False)
        return iter(loader)
    return background(stream, prefetch) if thread else iter(stream)


def dali_events(jobs: Sequence[VideoJob], spec: ClipSpec, *, boxes: BoxLookup, anonymizer: FrameAnonymizer | None,
                device: str, device_id: int | None, batch_size: int, threads: int, prefetch: int,
                target: torch.device, fallback: Callable[[Sequence[VideoJob]], Iterator[Event]]) -> Iterator[Event]:
    """The DALI event stream: probe (unreadable files fail here), then DALI's reader over the rest.

    Clips are prepared on ``target`` (the model's device). A DALI error mid-run fails the video
    being read and hands the videos not yet started to ``fallback`` (PyAV).
    """
    transform = ClipEval(spec.resolution, scale=spec.crop_scale)
    ready: list[tuple[VideoJob, int]] = []
    for job in jobs:
        try:
            n = probe(job.item.path).num_frames
            if not extraction_starts(n, clip_len=spec.clip_len, skip=spec.skip):
                raise _too_short(job, n, spec)
            ready.append((job, n))
        except VIDEO_ERRORS as e:
            yield VideoFailed(job.index, f"{type(e).__name__}: {e}")
    unfinished = 0  # position in ready of the first video without its VideoDone yet
    current, count, video_boxes, skipped = -1, 0, None, False
    try:
        for c in dali_clips([j.item.path for j, _ in ready], [n for _, n in ready], clip_len=spec.clip_len,
                            skip=spec.skip, device=device, device_id=device_id, batch_size=batch_size,
                            num_threads=threads, prefetch=prefetch):
            job, n = ready[c.file_index]
            if c.file_index != current:
                current, count, skipped = c.file_index, 0, False
                try:
                    video_boxes = boxes.for_video(job.item, n)
                except DatasetError as e:  # e.g. missing ground-truth boxes: this video only
                    skipped = True
                    yield VideoFailed(job.index, f"{type(e).__name__}: {e}")
            if not skipped:
                frames = c.frames.to(target, non_blocking=True)
                clip_boxes = boxes.for_clip(video_boxes, c.start, frames, clip_len=spec.clip_len, skip=spec.skip)
                yield Clip(job.index, count, prepare_clip(frames, transform=transform, anonymizer=anonymizer,
                                                          boxes=clip_boxes))
                count += 1
                if c.last:
                    yield VideoDone(job.index, n, count)
            if c.last:
                unfinished = current + 1
    except (RuntimeError, *VIDEO_ERRORS) as e:  # DecoderError is a RuntimeError
        if unfinished < len(ready):
            yield VideoFailed(ready[unfinished][0].index, f"DALI: {type(e).__name__}: {e}")
        rest = [job for job, _ in ready[unfinished + 1 :]]
        if rest:
            print(f"DALI failed ({type(e).__name__}: {e}); decoding the remaining {len(rest)} videos with PyAV", flush=True)
            yield from fallback(rest)


# ------------------------------------------------------------------------------------ model


# ------------------------------------------------------------------------------------ batching


@dataclass
class StreamStats:
    clips: int = 0
    videos: int = 0
    failed: int = 0
    model_seconds: float = 0.0


def extract_stream(
    events: Iterable[Event],
    model: Callable[[torch.Tensor], np.ndarray],
    *,
    batch_size: int,
    on_done: Callable[[int, np.ndarray, int], None],
    on_failed: Callable[[int, str], None],
) -> StreamStats:
    """Batch clips across videos through ``model`` and hand each finished video over.

    ``on_done(job, features (S, D) float32, num_frames)`` is called once all S clips of a
    video went through the model; ``on_failed(job, error)`` once for a video that failed
    (its partial features are dropped). Events of one video arrive in clip order; videos
    may interleave (several workers).
    """
    stats = StreamStats()
    rows: dict[int, dict[int, np.ndarray]] = {}
    finished: dict[int, tuple[int, int]] = {}  # job -> (num_frames, num_clips), waiting for rows
    failed: set[int] = set()
    batch: list[Clip] = []

    def complete(job: int) -> None:
        num_frames, num_clips = finished[job]
        got = rows.get(job, {})
        if len(got) < num_clips:
            return
        feats = np.stack([got[k] for k in range(num_clips)]).astype(np.float32, copy=False)
        del finished[job]
        rows.pop(job, None)
        stats.videos += 1
        on_done(job, feats, num_frames)

    def flush() -> None:
        if not batch:
            return
        started = time.perf_counter()
        feats = model(torch.stack([c.data for c in batch]))
        stats.model_seconds += time.perf_counter() - started
        stats.clips += len(batch)
        touched = set()
        for c, f in zip(batch, feats):
            if c.job in failed:
                continue
            rows.setdefault(c.job, {})[c.k] = f
            touched.add(c.job)
        batch.clear()
        for job in touched:
            if job in finished:
                complete(job)

    for event in events:
        if isinstance(event, Clip):
            batch.append(event)
            if len(batch) >= batch_size:
                flush()
        elif isinstance(event, VideoDone):
            finished[event.job] = (event.num_frames, event.num_clips)
            complete(event.job)
        elif isinstance(event, VideoFailed):
            failed.add(event.job)
            rows.pop(event.job, None)
            stats.failed += 1
            on_failed(event.job, event.error)
        else:
            raise TypeError(f"unexpected event {type(event).__name__}")
    flush()
    if finished:
        names = ", ".join(str(j) for j in sorted(finished))
        raise RuntimeError(f"videos {names} ended with fewer clip features than announced")
    return stats


# ------------------------------------------------------------------------------------ output


class FeatureWriter:
    """Writes each finished video's .npy atomically and journals its entry for resuming."""

    def __init__(self, out_dir: Path, jobs: Sequence[VideoJob], *, producer: str, rank: int, journal_every: int = 1):
        self.out_dir = out_dir
        self.jobs = {j.index: j for j in jobs}
        self.producer = producer
        self.journal = out_dir / JOURNAL_DIR / f"rank{rank}.jsonl"
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.journal_every = journal_every
        self.entries: dict[str, VideoEntry] = {}
        self.failures: list[dict] = []
        self._unjournaled: list[VideoEntry] = []

    def done(self, job_index: int, feats: np.ndarray, num_frames: int) -> None:
        job = self.jobs[job_index]
        save_features(self.out_dir / job.file, feats)
        entry = entry_for(job, num_frames=num_frames, num_clips=feats.shape[0])
        self.entries[job.name] = entry
        self._unjournaled.append(entry)
        if len(self._unjournaled) >= self.journal_every:
            self.flush_journal()

    def failed(self, job_index: int, error: str) -> None:
        job = self.jobs[job_index]
        self.failures.append({"name": job.name, "split": job.split, "path": str(job.item.path), "error": error})
        print(f"failed: {job.name}: {error}", flush=True)

    def flush_journal(self) -> None:
        if not self._unjournaled:
            return
        lines = "".join(json.dumps({"producer": self.producer, "entry": asdict(e)}) + "\n" for e in self._unjournaled)
        with open(self.journal, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self._unjournaled.clear()


def _gather(obj: Any, dist: DistInfo) -> list[Any]:
    if not dist.distributed:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------ models from config


def check_model_files(cfg: ExtractionConfig) -> None:
    """Every model file the config names exists (CheckpointError naming the key otherwise)."""
    files = cfg.utility.files(cfg.paths)
    if cfg.anonymizer.method == "unet" and cfg.anonymizer.checkpoint:
        files.append(("anonymizer.checkpoint", resolve_under(cfg.paths.runs, cfg.anonymizer.checkpoint)))
    for key, path in files:
        if not path.is_file():
            raise CheckpointError(f"{key} = {path} does not exist (expected a checkpoint file; stage-1 checkpoints "
                                  "resolve under paths.runs, weights files under paths.weights)")


def feature_set_info(cfg: ExtractionConfig, fa: FrameAnonymizer, utility: nn.Module, utility_info: dict,
                     decoder: str) -> FeatureSetInfo:
    return FeatureSetInfo(
        dataset=cfg.data.dataset,
        backbone=str(utility_info["name"]),
        feature_dim=int(utility.feature_dim),
        clip_len=cfg.clip.clip_len,
        skip=cfg.clip.skip,
        resolution=cfg.clip.resolution,
        decoder=decoder,
        anonymizer=fa.describe(),
        utility=dict(utility_info, crop_scale=cfg.clip.crop_scale),
    )


def _decoder_family(decoder: str) -> str:
    """Producer key of the decoder: the two DALI backends decode the same bitstreams alike."""
    return "dali" if decoder.startswith("dali") else decoder


# ------------------------------------------------------------------------------------ the stage


def run(cfg: ExtractionConfig) -> int:
    """Extract features for every configured video; returns 0, or 1 when any video failed."""
    started = time.perf_counter()
    # Input problems stop the run before its directory is created.
    check_model_files(cfg)
    root = getattr(cfg.paths, cfg.data.dataset)
    adapter = get_anomaly_dataset(cfg.data.dataset, root)
    jobs, left_out = build_jobs(adapter, cfg.data.splits, limit=cfg.data.limit, exclude=cfg.data.exclude)
    ctx = start_run(cfg, stage=STAGE, tensorboard=False)
    dist, device, out_dir = ctx.dist, ctx.device, ctx.run_dir
    mine = jobs[dist.rank :: dist.world_size]

    fa = build_frame_anonymizer(cfg.anonymizer, runs_root=cfg.paths.runs, device="cpu")
    utility, utility_info = cfg.utility.load(cfg.paths)
    cuda = device.type == "cuda"
    # Codecs only matter when DALI could be chosen; reading them opens every video.
    wants_dali = cfg.extract.decoder == "dali" or (cfg.extract.decoder == "auto" and cuda and dali_available())
    codecs = sorted({c for c in (video_codec(j.item.path) for j in mine) if c}) if wants_dali else []
    decoder = choose_decoder(cfg.extract.decoder, cuda=cuda, codecs=codecs)
    info = feature_set_info(cfg, fa, utility, utility_info, _decoder_family(decoder))
    info.dataset_files = dataset_digests(cfg.data.dataset, root)
    producer = producer_hash(info)

    if dist.distributed:
        torch.distributed.barrier()  # every rank reads the journals before anyone appends
    kept, pending = resume_state(mine, out_dir, info) if cfg.run.resume else ({}, list(mine))
    writer = FeatureWriter(out_dir, mine, producer=producer, rank=dist.rank, journal_every=cfg.extract.journal_every)
    if dist.is_main:
        print(f"extraction: {len(jobs)} videos of {cfg.data.dataset} ({', '.join(cfg.data.splits)}), "
              f"{len(kept)} finished earlier, {len(pending)} to extract on rank 0 of {dist.world_size}; "
              f"decoder {decoder}, anonymizer {fa.method}, fT {utility_info['name']} (D={info.feature_dim}), "
              f"device {device}", flush=True)

    spec = ClipSpec(cfg.clip.clip_len, cfg.clip.skip, cfg.clip.resolution, cfg.clip.crop_scale)
    boxes = BoxLookup(fa, adapter)
    box_fa = fa if fa.needs_boxes else None

    def pyav(js: Sequence[VideoJob]) -> Iterator[Event]:
        return pyav_events(js, spec, boxes=boxes, anonymizer=box_fa, workers=cfg.run.num_workers,
                           prefetch=cfg.extract.prefetch, thread=cfg.extract.background_thread,
                           threads=cfg.extract.decode_threads)

    if decoder.startswith("dali"):
        events = dali_events(pending, spec, boxes=boxes, anonymizer=box_fa, device=decoder.split("-")[1],
                             device_id=device.index if device.type == "cuda" else None,
                             batch_size=cfg.extract.batch_size, threads=cfg.extract.dali_threads,
                             prefetch=cfg.extract.prefetch, target=device, fallback=pyav)
    else:
        events = pyav(pending)

    gflop = None
    if cfg.extract.compile == "auto":
        try:
            gflop = clip_gflop(fa.model, utility, (3, cfg.clip.clip_len, cfg.clip.resolution, cfg.clip.resolution))
        except (RuntimeError, ValueError) as e:  # e.g. a model that refuses the probe's size: stay eager
            print(f"extraction: could not count the model's FLOPs ({type(e).__name__}: {e}); eager", flush=True)
    model = FeatureModel(fa.model, utility, device=device, precision=cfg.precision,
                         channels_last=cfg.extract.channels_last, frames_per_pass=cfg.extract.frames_per_pass,
                         compile=resolve_compile(cfg.extract.compile, device, gflop),
                         eager_fallback=cfg.extract.compile == "auto")
    if dist.is_main:
        cost = f", {gflop:.1f} GFLOP per clip" if gflop is not None else ""
        print(f"extraction: model path {model.path}{cost}", flush=True)
    progress = tqdm(total=len(pending), unit="video", disable=not dist.is_main, desc="extracting")

    def done(job: int, feats: np.ndarray, num_frames: int) -> None:
        writer.done(job, feats, num_frames)
        progress.update(1)

    def failed(job: int, error: str) -> None:
        writer.failed(job, error)
        progress.update(1)

    loop_start = time.perf_counter()
    stats = extract_stream(events, model, batch_size=cfg.extract.batch_size, on_done=done, on_failed=failed)
    loop_seconds = time.perf_counter() - loop_start
    progress.close()
    writer.flush_journal()

    failures = _write_outputs(cfg, ctx, jobs=jobs, left_out=left_out, info=info, kept=kept, writer=writer, stats=stats,
                              loop_seconds=loop_seconds, started=started, decoder=decoder, anonymizer=fa.method,
                              model=model)
    ctx.finish()
    return 1 if failures else 0


def _write_outputs(cfg: ExtractionConfig, ctx, *, jobs: list, left_out: dict, info: FeatureSetInfo, kept: dict,
                   writer: FeatureWriter, stats, loop_seconds: float, started: float, decoder: str, anonymizer: str,
                   model: FeatureModel) -> list[dict]:
    """Gather every rank's entries; rank 0 writes manifest.json (entries, and every video of the splits
    without one in ``missing``), failures.json and (only when nothing failed, as the last action)
    results.json, and prints the summary. Returns the failures."""
    dist, out_dir = ctx.dist, ctx.run_dir
    gathered = _gather({"entries": {**kept, **writer.entries}, "failures": writer.failures, "clips": stats.clips,
                        "videos": stats.videos, "model_seconds": stats.model_seconds, "seconds": loop_seconds}, dist)
    entries = {name: e for part in gathered for name, e in part["entries"].items()}
    failures = sorted((f for part in gathered for f in part["failures"]), key=lambda f: f["name"])
    clips = sum(part["clips"] for part in gathered)
    extracted = sum(part["videos"] for part in gathered)
    seconds = max(part["seconds"] for part in gathered)
    if dist.is_main:
        info.videos = {name: entries[name] for name in sorted(entries)}
        failed = {f["name"]: {"split": f["split"], "why": "failed", "detail": str(f["error"])} for f in failures}
        info.missing = dict(sorted({**left_out, **failed}.items()))
        write_manifest(out_dir, info)
        atomic_write_json(out_dir / FAILURES, failures, default=str)
        (out_dir / RESULTS).unlink(missing_ok=True)
    if dist.distributed:
        torch.distributed.barrier()
    if dist.is_main and not failures:
        # The manifest now holds every entry: the journals are redundant.
        for path in (out_dir / JOURNAL_DIR).glob("*.jsonl"):
            path.unlink()
    total_seconds = time.perf_counter() - started
    summary = {
        "dataset": cfg.data.dataset,
        "videos": len(jobs),
        "extracted": extracted,
        "resumed": len(jobs) - extracted - len(failures),
        "failed": len(failures),
        "left_out": {name: m["why"] for name, m in sorted(left_out.items())},
        "clips": clips,
        "clips_per_s": round(clips / seconds, 2) if clips and seconds > 0 else None,
        "extract_seconds": round(seconds, 3),
        "model_seconds": round(max(part["model_seconds"] for part in gathered), 3),
        # Rank 0's: every rank runs the same path; the first compiled call includes the compile.
        "model_path": model.path,
        "compile_seconds": None if model.compile_seconds is None else round(model.compile_seconds, 2),
        "total_seconds": round(total_seconds, 3),
        "feature_dim": info.feature_dim,
        "decoder": decoder,
        "anonymizer": anonymizer,
        "backbone": info.backbone,
        "world_size": dist.world_size,
        "feature_dir": str(out_dir),
        "config_hash": config_hash(cfg),
    }
    if dist.is_main:
        ctx.logger.log(0, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, phase="summary")
        speed = (f"{clips} clips at {summary['clips_per_s']} clips/s" if summary["clips_per_s"] is not None
                 else "nothing left to extract")
        excluded = f", {len(left_out)} left out ({', '.join(sorted({m['why'] for m in left_out.values()}))})" if left_out else ""
        print(f"extraction done in {total_seconds:.1f} s: {extracted} extracted, {summary['resumed']} finished earlier, "
              f"{len(failures)} failed{excluded}; {speed} -> {out_dir}", flush=True)
        if failures:
            print(f"{len(failures)} video(s) failed (listed in {out_dir / FAILURES}):", flush=True)
            for f in failures:
                print(f"  {f['name']}: {f['error']}", flush=True)
        else:
            atomic_write_json(out_dir / RESULTS, summary, default=str)  # last action: marks the run complete
    return failures

