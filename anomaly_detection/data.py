"""Training and evaluation data of stage 4, read from a feature set's manifest.

Every label, split and anomalous interval comes from manifest.json (copied from the
dataset's metadata at extraction time); the train/test list files are never read, so
their order cannot decide a label (REFERENCE.md section 7).

Layouts (crops = 1 for single-crop features; the crop axis is always present inside
this stage so single- and 10-crop sets share one code path):

- training videos: resampled once, at load time, to (crops, T, D + 1) float32 with
  T = num_segments and the L2 magnitude as the last channel; one tensor per class,
  (N, crops, T, D + 1), from which a step gathers its batch by index;
- evaluation videos: the full clip sequence (S, crops, D) float32, S = num_clips, never
  resampled: a clip's score is repeated over the clip_len * skip frames it covers.

Every input problem is found here, before any training: a feature dimension that is not
the configured one, a class without training videos, an anomalous test video without an
annotation, a non-finite feature, a manifest whose clips do not fit its frame counts, a
feature set with videos missing that nobody accounted for (:func:`account_for_missing`), and
labels read from dataset files that have changed since (:func:`check_dataset_files`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import DistributedSampler

from aux_code.checkpoint import file_digest
from aux_code.features import FeatureSetInfo, VideoEntry, load_video_features, read_manifest
from aux_code.segments import append_magnitude, process_feat


class AnomalyDataError(ValueError):
    """A feature set that cannot be trained or evaluated on as configured."""


@dataclass
class EvalVideo:
    """A validation or test video: full-length clip features and its frame annotation.

    features: (S, crops, D) float32 when cached, else None (re-read on demand).
    intervals: half-open [start, end) anomalous frame ranges from the manifest.
    """

    name: str
    label: int
    num_clips: int
    intervals: list[list[int]]
    entry: VideoEntry
    features: np.ndarray | None = None


@dataclass
class TrainSet:
    """Resampled training videos per class: (N, crops, T, D + 1) float32 tensors."""

    normal: torch.Tensor
    abnormal: torch.Tensor
    normal_names: list[str]
    abnormal_names: list[str]


@dataclass
class AnomalyData:
    """Everything the training loop and the evaluator read from one feature set."""

    feature_dir: Path
    info: FeatureSetInfo
    feature_dim: int
    crops: int
    clip_span: int  # raw frames one clip covers: clip_len * skip, from the manifest
    train: TrainSet
    validation: list[EvalVideo]
    test: list[EvalVideo]
    # Videos of the dataset's splits not used, each {"name", "split", "why", "detail"} (account_for_missing),
    # and whether any of them was accepted only by data.allow_partial (the result is then partial).
    left_out: list[dict] = field(default_factory=list)
    partial: bool = False
    # The dataset root the manifest's dataset_files were checked against (None: not checked).
    dataset_files_checked: str | None = None

    def eval_features(self, video: EvalVideo) -> np.ndarray:
        """(S, crops, D) float32 features of an evaluation video, from memory or disk."""
        if video.features is not None:
            return video.features
        return _load_checked(self.feature_dir, video.entry, self.feature_dim, self.crops)

    def counts(self) -> dict[str, int]:
        return {
            "train_normal": len(self.train.normal_names),
            "train_abnormal": len(self.train.abnormal_names),
            "validation": len(self.validation),
            "test_normal": sum(v.label == 0 for v in self.test),
            "test_abnormal": sum(v.label == 1 for v in self.test),
        }


# --------------------------------------------------------------------------- checks


def _load_checked(feature_dir: Path, entry: VideoEntry, feature_dim: int, crops: int) -> np.ndarray:
    """One video's features as (S, crops, D), with the manifest's crop layout enforced."""
    feats = load_video_features(feature_dir, entry, feature_dim=feature_dim)
    if crops == 1 and feats.ndim == 2:
        return rearrange(feats, "s d -> s 1 d")
    if feats.ndim == 3 and feats.shape[1] == crops:
        return feats
    expected = f"(S, {feature_dim})" if crops == 1 else f"(S, {crops}, {feature_dim})"
    raise AnomalyDataError(
        f"video {entry.name}: features shaped {feats.shape}, expected {expected} "
        f"(the manifest says crops = {crops}) in {feature_dir / entry.file}"
    )


def _check_entry(entry: VideoEntry, clip_span: int, manifest: Path) -> None:
    if entry.split not in ("train", "test"):
        raise AnomalyDataError(f"video {entry.name}: split {entry.split!r} in {manifest}, expected 'train' or 'test'")
    if entry.label not in (0, 1):
        raise AnomalyDataError(f"video {entry.name}: label {entry.label!r} in {manifest}, expected 0 (normal) or 1 (anomalous)")
    if entry.num_clips < 1:
        raise AnomalyDataError(f"video {entry.name}: num_clips = {entry.num_clips} in {manifest}, expected at least one clip")
    covered = entry.num_clips * clip_span
    if covered > entry.num_frames:
        raise AnomalyDataError(
            f"video {entry.name}: {entry.num_clips} clips of {clip_span} frames cover {covered} frames but the "
            f"video has {entry.num_frames} (in {manifest}); the manifest does not follow the extractor's clip indexing"
        )
    for pair in entry.intervals:
        # An end past the last frame is tolerated (annotation files disagree by a frame or so
        # with decoders; the ground truth is cut at the covered frames anyway), a start is not.
        if len(pair) != 2 or not (0 <= pair[0] < pair[1]) or pair[0] >= entry.num_frames:
            raise AnomalyDataError(
                f"video {entry.name}: anomalous interval {pair} in {manifest} is invalid; expected "
                f"[start, end) with 0 <= start < end and start < num_frames = {entry.num_frames}"
            )


def _check_annotation(entry: VideoEntry, manifest: Path, role: str) -> None:
    """An evaluated anomalous video needs frame intervals; a normal one must have none."""
    if entry.label == 1 and not entry.intervals:
        raise AnomalyDataError(
            f"{role} video {entry.name} is anomalous (label 1) but has no annotated interval in {manifest}; "
            "frame-level ground truth needs its [start, end) anomalous frames"
        )
    if entry.label == 0 and entry.intervals:
        raise AnomalyDataError(
            f"{role} video {entry.name} is normal (label 0) but has anomalous intervals {entry.intervals} in {manifest}"
        )


FAILURES = "failures.json"  # feature_extraction's list of the videos that failed


def missing_videos(feature_dir: Path, info: FeatureSetInfo) -> dict[str, dict[str, str]]:
    """The manifest's missing videos, plus any failures.json lists that the manifest does not (older sets)."""
    missing = {name: dict(m) for name, m in info.missing.items()}
    path = feature_dir / FAILURES
    try:
        failures = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, json.JSONDecodeError) as e:
        raise AnomalyDataError(f"{path} cannot be read ({e}); it lists the videos whose extraction failed") from None
    for f in failures if isinstance(failures, list) else []:
        if isinstance(f, dict) and "name" in f and f["name"] not in info.videos:
            missing.setdefault(str(f["name"]), {"split": str(f.get("split", "?")), "why": "failed", "detail": str(f.get("error", ""))})
    return missing


