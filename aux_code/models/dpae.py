"""The DP autoencoder of Giorgi, Abbasi and Saracino (JoWUA 2022), split camera / server.

Encoder (the camera side): three 3x3 stride-2 convolutions with 240, 64 and 16 filters,
240x320x3 frames -> a 30x40x16 latent code (paper s.3.3.1). Decoder (the server side):
three 2x upsampling stages and a final 3x3 convolution back to the RGB frame.

Two departures from the paper, both for DP training with Opacus:

- the paper's decoder uses transposed convolutions; here each upsampling stage is a
  nearest-neighbour 2x upsample followed by a 3x3 convolution. Opacus 1.6 has no
  per-sample gradient rule for ``ConvTranspose2d`` and its functorch fallback fails on the
  empty batches that Poisson sampling produces; ``Conv2d`` has an exact rule;
- normalisation is GroupNorm (per-sample, so DP-compatible), never BatchNorm, which mixes
  the examples of a batch and which Opacus refuses.

Frames are RGB float in [0, 1], (N, 3, H, W) with H and W multiples of 8; the decoder ends
in a sigmoid so reconstructions are in [0, 1] too. The code is the last convolution's
output, unbounded (no activation), (N, code_channels, H/8, W/8).

``width_mult`` scales the hidden widths (240 and 64 in the encoder; 16, 64 and 240 in the
decoder), never the code: ``dpae_tiny`` (1/8) is the CPU preset. Encoder and decoder are
separate modules and separate stored-model records (kinds ``dpae_encoder`` /
``dpae_decoder``), so a camera-side file never holds the decoder.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ENCODER_WIDTHS",
    "DECODER_WIDTHS",
    "DPAEEncoder",
    "DPAEDecoder",
    "DPAutoencoder",
    "scaled_width",
    "group_count",
]

ENCODER_WIDTHS = (240, 64)  # the hidden convs; the third conv writes the code
DECODER_WIDTHS = (16, 64, 240)  # one per upsampling stage, mirroring the encoder
DOWNSAMPLE = 8  # three stride-2 stages


def scaled_width(channels: int, width_mult: float, *, minimum: int = 4) -> int:
    """``channels * width_mult`` rounded, at least ``minimum``."""
    return max(minimum, int(round(channels * width_mult)))


def group_count(channels: int, *, max_groups: int = 8) -> int:
    """The largest number of GroupNorm groups <= ``max_groups`` that divides ``channels``."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def _conv_block(c_in: int, c_out: int, *, stride: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)]
    if norm:
        layers.append(nn.GroupNorm(group_count(c_out), c_out))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _check_width_mult(width_mult: float, who: str) -> None:
    if not width_mult > 0:
        raise ValueError(f"{who}: width_mult must be > 0, got {width_mult}")


class DPAEEncoder(nn.Module):
    """(N, 3, H, W) in [0, 1] -> code (N, code_channels, H/8, W/8); H, W multiples of 8."""

    def __init__(self, *, width_mult: float = 1.0, code_channels: int = 16, in_channels: int = 3,
                 norm: bool = True) -> None:
        super().__init__()
        _check_width_mult(width_mult, "DPAEEncoder")
        w1, w2 = (scaled_width(c, width_mult) for c in ENCODER_WIDTHS)
        self.code_channels = code_channels
        self.in_channels = in_channels
        self.body = nn.Sequential(
            _conv_block(in_channels, w1, stride=2, norm=norm),
            _conv_block(w1, w2, stride=2, norm=norm),
            nn.Conv2d(w2, code_channels, kernel_size=3, stride=2, padding=1),
        )

    def code_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the code of one (3, height, width) frame."""
        check_frame_size(height, width, who="DPAEEncoder")
        return (self.code_channels, height // DOWNSAMPLE, width // DOWNSAMPLE)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != self.in_channels:
            raise ValueError(f"DPAEEncoder: expected frames (N, {self.in_channels}, H, W), got {tuple(frames.shape)}")
        check_frame_size(frames.shape[-2], frames.shape[-1], who="DPAEEncoder")
        return self.body(frames)


class DPAEDecoder(nn.Module):
    """code (N, code_channels, h, w) -> frames (N, 3, 8h, 8w) in [0, 1]."""

    def __init__(self, *, width_mult: float = 1.0, code_channels: int = 16, out_channels: int = 3,
                 norm: bool = True) -> None:
        super().__init__()
        _check_width_mult(width_mult, "DPAEDecoder")
        widths = [scaled_width(c, width_mult) for c in DECODER_WIDTHS]
        self.code_channels = code_channels
        stages: list[nn.Module] = []
        c_in = code_channels
        for c_out in widths:
            stages += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_block(c_in, c_out, stride=1, norm=norm)]
            c_in = c_out
        self.body = nn.Sequential(*stages, nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1), nn.Sigmoid())

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        if code.ndim != 4 or code.shape[1] != self.code_channels:
            raise ValueError(f"DPAEDecoder: expected a code (N, {self.code_channels}, h, w), got {tuple(code.shape)}")
        return self.body(code)


class DPAutoencoder(nn.Module):
    """Encoder + decoder as one module for training (Opacus wraps this); forward = reconstruction."""

    def __init__(self, encoder: DPAEEncoder, decoder: DPAEDecoder) -> None:
        super().__init__()
        if encoder.code_channels != decoder.code_channels:
            raise ValueError(f"DPAutoencoder: encoder writes {encoder.code_channels} code channels, "
                             f"decoder reads {decoder.code_channels}")
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def build(cls, *, width_mult: float = 1.0, code_channels: int = 16, norm: bool = True) -> "DPAutoencoder":
        return cls(DPAEEncoder(width_mult=width_mult, code_channels=code_channels, norm=norm),
                   DPAEDecoder(width_mult=width_mult, code_channels=code_channels, norm=norm))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(frames))


def check_frame_size(height: int, width: int, *, who: str) -> None:
    if height % DOWNSAMPLE or width % DOWNSAMPLE or height <= 0 or width <= 0:
        raise ValueError(f"{who}: frame size {height}x{width} must be positive multiples of {DOWNSAMPLE} "
                         f"(three stride-2 stages), e.g. 240x320")
