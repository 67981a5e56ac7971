"""Clip transforms that treat a clip as one image: the same crop, flip, colour change and erased
rectangle for every frame, vectorised over time.

Layouts: a clip is (C, T, H, W) float in [0, 1], RGB; an image is (C, H, W) and is handled as a
one-frame clip. Randomness comes only from the ``torch.Generator`` passed in, so a seed
reproduces an augmentation exactly; :meth:`ClipTrain.sample_params` + :meth:`ClipTrain.apply`
expose the drawn parameters (two views of one clip, or a check that all frames got the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _uint8_tensor(array: np.ndarray | torch.Tensor, *, expected: str) -> torch.Tensor:
    if isinstance(array, np.ndarray):
        # torch.from_numpy shares memory and warns on read-only arrays; copy those.
        array = np.ascontiguousarray(array) if array.flags.writeable else array.copy()
        tensor = torch.from_numpy(array)
    else:
        tensor = array
    if tensor.dtype != torch.uint8 or tensor.shape[-1] != 3:
        raise ValueError(f"expected a uint8 {expected} array with 3 RGB channels last, "
                         f"got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor


def to_float_clip(clip: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB (numpy or torch) -> (C, T, H, W) float32 in [0, 1]."""
    tensor = _uint8_tensor(clip, expected="(T, H, W, 3)")
    if tensor.ndim != 4:
        raise ValueError(f"expected a clip (T, H, W, 3), got shape {tuple(tensor.shape)}")
    return rearrange(tensor, "t h w c -> c t h w").float().div_(255.0)