def account_for_missing(
    missing: Mapping[str, Mapping[str, str]],
    present: Mapping[str, str],
    *,
    exclude: Sequence[str] = (),
    exclude_failed: bool = False,
    allow_partial: bool = False,
    manifest: Path,
) -> tuple[list[dict], bool]:
    """(every video left out, as {"name", "split", "why", "detail"}; whether the result is partial).

    ``present``: the feature set's videos, name -> split. A video is left out when the extraction left it out (``missing``) or ``exclude`` names it.
    Accounted for: what the extraction excluded by name, what ``exclude`` names, and with
    ``exclude_failed`` the videos whose extraction failed. Anything else (a failure, a split cut
    by data.limit) is an error unless ``allow_partial``, which marks the result partial.
    """
    known = set(missing) | set(present)
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise AnomalyDataError(f"data.exclude names {', '.join(unknown)}, which {manifest} neither holds nor lists as missing")
    left_out, unaccounted = [], []
    for name in sorted(set(missing) | set(exclude)):
        m = missing.get(name, {})
        record = {"name": name, "split": m.get("split", present.get(name, "?")), "why": m.get("why", "excluded"), "detail": m.get("detail", "")}
        if name in exclude:
            record.update(why="excluded", detail="named in data.exclude" + (f" ({m['why']}: {m.get('detail', '')})" if m else ""))
        elif not (m.get("why") == "excluded" or (exclude_failed and m.get("why") == "failed")):
            unaccounted.append(record)
        left_out.append(record)
    if unaccounted and not allow_partial:
        shown = "; ".join(f"{r['name']} ({r['split']}, {r['why']}: {r['detail']})" for r in unaccounted[:6])
        more = f"; and {len(unaccounted) - 6} more" if len(unaccounted) > 6 else ""
        raise AnomalyDataError(
            f"{manifest}: the feature set lacks {len(unaccounted)} video(s) of its dataset's splits: {shown}{more}. A result "
            "from it would not be the dataset's. Extract them (rerun feature extraction), leave them out by name "
            "(data.exclude=[...], or data.exclude_failed=true for every failed one: the results list them), or accept "
            "a partial result with data.allow_partial=true"
        )
    return left_out, bool(unaccounted)


