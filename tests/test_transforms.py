"""Clip transforms: layouts, the same parameters on every frame, flips, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import rearrange

from aux_code.transforms import (
    Box,
    ClipEval,
    ClipTrain,
    ClipTrainParams,
    adjust_contrast,
    to_float_clip,
    to_float_image,
)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def random_clip(t: int = 4, h: int = 30, w: int = 40, *, seed: int = 0) -> torch.Tensor:
    """(C, T, H, W) float in [0, 1], every frame different."""
    return torch.rand(3, t, h, w, generator=gen(seed))


def test_to_float_clip_layout_and_range():
    clip = np.random.default_rng(0).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    out = to_float_clip(clip)
    assert out.shape == (3, 5, 6, 7) and out.dtype == torch.float32
    # Channel c of frame t at (y, x) is the input's [t, y, x, c] / 255: no channel/time mixing.
    for t, y, x, c in [(0, 0, 0, 0), (4, 5, 6, 2), (2, 3, 1, 1)]:
        assert out[c, t, y, x].item() == pytest.approx(clip[t, y, x, c] / 255.0)
    assert torch.equal(to_float_clip(torch.from_numpy(clip)), out)
    assert out.min() >= 0.0 and out.max() <= 1.0
    readonly = clip.copy()
    readonly.flags.writeable = False
    assert torch.equal(to_float_clip(readonly), out)


def test_to_float_image_and_bad_inputs():
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0] = 255
    out = to_float_image(image)
    assert out.shape == (3, 4, 5)
    assert torch.all(out[0] == 1.0) and torch.all(out[1:] == 0.0)
    with pytest.raises(ValueError, match="uint8"):
        to_float_clip(np.zeros((2, 4, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        to_float_clip(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="3 RGB channels last"):
        to_float_image(np.zeros((3, 4, 5), np.uint8))


def test_clip_eval_centre_crop_and_shapes():
    tf = ClipEval(112, scale=0.8)
    assert tf.box(240, 320) == Box(24, 64, 192, 192)  # 0.8 * 240, centred
    clip = random_clip(3, 240, 320)
    out = tf(clip)
    assert out.shape == (3, 3, 112, 112)
    # An image goes through the same path as a one-frame clip.
    image_out = tf(clip[:, 0])
    assert image_out.shape == (3, 112, 112)
    torch.testing.assert_close(image_out, out[:, 0])
    # With output size equal to the crop, eval is exactly the centre crop.
    exact = ClipEval(192, scale=0.8)(clip)
    torch.testing.assert_close(exact, clip[:, :, 24:216, 64:256])
    # A constant colour stays that colour (antialiased bilinear is a convex blend).
    flat = torch.full((3, 2, 60, 80), 0.25)
    torch.testing.assert_close(tf(flat), torch.full((3, 2, 112, 112), 0.25))


def test_clip_eval_non_square_output_keeps_aspect():
    tf = ClipEval((90, 160), scale=0.8)
    box = tf.box(240, 320)
    assert box.width / box.height == pytest.approx(160 / 90, rel=0.02)
    assert tf(random_clip(2, 240, 320)).shape == (3, 2, 90, 160)


def strong_train(**overrides) -> ClipTrain:
    options = dict(scale=(0.5, 0.9), ratio=(0.75, 1.33), flip_p=0.5, jitter_p=1.0, erase_p=1.0)
    options.update(overrides)
    return ClipTrain(48, **options)


def test_clip_train_identical_frames_stay_identical():
    frame = torch.rand(3, 1, 50, 70, generator=gen(1))
    clip = frame.expand(3, 6, 50, 70).contiguous()
    tf = strong_train()
    for seed in range(10):
        out = tf(clip, generator=gen(seed))
        assert out.shape == (3, 6, 48, 48)
        for t in range(1, 6):
            assert torch.equal(out[:, t], out[:, 0]), (seed, t)


def test_clip_train_equals_per_frame_application_of_the_same_params():
    # Vectorised over T == applying the drawn parameters to each frame on its own.
    clip = random_clip(5, 50, 70, seed=2)
    tf = strong_train()
    for seed in range(5):
        params = tf.sample_params(50, 70, generator=gen(seed))
        whole = tf.apply(clip, params)
        for t in range(5):
            torch.testing.assert_close(whole[:, t], tf.apply(clip[:, t], params))


def test_clip_train_erase_is_the_same_rectangle_on_every_frame():
    tf = strong_train(jitter_p=0.0, erase_value=0.5)
    clip = random_clip(4, 50, 70, seed=3)
    params = tf.sample_params(50, 70, generator=gen(4))
    assert params.erase is not None
    out = tf.apply(clip, params)
    e = params.erase
    region = out[:, :, e.top : e.top + e.height, e.left : e.left + e.width]
    assert torch.all(region == 0.5)
    mask = torch.zeros(48, 48, dtype=torch.bool)
    mask[e.top : e.top + e.height, e.left : e.left + e.width] = True
    assert not torch.any(rearrange(out, "c t h w -> h w c t")[~mask] == 0.5)


def test_flip_mirrors_width():
    clip = random_clip(3, 40, 40, seed=5)
    base = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, erase_p=0.0)
    unflipped = ClipTrain(40, flip_p=0.0, **base)(clip, generator=gen(0))
    flipped = ClipTrain(40, flip_p=1.0, **base)(clip, generator=gen(0))
    torch.testing.assert_close(unflipped, clip)  # full crop at native size: identity
    torch.testing.assert_close(flipped, clip.flip(-1))
    assert flipped[0, 1, 7, 0] == clip[0, 1, 7, 39]


def test_clip_train_determinism_and_variety():
    clip = random_clip(4, 64, 80, seed=6)
    tf = strong_train()
    a = tf(clip, generator=gen(123))
    b = tf(clip, generator=gen(123))
    c = tf(clip, generator=gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The same seed gives the same params whatever the clip's content.
    assert tf.sample_params(64, 80, generator=gen(9)) == tf.sample_params(64, 80, generator=gen(9))
    flips = {tf.sample_params(64, 80, generator=gen(s)).flip for s in range(40)}
    assert flips == {True, False}


def test_clip_train_image_path_and_range():
    tf = strong_train()
    image = torch.rand(3, 50, 60, generator=gen(7))
    out = tf(image, generator=gen(0))
    assert out.shape == (3, 48, 48)
    assert out.min() >= 0.0 and out.max() <= 1.0
    clip_out = tf(rearrange(image, "c h w -> c 1 h w"), generator=gen(0))
    torch.testing.assert_close(out, clip_out[:, 0])


def test_crop_stays_inside_and_near_scale():
    tf = ClipTrain(32, scale=(0.7, 0.9))
    for seed in range(30):
        p = tf.sample_params(120, 160, generator=gen(seed))
        assert p.crop.height == p.crop.width  # square output, ratio 1
        assert 0.7 * 120 - 1 <= p.crop.height <= 0.9 * 120 + 1
        assert 0 <= p.crop.top and p.crop.top + p.crop.height <= 120
        assert 0 <= p.crop.left and p.crop.left + p.crop.width <= 160


def test_contrast_is_per_frame_and_zero_gives_mean_grey():
    clip = random_clip(3, 10, 12, seed=8)
    flat = adjust_contrast(clip, 0.0)
    for t in range(3):
        frame = flat[:, t]
        assert torch.allclose(frame, frame[:, :1, :1].expand_as(frame))
    assert not torch.allclose(flat[:, 0], flat[:, 1])


def test_apply_uses_given_params_exactly():
    clip = random_clip(2, 40, 40, seed=9)
    params = ClipTrainParams(crop=Box(0, 0, 40, 40), flip=False, jitter=(1.5, 1.0, 1.0), jitter_order=(0, 1, 2),
                             erase=None)
    out = ClipTrain(40).apply(clip, params)
    torch.testing.assert_close(out, (clip * 1.5).clamp(0, 1))


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="scale"):
        ClipTrain(32, scale=(0.9, 0.7))
    with pytest.raises(ValueError, match="erase_p"):
        ClipTrain(32, erase_p=1.5)
    with pytest.raises(ValueError, match="scale"):
        ClipEval(32, scale=0.0)
    with pytest.raises(ValueError, match="float tensor"):
        ClipEval(32)(torch.zeros(3, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="C=3"):
        ClipEval(32)(torch.zeros(2, 3, 8, 8))
