"""The two decoders of feature extraction: the choice table, PyAV's checks, and PyAV vs DALI parity."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from aux_code.clips import dali_starts, extraction_starts
from aux_code.datasets import AnomalyVideo
from aux_code.video import VideoDecodeError, probe, write_video
import feature_extraction.decoders as decoders
from feature_extraction.decoders import DecoderError, choose_decoder, dali_clips, dali_sequences, pyav_clips, video_codec
from feature_extraction.pipeline import BoxLookup, Clip, ClipSpec, VideoDone, VideoJob, dali_events, pyav_events

HAS_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="nvidia.dali is not importable (install the dali extra: pip install -e '.[dali]')")


def scene(num_frames: int, height: int = 48, width: int = 64, amplitude: float = 40.0) -> list[np.ndarray]:
    """Smooth moving colour waves of moderate saturation (``amplitude`` around grey 128), different
    at every frame. The two decoders' YUV->RGB conversions differ more on saturated colour
    (measured on VP9: 1.45 grey levels at amplitude 30, 2.42 at 70, about 3 on a saturated
    ramp), so the pixel tolerance is stated for natural-looking content."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(num_frames):
        r = 128 + amplitude * np.sin((x + 2 * i) / 9.0)
        g = 128 + amplitude * np.cos((y - i) / 7.0)
        b = 128 + amplitude * np.sin((x + y + 3 * i) / 11.0)
        out.append(np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8))
    return out


def test_choose_decoder_table():
    assert choose_decoder("pyav", cuda=True, codecs=["h264"], dali_installed=True) == "pyav"
    assert choose_decoder("auto", cuda=True, codecs=["h264", "vp9"], dali_installed=True) == "dali-gpu"
    assert choose_decoder("auto", cuda=True, codecs=["h264"], dali_installed=False) == "pyav"
    assert choose_decoder("auto", cuda=False, codecs=["vp9"], dali_installed=True) == "pyav"
    assert choose_decoder("auto", cuda=True, codecs=["prores"], dali_installed=True) == "pyav"
    assert choose_decoder("dali", cuda=False, codecs=["vp9", "mjpeg"], dali_installed=True) == "dali-cpu"
    with pytest.raises(DecoderError, match="CPU video reader does not decode h264"):
        choose_decoder("dali", cuda=False, codecs=["h264", "vp9"], dali_installed=True)
    with pytest.raises(DecoderError, match="not installed"):
        choose_decoder("dali", cuda=True, codecs=["h264"], dali_installed=False)


def test_pyav_clips_checks_probed_count(tmp_path):
    path = tmp_path / "v.avi"
    write_video(path, scene(70), codec="mjpeg")
    assert video_codec(path) == "mjpeg" and video_codec(tmp_path / "missing.avi") is None
    starts = [s for s, _ in pyav_clips(path, 70, clip_len=16, skip=2)]
    assert starts == extraction_starts(70) == [0, 32]
    with pytest.raises(VideoDecodeError, match="probed 100 frames give 3"):
        list(pyav_clips(path, 100, clip_len=16, skip=2))


def fake_sequences(per_file):
    """A stand-in for dali_sequences yielding the given (file, start) pairs with blank frames."""

    def fake(files, **kwargs):
        seqs = [(i, s, torch.zeros(16, 8, 8, 3, dtype=torch.uint8)) for i, starts in enumerate(per_file) for s in starts]
        return len(seqs), iter(seqs)

    return fake


def test_dali_clips_accepts_both_rules_and_drops_overhang(monkeypatch):
    lengths = [95, 64]  # 95 = 2 * 32 + 31: the footprint rule keeps a third clip that overhangs the video
    for rule in (extraction_starts, dali_starts):
        monkeypatch.setattr(decoders, "dali_sequences", fake_sequences([rule(n) for n in lengths]))
        got = [(c.file_index, c.start, c.last) for c in dali_clips(["a", "b"], lengths, clip_len=16, skip=2)]
        assert got == [(0, 0, False), (0, 32, True), (1, 0, False), (1, 32, True)]
    monkeypatch.setattr(decoders, "dali_sequences", fake_sequences([[0, 33], [0, 32]]))
    with pytest.raises(DecoderError, match="gave frame 33 as sequence 1"):
        list(dali_clips(["a", "b"], lengths, clip_len=16, skip=2))
    monkeypatch.setattr(decoders, "dali_sequences", fake_sequences([[0], [0, 32, 64]]))
    with pytest.raises(DecoderError, match="DALI moved to file 1 after 1 sequences of file 0"):
        list(dali_clips(["a", "b"], [95, 95], clip_len=16, skip=2))