def check_dataset_files(info: FeatureSetInfo, manifest: Path, root: str | Path | None) -> str | None:
    """Raise when a dataset file the manifest's labels / intervals were read from has changed.

    Returns the root checked against, or None when there is nothing to check (no root on this
    machine, or a manifest that records no files)."""
    if not info.dataset_files or root is None or not Path(root).is_dir():
        return None
    changed = []
    for relative, digest in sorted(info.dataset_files.items()):
        path = Path(root) / relative
        if not path.is_file():
            changed.append(f"{path} (gone)")
        elif file_digest(path) != digest:
            changed.append(f"{path} (changed)")
    if changed:
        raise AnomalyDataError(
            f"the labels and intervals in {manifest} were read from dataset files that differ now: {', '.join(changed)}. "
            "Rerun feature extraction with the same config: finished videos keep their features and the manifest "
            "takes the current labels"
        )
    return str(root)


# --------------------------------------------------------------------------- split and batches


def stratified_split(names: Sequence[str], labels: Sequence[int], fraction: float, seed: int) -> list[str]:
    """Validation names: about ``fraction`` of each label's videos, drawn with ``seed``.

    Deterministic in (names, labels, fraction, seed) and independent of the rank. A label
    with at least two videos gives at least one to validation (when fraction > 0) and
    keeps at least one for training.
    """
    if len(names) != len(labels):
        raise ValueError(f"stratified_split: {len(names)} names but {len(labels)} labels")
    chosen: list[str] = []
    if fraction <= 0:
        return chosen
    for label in sorted(set(labels)):
        group = sorted(n for n, y in zip(names, labels) if y == label)
        n_val = int(round(fraction * len(group)))
        n_val = min(max(n_val, 1 if len(group) >= 2 else 0), len(group) - 1)
        rng = np.random.default_rng([seed, int(label)])
        chosen.extend(group[i] for i in rng.permutation(len(group))[:n_val])
    return sorted(chosen)


