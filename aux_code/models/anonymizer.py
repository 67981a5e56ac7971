"""The anonymizer fA: a per-frame 2D UNet (SPAct / TeD-SPAD), blur + quantize (BDQ), the identity.

Frames are RGB float in [0, 1], shape (N, 3, H, W); the UNet's output is in [0, 1] too
(sigmoid), so an anonymized clip can go straight into any model that expects raw frames.
No normalisation is applied: the UNet learns on [0, 1] directly, as in SPAct.
:class:`BlurQuantizeAnonymizer` (registry name ``bq``) keeps the same contract with 16
parameters and, unlike the UNet, can only remove information (see its docstring).

Clips (B, C, T, H, W) go through :func:`anonymize_clip`, which folds time into the batch
with a named rearrange. The public TeD-SPAD code reshaped (B, C, T, H, W) straight to
(-1, C, H, W), which mixes the colour channels of consecutive frames (REFERENCE.md s.7);
``tests/test_models.py`` checks that this helper does not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["DoubleConv", "UNetAnonymizer", "BlurQuantizeAnonymizer", "IdentityAnonymizer", "anonymize_clip"]


class DoubleConv(nn.Module):
    """(3x3 conv, BN, ReLU) x 2: (N, C_in, H, W) -> (N, C_out, H, W).

    ``mid_channels`` is the width of the first conv. The decoder blocks use half their
    input width there; with conv biases this reproduces SPAct's 17.27 M parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, *, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Down(nn.Module):
    """2x2 max-pool then DoubleConv: (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class _Up(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip, DoubleConv.

    (N, C_low, h, w) and skip (N, C_skip, H, W) -> (N, C_out, H, W). Upsampling straight
    to the skip's size (instead of 2x and then padding) keeps odd input sizes working.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, mid_channels=in_channels // 2)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, up], dim=1))


class UNetAnonymizer(nn.Module):
    """SPAct's UNet: (N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1].

    Encoder widths ``width * (1, 2, 4, 8, 8)`` (64-128-256-512-512 at full size), bilinear
    decoder with skip concatenation, 1x1 output conv to 3 channels, sigmoid.
    ``width=64`` has 17,267,523 parameters; small widths are for CPU tests.
    """

    def __init__(self, *, width: int = 64, in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        if width < 1:
            raise ValueError(f"UNetAnonymizer: width must be >= 1, got {width}")
        w = width
        self.width = width
        self.inc = DoubleConv(in_channels, w)
        self.down1 = _Down(w, 2 * w)
        self.down2 = _Down(2 * w, 4 * w)
        self.down3 = _Down(4 * w, 8 * w)
        # The bottleneck keeps 8w (not 16w): bilinear upsampling has no weights to halve it.
        self.down4 = _Down(8 * w, 8 * w)
        self.up1 = _Up(16 * w, 4 * w)
        self.up2 = _Up(8 * w, 2 * w)
        self.up3 = _Up(4 * w, w)
        self.up4 = _Up(2 * w, w)
        self.outc = nn.Conv2d(w, out_channels, kernel_size=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1]."""
        if frames.dim() != 4:
            raise ValueError(
                f"UNetAnonymizer expects frames (N, C, H, W), got shape {tuple(frames.shape)}; "
                "use anonymize_clip for clips (B, C, T, H, W)"
            )
        x1 = self.inc(frames)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return torch.sigmoid(self.outc(x))


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class BlurQuantizeAnonymizer(nn.Module):
    """BDQ's blur and quantize (Kumawat & Nagahara, CVPR 2022) without its temporal difference:
    (N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1], each frame on its own.

    1. Blur: a depthwise Gaussian (one sigma for all channels), separable, fixed kernel of
       ``2 * ceil(3 * sigma_max) + 1`` taps, reflect padding. sigma = sigma_min + (sigma_max -
       sigma_min) * sigmoid(sigma_logit): bounded like a clamp, but the bound never strands the
       parameter with a zero gradient the way a hard clamp of a log-sigma would.
    2. Quantize: ``q(x) = sum_k sigmoid(T * (x - b_k)) / (K - 1)`` over K - 1 thresholds
       b_1 < ... < b_{K-1}, shared by the channels. The thresholds are cumulative sums of softplus
       increments, so they stay sorted (q stays monotone) whatever an optimizer does to them.
       In train mode q is this soft staircase (gradients reach the thresholds and the input); in
       eval mode it is the hard staircase ``sum_k [x > b_k] / (K - 1)``, so what the later
       stages (and the minimax's budget Step 2 and validation, which run fA in eval mode) see takes
       at most K values per channel exactly.

    At init sigma = ``sigma_init`` (0.5 px: a mild blur) and the thresholds sit at the midpoints
    of K uniform levels, so the output is the input rounded to K levels (error <= 1 / (2 (K - 1))).

    Why this family cannot learn the near-invertible remaps the UNet finds: every member is a
    low-pass filter followed by a monotone per-channel staircase. The Gaussian's frequency
    response exp(-2 pi^2 sigma^2 f^2) is below 1 at every non-zero frequency, and the staircase
    maps each interval between thresholds to one value, so at most log2(K) bits per pixel and
    channel survive (exactly, in eval mode). Nothing can mix or permute colours or re-encode
    detail; the only moves are more blur and fewer or shifted levels, both of which discard
    information. 1 + (K - 1) parameters.
    """

    def __init__(self, *, levels: int = 16, temperature: float = 50.0, sigma_init: float = 0.5,
                 sigma_min: float = 0.1, sigma_max: float = 2.0):
        super().__init__()
        if levels < 2:
            raise ValueError(f"BlurQuantizeAnonymizer: levels must be >= 2, got {levels}")
        if temperature <= 0:
            raise ValueError(f"BlurQuantizeAnonymizer: temperature must be > 0, got {temperature}")
        if not 0 < sigma_min < sigma_init < sigma_max:
            raise ValueError(f"BlurQuantizeAnonymizer: need 0 < sigma_min < sigma_init < sigma_max, got "
                             f"{sigma_min}, {sigma_init}, {sigma_max}")
        self.levels, self.temperature = levels, float(temperature)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.radius = math.ceil(3 * sigma_max)
        fraction = (sigma_init - sigma_min) / (sigma_max - sigma_min)
        self.sigma_logit = nn.Parameter(torch.tensor(math.log(fraction / (1 - fraction))))
        step = 1.0 / (levels - 1)
        increments = torch.full((levels - 1,), step)
        increments[0] = step / 2
        self.threshold_increments = nn.Parameter(_inverse_softplus(increments))
        self.register_buffer("taps", torch.arange(-self.radius, self.radius + 1, dtype=torch.float32), persistent=False)

    def sigma(self) -> torch.Tensor:
        """The blur's standard deviation in pixels, a 0-dim tensor in [sigma_min, sigma_max]."""
        return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(self.sigma_logit)

    def thresholds(self) -> torch.Tensor:
        """(K - 1,) increasing quantization thresholds."""
        return torch.cumsum(F.softplus(self.threshold_increments), dim=0)

    def blur(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), Gaussian of :meth:`sigma`, reflect padding."""
        c, r = frames.shape[1], self.radius
        if min(frames.shape[-2:]) <= r:
            raise ValueError(f"BlurQuantizeAnonymizer: frames {tuple(frames.shape[-2:])} must be larger than the "
                             f"blur radius {r} (sigma_max {self.sigma_max}) for reflect padding")
        kernel = torch.exp(-0.5 * (self.taps / self.sigma()) ** 2)
        kernel = (kernel / kernel.sum()).to(frames.dtype)
        x = F.pad(frames, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W) in [0, 1]: soft staircase in train mode, hard in eval mode."""
        b = self.thresholds().to(x.dtype)
        if not self.training:
            # bucketize counts the thresholds strictly below x: sum_k [x > b_k], without a (K-1)-fold copy.
            return torch.bucketize(x, b.detach()).to(x.dtype) / (self.levels - 1)
        steps = torch.sigmoid(self.temperature * (x.unsqueeze(0) - b.view(-1, 1, 1, 1, 1)))
        return steps.sum(dim=0) / (self.levels - 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1] (float32; autocast off: T * (x - b) needs the precision)."""
        if frames.dim() != 4:
            raise ValueError(
                f"BlurQuantizeAnonymizer expects frames (N, C, H, W), got shape {tuple(frames.shape)}; "
                "use anonymize_clip for clips (B, C, T, H, W)"
            )
        with torch.autocast(device_type=frames.device.type, enabled=False):
            return self.quantize(self.blur(frames.float()))


class IdentityAnonymizer(nn.Module):
    """fA(x) = x exactly: the "raw" (no anonymization) method and layout tests.

    Has no parameters, so a minimax step on it only trains fT and fB.
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the same tensor values, (N, C, H, W)."""
        if frames.dim() != 4:
            raise ValueError(f"IdentityAnonymizer expects frames (N, C, H, W), got shape {tuple(frames.shape)}")
        return frames


def anonymize_clip(anonymizer: nn.Module, clip: torch.Tensor, *, frames_per_pass: int | None = None) -> torch.Tensor:
    """Apply a per-frame anonymizer to clips: (B, C, T, H, W) -> (B, C, T, H, W).

    Time is folded into the batch with ``b c t h w -> (b t) c h w`` so every 2D input is
    one real RGB frame. ``frames_per_pass`` bounds memory at feature-extraction time by
    running the frames in chunks (BatchNorm in train mode would then see smaller batches,
    so chunking is only allowed in eval mode).
    """
    if clip.dim() != 5:
        raise ValueError(f"anonymize_clip expects clips (B, C, T, H, W), got shape {tuple(clip.shape)}")
    b = clip.shape[0]
    frames = rearrange(clip, "b c t h w -> (b t) c h w")
    if frames_per_pass is None or frames.shape[0] <= frames_per_pass:
        out = anonymizer(frames)
    else:
        if anonymizer.training:
            raise ValueError("anonymize_clip: frames_per_pass is only allowed in eval mode (BatchNorm batch statistics)")
        out = torch.cat([anonymizer(chunk) for chunk in frames.split(frames_per_pass)], dim=0)
    return rearrange(out, "(b t) c h w -> b c t h w", b=b)
