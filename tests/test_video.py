"""Decoding through PyAV: exact frame counts, RGB order, streaming clips, random access, bad files."""

from __future__ import annotations

import inspect
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from aux_code.clips import clip_frame_indices, extraction_starts
from aux_code.video import (
    VideoDecodeError,
    _read_frames,
    iter_clips,
    iter_frames,
    probe,
    read_clip,
    read_frames,
    write_video,
)

H, W = 32, 48


def make_frames(n: int, *, seed: int = 0) -> list[np.ndarray]:
    """Frames that differ from each other: a moving bar, a frame-number grey block, mild noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        f = rng.integers(60, 90, size=(H, W, 3), dtype=np.uint8)
        f[:, (2 * i) % W] = (250, 40, 40)
        f[: H // 2, : W // 4] = (i * 5) % 256
        frames.append(f)
    return frames


def write_custom(path: Path, frames: list[np.ndarray], *, encoder: str, options: dict[str, str],
                 pix_fmt: str = "yuv420p", b_frames: int | None = None, gop: int | None = None) -> Path:
    """Encoder settings write_video does not expose: B-frames and short GOPs, for seeking tests."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.options = options
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        if gop is not None:
            stream.codec_context.gop_size = gop
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    frames = make_frames(100)
    out = {
        "ffv1": root / "a.mkv",
        "h264_lossless": root / "a_lossless.mp4",
        "h264": root / "a.mp4",
        "mpeg4": root / "a.avi",
        "vp9": root / "a.webm",
    }
    for codec, path in out.items():
        write_video(path, frames, codec=codec, fps=25)
    out["h264_bframes"] = write_custom(root / "b.mp4", frames, encoder="libx264",
                                       options={"crf": "20", "preset": "veryfast", "g": "12", "bf": "3",
                                                "sc_threshold": "0"})
    out["mpeg4_bframes"] = write_custom(root / "b.avi", frames, encoder="mpeg4", options={"qscale": "4"},
                                        b_frames=2, gop=12)
    return out


@pytest.fixture(scope="module")
def reference(videos) -> dict[str, np.ndarray]:
    """Full sequential decodes, the ground truth for every random-access read."""
    return {name: np.stack(list(iter_frames(path, threads=1))) for name, path in videos.items()}


def test_ffv1_decodes_bit_exact_and_lossless_h264_within_tolerance(videos, reference):
    frames = np.stack(make_frames(100))
    assert reference["ffv1"].shape == (100, H, W, 3) and reference["ffv1"].dtype == np.uint8
    np.testing.assert_array_equal(reference["ffv1"], frames)
    diff = np.abs(reference["h264_lossless"].astype(np.int16) - frames)
    assert diff.mean() < 1.0 and diff.max() <= 3