def class_order(n: int, *, epoch: int, seed: int, stream: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This process's shuffled indices into one class's n videos for ``epoch``.

    Under torchrun a DistributedSampler (set_epoch) shards the permutation, so the ranks
    see disjoint videos (padded to equal counts); in one process a generator seeded from
    (seed, stream, epoch) shuffles. ``stream`` keeps the normal and abnormal orders
    independent. Either way the order is a function of the epoch, so a resumed run draws
    the same batches as an uninterrupted one.
    """
    if world_size > 1:
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed + stream)
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream, epoch]).generate_state(1)[0]))
    return torch.randperm(n, generator=generator).numpy()


def epoch_batches(
    n_normal: int,
    n_abnormal: int,
    *,
    batch_per_class: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (normal indices (b,), abnormal indices (b,)) pairs for this process.

    Both classes are reshuffled every epoch and paired afresh. The epoch covers the larger
    class once (its last partial batch dropped, a different remainder each epoch); the
    smaller class is repeated in its shuffled order to keep up, so every video is seen
    every epoch. b = min(batch_per_class, the smaller class's shard), equal for normal and
    abnormal because MGFN's contrastive loss pairs them row by row.
    """
    if n_normal < 1 or n_abnormal < 1:
        raise ValueError(f"epoch_batches: need videos of both classes, got {n_normal} normal and {n_abnormal} abnormal")
    normal = class_order(n_normal, epoch=epoch, seed=seed, stream=0, rank=rank, world_size=world_size)
    abnormal = class_order(n_abnormal, epoch=epoch, seed=seed, stream=1, rank=rank, world_size=world_size)
    b = min(batch_per_class, len(normal), len(abnormal))
    steps = max(len(normal), len(abnormal)) // b
    need = steps * b

    def stretch(order: np.ndarray) -> np.ndarray:
        return np.resize(order, need)  # np.resize repeats the array cyclically

    normal, abnormal = stretch(normal), stretch(abnormal)
    return [(normal[i * b : (i + 1) * b], abnormal[i * b : (i + 1) * b]) for i in range(steps)]


# --------------------------------------------------------------------------- loading


def training_segments(feats: np.ndarray, num_segments: int) -> np.ndarray:
    """(S, crops, D) clip features -> (crops, num_segments, D + 1) float32 MGFN input."""
    segments = append_magnitude(process_feat(feats, num_segments))  # (T, crops, D + 1)
    return rearrange(segments, "t n c -> n t c")


def load_anomaly_data(
    feature_dir: str | Path,
    *,
    feature_dim: int | None,
    dataset: str | None = None,
    num_segments: int = 32,
    validation_fraction: float = 0.1,
    seed: int = 0,
    cache_eval: bool = True,
    validation_needs_intervals: bool = False,
    exclude: Sequence[str] = (),
    exclude_failed: bool = False,
    allow_partial: bool = False,
    dataset_roots: Mapping[str, str | Path] | None = None,
) -> AnomalyData:
    """Read, check and prepare a feature set; raise AnomalyDataError/FeatureSetError on bad input.

    feature_dim: the configured D (None: take the manifest's). dataset: the expected
    dataset name (None: any). The validation split is drawn from the training videos,
    stratified by label, with ``seed``. exclude / exclude_failed / allow_partial: see
    :func:`account_for_missing`. dataset_roots: dataset name -> root (the paths section); the
    manifest's dataset files are checked against the root of its dataset when it exists.
    """
    feature_dir = Path(feature_dir)
    info = read_manifest(feature_dir)
    manifest = feature_dir / "manifest.json"
    if dataset is not None and info.dataset != dataset:
        raise AnomalyDataError(
            f"data.expected_dataset = {dataset!r} (config) but {manifest} holds features of {info.dataset!r}"
        )
    if feature_dim is not None and feature_dim != info.feature_dim:
        raise AnomalyDataError(
            f"model.feature_dim = {feature_dim} (config) but {manifest} has feature_dim = {info.feature_dim}; "
            f"set model.feature_dim={info.feature_dim} (or null) or point data.features at {feature_dim}-d features"
        )
    dim = info.feature_dim
    crops = int(info.crops)
    clip_span = int(info.clip_len) * int(info.skip)
    if clip_span < 1 or crops < 1:
        raise AnomalyDataError(f"{manifest}: clip_len * skip = {clip_span} and crops = {crops} must both be >= 1")

    present = {name: e.split for name, e in info.videos.items()}
    left_out, partial = account_for_missing(missing_videos(feature_dir, info), present, exclude=exclude,
                                            exclude_failed=exclude_failed, allow_partial=allow_partial, manifest=manifest)
    checked = check_dataset_files(info, manifest, (dataset_roots or {}).get(info.dataset))
    dropped = set(exclude)
    entries = sorted((e for e in info.videos.values() if e.name not in dropped), key=lambda e: e.name)
    for entry in entries:
        _check_entry(entry, clip_span, manifest)
    train_entries = [e for e in entries if e.split == "train"]
    test_entries = [e for e in entries if e.split == "test"]
    for label, word in ((0, "normal"), (1, "abnormal")):
        if not any(e.label == label for e in train_entries):
            raise AnomalyDataError(
                f"no {word} training videos (split 'train', label {label}) in {manifest}; "
                "MGFN trains on normal and abnormal videos together"
            )
    if not any(e.label == 1 for e in test_entries):
        raise AnomalyDataError(f"no anomalous test videos (split 'test', label 1) in {manifest}; frame metrics need them")
    for entry in test_entries:
        _check_annotation(entry, manifest, "test")

    val_names = set(
        stratified_split([e.name for e in train_entries], [e.label for e in train_entries], validation_fraction, seed)
    )
    val_entries = [e for e in train_entries if e.name in val_names]
    fit_entries = [e for e in train_entries if e.name not in val_names]
    if val_entries:
        for label, word in ((0, "normal"), (1, "abnormal")):
            if not any(e.label == label for e in val_entries):
                raise AnomalyDataError(
                    f"the validation split (data.validation_fraction = {validation_fraction}) has no {word} video: "
                    f"{manifest} has too few {word} training videos to hold one out; lower the fraction or set it to 0"
                )
        if validation_needs_intervals:
            for entry in val_entries:
                _check_annotation(entry, manifest, "validation")

    normal_names = [e.name for e in fit_entries if e.label == 0]
    abnormal_names = [e.name for e in fit_entries if e.label == 1]
    # Preallocate so the whole class is one contiguous tensor that a step indexes in one go.
    tensors = {}
    for word, names in (("normal", normal_names), ("abnormal", abnormal_names)):
        block = np.empty((len(names), crops, num_segments, dim + 1), dtype=np.float32)
        for i, name in enumerate(names):
            block[i] = training_segments(_load_checked(feature_dir, info.videos[name], dim, crops), num_segments)
        tensors[word] = torch.from_numpy(block)

    def eval_video(entry: VideoEntry) -> EvalVideo:
        # Loading checks rows, dimension and finiteness now, before training, even when not cached.
        feats = _load_checked(feature_dir, entry, dim, crops)
        return EvalVideo(entry.name, entry.label, entry.num_clips, [list(p) for p in entry.intervals], entry, feats if cache_eval else None)

    return AnomalyData(
        feature_dir=feature_dir,
        info=info,
        feature_dim=dim,
        crops=crops,
        clip_span=clip_span,
        train=TrainSet(tensors["normal"], tensors["abnormal"], normal_names, abnormal_names),
        validation=[eval_video(e) for e in val_entries],
        test=[eval_video(e) for e in test_entries],
        left_out=left_out,
        partial=partial,
        dataset_files_checked=checked,
    )
