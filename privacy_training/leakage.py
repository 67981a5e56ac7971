"""Image-level leakage (Giorgi et al.'s DP-autoencoder paper): how much of the original survives fA.

- SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, on
  RGB in [0, 1] (data range 1), computed per channel and averaged, over the "valid" region
  (window fully inside the image): equal to ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
  channel_axis=...)``, which also averages over the region 5 pixels in from each border.
- MSE and PSNR = 10 log10(1 / MSE) per image; an identical pair has MSE 0 and no finite
  PSNR, reported as None (JSON null) and counted apart.
- Faces that OpenCV's frontal-face Haar cascade still finds (opencv-python-headless 4.x
  ships the cascade files; 5.0 does not).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from aux_code.anonymizers import haar_face_cascade


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1D Gaussian taps (size,) float64; the 2D window is their outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (M, 1, H, W) without padding -> (M, 1, H - k + 1, W - k + 1).

    The M maps go in as channels of one depthwise convolution (groups=M): on CPU that is ~4x
    faster than M single-channel images through one shared filter.
    """
    k, m = taps.numel(), x.shape[0]
    y = rearrange(x, "m 1 h w -> 1 m h w")
    y = F.conv2d(y, taps.view(1, 1, 1, k).expand(m, 1, 1, k), groups=m)
    y = F.conv2d(y, taps.view(1, 1, k, 1).expand(m, 1, k, 1), groups=m)
    return rearrange(y, "1 m h w -> m 1 h w")


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Mean SSIM per image: x, y (N, C, H, W) float -> (N,) float64.

    Local means/variances/covariance by a separable Gaussian filter without padding, so
    only windows fully inside the image count (as skimage's border crop does). float32 by
    default (float64 convolutions are ~25x slower on CPU; the difference is ~1e-6).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim: expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim: images {tuple(x.shape[-2:])} are smaller than the {window}x{window} window")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    n, c = x.shape[:2]
    # Channels into the batch: each channel is filtered on its own, as a grey image.
    a = rearrange(x.to(dtype), "n c h w -> (n c) 1 h w")
    b = rearrange(y.to(dtype), "n c h w -> (n c) 1 h w")
    taps = gaussian_window(window, sigma).to(device=a.device, dtype=dtype)
    # One filter pass over the five maps stacked along the batch.
    m = _filter_valid(torch.cat([a, b, a * a, b * b, a * b]), taps)
    mu_a, mu_b, e_aa, e_bb, e_ab = m.chunk(5)
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    per_channel = rearrange(s.mean(dim=(1, 2, 3)), "(n c) -> n c", n=n, c=c)
    return per_channel.double().mean(dim=1)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (N, C, H, W) pairs -> (N,) float64."""
    if x.shape != y.shape:
        raise ValueError(f"mse: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    return (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image, (N,) float64; +inf where the images are identical."""
    return 10.0 * torch.log10(data_range**2 / mse(x, y))


def similarity_summary(originals_u8: torch.Tensor, anonymized_u8: torch.Tensor, *, batch: int = 256) -> dict:
    """Mean SSIM / MSE / PSNR between uint8 (N, 3, H, W) originals and their anonymized versions.

    The PSNR mean is over the pairs that differ; ``identical`` counts the others.
    """
    ssims, mses = [], []
    for a, b in zip(originals_u8.split(batch), anonymized_u8.split(batch)):
        fa, fb = a.float() / 255.0, b.float() / 255.0
        ssims.append(ssim(fa, fb))
        mses.append(mse(fa, fb))
    s, m = torch.cat(ssims), torch.cat(mses)
    differ = m > 0
    p = 10.0 * torch.log10(1.0 / m[differ])
    return {
        "images": int(m.numel()),
        "ssim": float(s.mean()),
        "mse": float(m.mean()),
        "psnr_db": float(p.mean()) if differ.any() else None,
        "identical": int((~differ).sum()),
    }


def count_faces(image: np.ndarray, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 16) -> int:
    """Faces the Haar cascade finds in an RGB uint8 (H, W, 3) image."""
    import cv2

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"count_faces expects RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < min_size:
        return 0
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    found = haar_face_cascade().detectMultiScale(
        gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_size, min_size)
    )
    return int(len(found))


def face_summary(images_u8: torch.Tensor, **detector: Any) -> dict:
    """Faces found over uint8 (N, 3, H, W) images: total and images with at least one."""
    counts = [count_faces(rearrange(im, "c h w -> h w c").numpy(), **detector) for im in images_u8]
    return {"faces": int(sum(counts)), "images_with_face": int(sum(c > 0 for c in counts)), "images": len(counts)}