@pytest.mark.parametrize("codec, suffix", [("ffv1", "mkv"), ("h264", "mp4"), ("mpeg4", "avi"), ("vp9", "webm")])
def test_rgb_channel_order_survives_encode_decode(tmp_path, codec, suffix):
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:, : W // 2] = (255, 0, 0)  # red left half
    frame[:, W // 2 :] = (0, 0, 255)  # blue right half
    path = tmp_path / f"rb.{suffix}"
    write_video(path, [frame] * 3, codec=codec)
    decoded = next(iter_frames(path))
    left = decoded[4:-4, 4 : W // 2 - 4].reshape(-1, 3).mean(axis=0)
    right = decoded[4:-4, W // 2 + 4 : -4].reshape(-1, 3).mean(axis=0)
    assert left[0] > 200 and left[1] < 40 and left[2] < 40, left
    assert right[2] > 200 and right[0] < 40 and right[1] < 40, right


@pytest.mark.parametrize("name", ["h264", "mpeg4", "vp9", "ffv1", "h264_bframes", "mpeg4_bframes"])
def test_probe_counts_exactly_what_decoding_yields(videos, reference, name):
    info = probe(videos[name])
    assert info.num_frames == len(reference[name]) == 100
    assert probe(videos[name], count="decode").num_frames == 100
    assert (info.width, info.height) == (W, H)
    assert info.fps == pytest.approx(25.0)
    # mpeg4 may hide frameless "not coded" packets, so it is counted by decoding.
    assert info.counted_by == ("decode" if name.startswith("mpeg4") else "packets")
    assert info.codec == {"h264": "h264", "mpeg4": "mpeg4", "vp9": "vp9", "ffv1": "ffv1"}[name.split("_")[0]]


def test_iter_frames_is_a_stream_and_selects_indices(videos, reference):
    gen = iter_frames(videos["h264"], indices=[3, 3, 50, 97])
    assert inspect.isgenerator(gen)
    got = list(gen)
    assert len(got) == 4
    for frame, i in zip(got, [3, 3, 50, 97]):
        np.testing.assert_array_equal(frame, reference["h264"][i])
    assert got[0] is not got[1]  # a repeated index yields independent arrays
    assert list(iter_frames(videos["h264"], indices=[])) == []
    with pytest.raises(VideoDecodeError, match="has 100 frames; frame 100 was requested"):
        list(iter_frames(videos["h264"], indices=[5, 100]))
    with pytest.raises(ValueError, match="sorted"):
        list(iter_frames(videos["h264"], indices=[5, 2]))


@pytest.mark.parametrize("name", ["h264", "vp9"])
def test_threaded_decoding_is_deterministic(videos, reference, name):
    threaded = np.stack(list(iter_frames(videos[name], threads=0)))
    np.testing.assert_array_equal(threaded, reference[name])


@pytest.mark.parametrize("num_frames", [32, 63, 64, 95, 100])
def test_iter_clips_match_extraction_starts(tmp_path, num_frames):
    frames = np.stack(make_frames(num_frames, seed=num_frames))
    path = tmp_path / f"n{num_frames}.mkv"
    write_video(path, frames, codec="ffv1")
    clips = list(iter_clips(path, clip_len=16, skip=2))
    assert [s for s, _ in clips] == extraction_starts(probe(path).num_frames, clip_len=16, skip=2)
    for start, clip in clips:
        assert clip.shape == (16, H, W, 3) and clip.dtype == np.uint8
        np.testing.assert_array_equal(clip, frames[clip_frame_indices(start, clip_len=16, skip=2)])


def test_iter_clips_other_shape_and_lossy_codec(videos, reference):
    clips = list(iter_clips(videos["h264"], clip_len=8, skip=3))
    assert [s for s, _ in clips] == extraction_starts(100, clip_len=8, skip=3) == [0, 24, 48, 72]
    for start, clip in clips:
        np.testing.assert_array_equal(clip, reference["h264"][start : start + 24 : 3])


def test_video_shorter_than_one_clip(tmp_path):
    path = tmp_path / "short.mkv"
    write_video(path, make_frames(31), codec="ffv1")
    with pytest.raises(VideoDecodeError, match=r"short\.mkv: has 31 frames; one clip of 16 frames at skip 2 needs 32"):
        list(iter_clips(path))
    # Training clips only need the 31-frame footprint.
    assert read_clip(path, 0).shape == (16, H, W, 3)
    with pytest.raises(VideoDecodeError, match="has 31 frames.*starting at 1 needs frames up to 31"):
        read_clip(path, 1)


@pytest.mark.parametrize("name", ["h264_bframes", "mpeg4_bframes", "vp9", "h264"])
def test_read_clip_equals_slice_of_full_decode(videos, reference, name):
    full = reference[name]
    for start in range(0, 100 - 30, 3):
        clip = read_clip(videos[name], start, clip_len=16, skip=2, threads=1)
        np.testing.assert_array_equal(clip, full[start : start + 32 : 2], err_msg=f"{name} start {start}")


def test_read_clip_seeks_instead_of_decoding_from_the_start(videos, reference):
    # GOP 12 with B-frames: a late clip needs at most one GOP of lead-in, not 60 frames.
    frames, decoded = _read_frames(videos["h264_bframes"], clip_frame_indices(60), threads=1)
    np.testing.assert_array_equal(frames, reference["h264_bframes"][60:92:2])
    assert decoded <= 31 + 12 + 4


def test_read_frames_any_order_with_repeats(videos, reference):
    got = read_frames(videos["mpeg4_bframes"], [80, 10, 80, 45])
    np.testing.assert_array_equal(got, reference["mpeg4_bframes"][[80, 10, 80, 45]])


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(VideoDecodeError, match=r"nope\.mp4: no such file"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(VideoDecodeError, match=r"nope\.mp4: no such file"):
        list(iter_clips(tmp_path / "nope.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for call in (lambda: probe(garbage), lambda: list(iter_frames(garbage)), lambda: read_clip(garbage, 0)):
        with pytest.raises(VideoDecodeError, match=r"garbage\.mp4: cannot be opened"):
            call()


@pytest.mark.parametrize("name, suffix, match", [
    ("h264", "mp4", "cannot be opened"),  # moov atom at the end is gone
    ("mpeg4", "avi", "truncated: the header declares 100 frames"),
    ("vp9", "webm", "truncated: the container declares 4.000 s"),
])
def test_truncated_files_are_rejected(videos, tmp_path, name, suffix, match):
    data = videos[name].read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match=match) as info:
        probe(cut)
    assert info.value.path == cut and "cut." in str(info.value)


def test_probe_cache_follows_rewritten_file(tmp_path):
    path = tmp_path / "v.mkv"
    write_video(path, make_frames(40), codec="ffv1")
    assert probe(path).num_frames == 40
    write_video(path, make_frames(70), codec="ffv1")
    assert probe(path).num_frames == 70
    assert read_clip(path, 39).shape == (16, H, W, 3)


def test_streaming_readers_reject_a_truncated_file_after_its_last_frame(videos, tmp_path):
    data = videos["mpeg4"].read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match="truncated"):
        list(iter_clips(cut))  # the clips before the cut decode, then the stream is found short
    with pytest.raises(VideoDecodeError, match="truncated"):
        list(iter_frames(cut))


def test_decode_error_pickles_with_path_and_reason(tmp_path):
    import pickle

    err = pickle.loads(pickle.dumps(VideoDecodeError(tmp_path / "x.mp4", "has 3 frames")))
    assert isinstance(err, VideoDecodeError)
    assert err.path == tmp_path / "x.mp4" and err.reason == "has 3 frames"
    assert str(err) == f"{tmp_path / 'x.mp4'}: has 3 frames"


def test_seek_that_overshoots_is_detected_and_recovered(videos, reference, monkeypatch):
    import dataclasses

    import aux_code.video as video

    path = videos["h264_bframes"]
    index, info = video._frame_index(path, count="auto")
    assert index.pts is not None and len(index.key_frames) > 3
    # Make every keyframe's seek target point at the next keyframe: each seek now lands late.
    bad_seek = np.concatenate([index.seek_ts[1:], index.seek_ts[-1:]])
    broken = dataclasses.replace(index, seek_ts=bad_seek)
    monkeypatch.setattr(video, "_frame_index", lambda p, *, count: (broken, info))
    for start in (13, 40, 61):
        np.testing.assert_array_equal(read_clip(path, start), reference["h264_bframes"][start : start + 32 : 2])


def test_probe_rejects_unknown_count_mode(videos):
    with pytest.raises(ValueError, match="count must be one of"):
        probe(videos["h264"], count="header")