def to_float_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 RGB (numpy or torch) -> (C, H, W) float32 in [0, 1]."""
    tensor = _uint8_tensor(image, expected="(H, W, 3)")
    if tensor.ndim != 3:
        raise ValueError(f"expected an image (H, W, 3), got shape {tuple(tensor.shape)}")
    return rearrange(tensor, "h w c -> c h w").float().div_(255.0)


def _as_clip(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(C, T, H, W) -> itself; (C, H, W) -> (C, 1, H, W). Returns (clip, was_image)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"expected a float tensor (C, T, H, W) or (C, H, W) in [0, 1], got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')}; convert with to_float_clip / to_float_image")
    if x.ndim == 3 and x.shape[0] == 3:
        return rearrange(x, "c h w -> c 1 h w"), True
    if x.ndim == 4 and x.shape[0] == 3:
        return x, False
    raise ValueError(f"expected (C=3, T, H, W) or (C=3, H, W), got shape {tuple(x.shape)}")


def _restore(clip: torch.Tensor, was_image: bool) -> torch.Tensor:
    return rearrange(clip, "c 1 h w -> c h w") if was_image else clip


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    out = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(out) < 1:
        raise ValueError(f"output size must be positive, got {size}")
    return out


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int


def _fit_box(height: int, width: int, *, aspect: float, scale: float) -> tuple[int, int]:
    """Largest box with width/height == aspect inside (height, width), both sides times scale."""
    if width / height >= aspect:
        base_h, base_w = height, height * aspect
    else:
        base_h, base_w = width / aspect, width
    box_h = min(max(round(base_h * scale), 1), height)
    box_w = min(max(round(base_w * scale), 1), width)
    return box_h, box_w


def _crop_resize(clip: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """(C, T, H, W) -> (C, T, size[0], size[1]): crop then bilinear resize with antialiasing."""
    crop = clip[:, :, box.top : box.top + box.height, box.left : box.left + box.width]
    if (box.height, box.width) == size:
        return crop.clone()
    frames = rearrange(crop, "c t h w -> t c h w")
    resized = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
    return rearrange(resized, "t c h w -> c t h w").clamp_(0.0, 1.0)


class ClipEval:
    """Evaluation transform: centre crop at ``scale`` of the short side, resize to ``size``.

    For a non-square ``size`` the crop is the largest centred box of the output's aspect
    ratio, shrunk by ``scale``. Input (C, T, H, W) or (C, H, W) float; output (C, T, h, w) or
    (C, h, w) with (h, w) = size.
    """

    def __init__(self, size: int | tuple[int, int], *, scale: float = 0.8) -> None:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"ClipEval scale must be in (0, 1], got {scale}")
        self.size = _pair(size)
        self.scale = scale

    def box(self, height: int, width: int) -> Box:
        h, w = _fit_box(height, width, aspect=self.size[1] / self.size[0], scale=self.scale)
        return Box((height - h) // 2, (width - w) // 2, h, w)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        clip, was_image = _as_clip(x)
        out = _crop_resize(clip, self.box(clip.shape[2], clip.shape[3]), self.size)
        return _restore(out, was_image)

    def __repr__(self) -> str:
        return f"ClipEval(size={self.size}, scale={self.scale})"


@dataclass(frozen=True)
class ClipTrainParams:
    """One draw of :class:`ClipTrain`, shared by every frame of a clip.

    ``crop`` is in input pixels, ``erase`` in output pixels (None: no erasing); ``jitter`` is
    (brightness, contrast, saturation) factors applied in ``jitter_order`` (indices into
    that triple), None when colour jitter was not applied.
    """

    crop: Box
    flip: bool
    jitter: tuple[float, float, float] | None
    jitter_order: tuple[int, int, int]
    erase: Box | None


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _log_uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return math.exp(_uniform(math.log(lo), math.log(hi), generator))


def _randint(high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator))


def _check_range(name: str, value: tuple[float, float], *, lo: float, hi: float) -> tuple[float, float]:
    a, b = float(value[0]), float(value[1])
    if not lo <= a <= b <= hi:
        raise ValueError(f"ClipTrain {name} must satisfy {lo} <= low <= high <= {hi}, got {value}")
    return a, b


def _gray(clip: torch.Tensor) -> torch.Tensor:
    """(C, T, H, W) RGB -> (1, T, H, W) luma."""
    weights = clip.new_tensor(_LUMA)
    return rearrange(torch.einsum("cthw,c->thw", clip, weights), "t h w -> 1 t h w")


class ClipTrain:
    """Training augmentation of a clip or image, identical for all its frames.

    In order: random crop (a box of the output's aspect ratio, sides a factor drawn from
    ``scale`` of the largest such box, i.e. of the short side for square output, aspect
    stretched by a log-uniform draw from ``ratio``; uniform position), bilinear antialiased
    resize to ``size``, horizontal flip with probability ``flip_p``, colour jitter with
    probability ``jitter_p`` (brightness, contrast and saturation factors drawn from
    [1 - b, 1 + b] etc., in a random order; contrast blends towards each frame's mean luma, so
    the same function is applied to every frame), then random erasing with probability
    ``erase_p`` (area fraction from ``erase_scale``, aspect from ``erase_ratio``, filled with
    ``erase_value``; the same rectangle on every frame).

    Defaults: crops centred on the paper's scale 0.8 (``scale=(0.7, 0.9)``), square boxes,
    jitter strength 0.4 (SimCLR-style, p 0.8), torchvision's random-erasing settings.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        scale: tuple[float, float] = (0.7, 0.9),
        ratio: tuple[float, float] = (1.0, 1.0),
        flip_p: float = 0.5,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        jitter_p: float = 0.8,
        erase_p: float = 0.5,
        erase_scale: tuple[float, float] = (0.02, 0.33),
        erase_ratio: tuple[float, float] = (0.3, 3.3),
        erase_value: float = 0.0,
    ) -> None:
        self.size = _pair(size)
        self.scale = _check_range("scale", scale, lo=1e-3, hi=1.0)
        self.ratio = _check_range("ratio", ratio, lo=1e-3, hi=1e3)
        self.erase_scale = _check_range("erase_scale", erase_scale, lo=0.0, hi=1.0)
        self.erase_ratio = _check_range("erase_ratio", erase_ratio, lo=1e-3, hi=1e3)
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("erase_p", erase_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"ClipTrain {name} must be a probability in [0, 1], got {p}")
        for name, s in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"ClipTrain {name} strength must be in [0, 1], got {s}")
        self.flip_p, self.jitter_p, self.erase_p = flip_p, jitter_p, erase_p
        self.strengths = (brightness, contrast, saturation)
        self.erase_value = float(erase_value)

    def sample_params(self, height: int, width: int, *, generator: torch.Generator | None = None) -> ClipTrainParams:
        """Draw one set of parameters for an input of (height, width) pixels.

        The number of draws is fixed (unused draws are still made), so which branches fire
        does not shift the random stream of the next call.
        """
        out_h, out_w = self.size
        s = _uniform(*self.scale, generator)
        r = _log_uniform(*self.ratio, generator)
        crop_h, crop_w = _fit_box(height, width, aspect=(out_w / out_h) * r, scale=s)
        crop = Box(_randint(height - crop_h, generator), _randint(width - crop_w, generator), crop_h, crop_w)

        flip = float(torch.rand((), generator=generator)) < self.flip_p

        do_jitter = float(torch.rand((), generator=generator)) < self.jitter_p
        factors = tuple(_uniform(max(0.0, 1.0 - k), 1.0 + k, generator) for k in self.strengths)
        order = tuple(int(i) for i in torch.randperm(3, generator=generator))

        do_erase = float(torch.rand((), generator=generator)) < self.erase_p
        erase = None
        area = out_h * out_w * _uniform(*self.erase_scale, generator)
        aspect = _log_uniform(*self.erase_ratio, generator)
        eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        top_u, left_u = float(torch.rand((), generator=generator)), float(torch.rand((), generator=generator))
        if do_erase and 0 < eh < out_h and 0 < ew < out_w:
            erase = Box(int(top_u * (out_h - eh + 1)), int(left_u * (out_w - ew + 1)), eh, ew)

        return ClipTrainParams(
            crop=crop,
            flip=flip,
            jitter=factors if do_jitter else None,  # type: ignore[arg-type]
            jitter_order=order,  # type: ignore[arg-type]
            erase=erase,
        )

    def apply(self, x: torch.Tensor, params: ClipTrainParams) -> torch.Tensor:
        """Apply drawn parameters to (C, T, H, W) or (C, H, W) float; same output layout."""
        clip, was_image = _as_clip(x)
        out = _crop_resize(clip, params.crop, self.size)
        if params.flip:
            out = out.flip(-1)
        if params.jitter is not None:
            for i in params.jitter_order:
                out = _JITTERS[i](out, params.jitter[i])
        if params.erase is not None:
            e = params.erase
            out[:, :, e.top : e.top + e.height, e.left : e.left + e.width] = self.erase_value
        return _restore(out, was_image)

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        clip, _ = _as_clip(x)
        params = self.sample_params(clip.shape[2], clip.shape[3], generator=generator)
        return self.apply(x, params)

    def __repr__(self) -> str:
        b, c, s = self.strengths
        return (f"ClipTrain(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
                f"brightness={b}, contrast={c}, saturation={s}, jitter_p={self.jitter_p}, erase_p={self.erase_p}, "
                f"erase_scale={self.erase_scale}, erase_ratio={self.erase_ratio}, erase_value={self.erase_value})")


def adjust_brightness(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """(C, T, H, W) -> same; scales intensities, clamped to [0, 1]."""
    return (clip * factor).clamp_(0.0, 1.0)


def adjust_contrast(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """(C, T, H, W) -> same; blends each frame with its mean luma (torchvision's rule per frame)."""
    mean = _gray(clip).mean(dim=(2, 3), keepdim=True)  # (1, T, 1, 1)
    return (mean + factor * (clip - mean)).clamp_(0.0, 1.0)


def adjust_saturation(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """(C, T, H, W) -> same; blends each pixel with its luma."""
    gray = _gray(clip)
    return (gray + factor * (clip - gray)).clamp_(0.0, 1.0)


_JITTERS = (adjust_brightness, adjust_contrast, adjust_saturation)