@needs_dali
@pytest.mark.dali
def test_pyav_and_dali_cpu_give_the_same_clips(tmp_path):
    """DALI's frame_num equals the shared index function, and its pixels are within decoder
    tolerance of PyAV's, on VP9 files."""
    lengths = (100, 95, 63)
    files, sources = [], []
    for n in lengths:
        path = tmp_path / f"v{n}.webm"
        sources.append(scene(n))
        write_video(path, sources[-1], codec="vp9")
        assert probe(path).num_frames == n
        files.append(path)

    total, sequences = dali_sequences(files, clip_len=16, skip=2, device="cpu", batch_size=2, num_threads=1)
    raw = [(i, start) for i, start, _ in sequences]
    # DALI 2.4's experimental reader keeps a sequence only when its whole 32-frame span fits:
    # exactly extraction_starts (not the footprint rule of clips.dali_starts, which adds 64 for 95 and 32 for 63).
    assert raw == [(i, s) for i, n in enumerate(lengths) for s in extraction_starts(n)] and total == len(raw)

    got = list(dali_clips(files, list(lengths), clip_len=16, skip=2, device="cpu", batch_size=2, num_threads=1))
    assert [(c.file_index, c.start) for c in got] == raw
    assert [c.last for c in got] == [False, False, True, False, True, True]
    diffs, codec_loss = [], []
    for i, (path, n) in enumerate(zip(files, lengths)):
        reference = dict(pyav_clips(path, n, clip_len=16, skip=2))
        for c in (c for c in got if c.file_index == i):
            assert c.frames.shape == (16, 48, 64, 3) and c.frames.dtype == torch.uint8
            pyav = torch.from_numpy(reference[c.start]).float()
            diffs.append((c.frames.float() - pyav).abs().mean().item())
            source = torch.from_numpy(np.stack(sources[i][c.start : c.start + 32 : 2])).float()
            codec_loss.append((pyav - source).abs().mean().item())
    # Two FFmpeg-family decoders: within 2 grey levels on average (a wrong frame is ~20 away),
    # and closer to each other than either is to the frames that were encoded.
    assert max(diffs) < 2.0, diffs
    assert np.mean(diffs) < np.mean(codec_loss), (diffs, codec_loss)

    with pytest.raises(DecoderError, match="probed frame counts give"):
        list(dali_clips(files[:1], [130], clip_len=16, skip=2, device="cpu"))


@needs_dali
@pytest.mark.dali
def test_pyav_and_dali_cpu_bit_exact_on_mjpeg(tmp_path):
    """Full-range 4:4:4 MJPEG needs no chroma upsampling or range conversion: the decoders agree exactly."""
    path = tmp_path / "v.avi"
    write_video(path, scene(64, amplitude=100.0), codec="mjpeg")
    reference = dict(pyav_clips(path, 64, clip_len=16, skip=2))
    got = list(dali_clips([path], [64], clip_len=16, skip=2, device="cpu", batch_size=2, num_threads=1))
    assert [c.start for c in got] == [0, 32]
    for c in got:
        assert torch.equal(c.frames, torch.from_numpy(reference[c.start]))


@needs_dali
@pytest.mark.dali
def test_dali_and_pyav_event_streams_agree(tmp_path):
    """The whole clip path (decode, crop, resize) gives the same model input from either decoder."""
    spec = ClipSpec(clip_len=16, skip=2, resolution=32, crop_scale=0.8)
    jobs = []
    for i, n in enumerate((64, 96)):
        path = tmp_path / f"v{i}.webm"
        write_video(path, scene(n), codec="vp9")
        jobs.append(VideoJob(index=i, split="test", item=AnomalyVideo(path, f"v{i}", 0, "Normal", ()), fingerprint="x"))
    boxes = BoxLookup(None, None)
    ref = list(pyav_events(jobs, spec, boxes=boxes, anonymizer=None, workers=0, prefetch=2, thread=False))
    got = list(dali_events(jobs, spec, boxes=boxes, anonymizer=None, device="cpu", device_id=None, batch_size=2,
                           threads=1, prefetch=1, target=torch.device("cpu"), fallback=lambda js: iter(())))
    assert [(type(e).__name__, e.job) for e in got] == [(type(e).__name__, e.job) for e in ref]
    assert [e.num_clips for e in got if isinstance(e, VideoDone)] == [2, 3]
    for a, b in zip(got, ref):
        if isinstance(a, Clip):
            assert a.k == b.k and a.data.shape == b.data.shape == (3, 16, 32, 32)
            assert (a.data - b.data).abs().mean() * 255 < 2.0


def test_dali_error_fails_one_video_and_falls_back_to_pyav(tmp_path, monkeypatch):
    """A DALI failure after the first video: that one is kept, the next is reported, the rest go to PyAV."""
    import feature_extraction.pipeline as pipeline
    from feature_extraction.decoders import DaliClip
    from feature_extraction.pipeline import VideoFailed

    jobs = []
    for i in range(3):
        path = tmp_path / f"v{i}.avi"
        write_video(path, scene(64, height=32, width=32), codec="mjpeg")
        jobs.append(VideoJob(index=i, split="test", item=AnomalyVideo(path, f"v{i}", 0, "Normal", ()), fingerprint="x"))

    def broken_dali(files, num_frames, **kwargs):
        for k, start in enumerate((0, 32)):
            yield DaliClip(0, start, torch.zeros(16, 32, 32, 3, dtype=torch.uint8), last=k == 1)
        raise RuntimeError("nvdec went away")

    monkeypatch.setattr(pipeline, "dali_clips", broken_dali)
    spec = ClipSpec(clip_len=16, skip=2, resolution=16, crop_scale=0.8)
    boxes = BoxLookup(None, None)

    def fallback(js):
        return pyav_events(js, spec, boxes=boxes, anonymizer=None, workers=0, prefetch=2, thread=False)

    events = list(dali_events(jobs, spec, boxes=boxes, anonymizer=None, device="cpu", device_id=None, batch_size=2,
                              threads=1, prefetch=1, target=torch.device("cpu"), fallback=fallback))
    kinds = [(type(e).__name__, e.job) for e in events]
    assert kinds == [("Clip", 0), ("Clip", 0), ("VideoDone", 0), ("VideoFailed", 1), ("Clip", 2), ("Clip", 2),
                     ("VideoDone", 2)]
    assert "nvdec went away" in next(e for e in events if isinstance(e, VideoFailed)).error
