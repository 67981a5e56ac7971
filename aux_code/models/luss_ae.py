"""LUSS-AE (Lohani et al., VISAPP 2023): the 3D convolutional autoencoder of Gong et al. (2019,
MemAE's 3DCAE without the memory module) with a future-frame head and a playback-rate head.

Layout (paper preset, widths (96, 128, 256, 256), grey input ``b 1 t h w`` in [-1, 1]):

encoder  Conv3d k3 stride (1,2,2) -> 96,  BN, LeakyReLU(0.2)   b 96  t    h/2  w/2
         Conv3d k3 stride 2       -> 128, BN, LeakyReLU        b 128 t/2  h/4  w/4
         Conv3d k3 stride 2       -> 256, BN, LeakyReLU        b 256 t/4  h/8  w/8
         Conv3d k3 stride 2       -> 256, BN, LeakyReLU        b 256 t/8  h/16 w/16
decoder  ConvT3d k3 stride 2 (output_padding 1) -> 256, BN, LReLU   b 256 t/4 h/8 w/8
         ConvT3d k3 stride 2 -> 128, BN, LReLU                       b 128 t/2 h/4 w/4
         ConvT3d k3 stride 2 -> 96,  BN, LReLU                       b 96  t   h/2 w/2
         ConvT3d k3 stride (1,2,2), output_padding (0,1,1) -> 1      b 1   t   h   w
VCR      tanh(decoder output)                                        b 1 t h w
FFP head the decoder output's T frames as channels: Conv2d k3 (T -> 1) + tanh   b 1 h w
PRP head on the encoder code: mean over time (3D pooling), Conv2d k3 (256 -> 64), LReLU,
         global average pooling, Linear 64 -> 2 (logits of original / accelerated)  b 2

At 16x256x256 the autoencoder has 5.98 M parameters (Table 6's 3DCAE) and the whole model
6.13 M (Table 6: 6.12 M). Multiply-accumulates: encoder 16.1 G, decoder 16.1 G (Table 6's
16.23 G matches the encoder plus the heads, i.e. a counter that skips transposed convolutions;
see tests/test_luss_model.py). ``t`` must be a multiple of 8 and ``h``, ``w`` of 16.

BatchNorm and the PRP clip: in training, the PRP clip's encoder pass normalises with the running
statistics (and leaves them unchanged), as every test window will be normalised. With batch
statistics the playback-rate classifier learns to compare a clip with the rest of its 50/50
mixed batch, which no test window has: on held-out normal videos its cross-entropy was 0.05-0.2
with batch statistics and 0.25-1.8 with the running ones, swinging from epoch to epoch
(docs/luss_ae.md, "BatchNorm and the playback-rate head"). The reconstruction pass keeps batch
statistics, and only original-rate clips move the running statistics.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from einops import rearrange, reduce
from torch import nn

PRESETS: dict[str, dict] = {
    "paper": {"widths": (96, 128, 256, 256), "prp_width": 64},
    "small": {"widths": (16, 24, 32, 32), "prp_width": 16},
    "tiny": {"widths": (8, 12, 16, 16), "prp_width": 8},
}


@contextlib.contextmanager
def _running_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with (and do not update) their running statistics;
    gradients still flow through them."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm3d(channels), nn.LeakyReLU(0.2, inplace=True))


class LussAE(nn.Module):
    """3DCAE + FFP head + PRP head. ``forward`` returns (reconstruction, next frame, PRP logits)."""

    def __init__(self, *, clip_len: int = 16, widths: Sequence[int] = (96, 128, 256, 256), prp_width: int = 64,
                 in_channels: int = 1) -> None:
        super().__init__()
        if clip_len % 8:
            raise ValueError(f"LUSS-AE clip_len = {clip_len} must be a multiple of 8 (three temporal stride-2 convs)")
        w1, w2, w3, w4 = widths
        self.clip_len = clip_len
        self.in_channels = in_channels
        self.encoder = nn.Sequential(
            _block(nn.Conv3d(in_channels, w1, 3, stride=(1, 2, 2), padding=1), w1),
            _block(nn.Conv3d(w1, w2, 3, stride=2, padding=1), w2),
            _block(nn.Conv3d(w2, w3, 3, stride=2, padding=1), w3),
            _block(nn.Conv3d(w3, w4, 3, stride=2, padding=1), w4),
        )
        self.decoder = nn.Sequential(
            _block(nn.ConvTranspose3d(w4, w3, 3, stride=2, padding=1, output_padding=1), w3),
            _block(nn.ConvTranspose3d(w3, w2, 3, stride=2, padding=1, output_padding=1), w2),
            _block(nn.ConvTranspose3d(w2, w1, 3, stride=2, padding=1, output_padding=1), w1),
            nn.ConvTranspose3d(w1, in_channels, 3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1)),
        )
        self.ffp_head = nn.Conv2d(clip_len * in_channels, in_channels, 3, padding=1)
        self.prp_conv = nn.Sequential(nn.Conv2d(w4, prp_width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.prp_fc = nn.Linear(prp_width, 2)

    def _check(self, x: torch.Tensor) -> None:
        b, c, t, h, w = x.shape
        if c != self.in_channels or t != self.clip_len or h % 16 or w % 16:
            raise ValueError(f"LUSS-AE expects b {self.in_channels} {self.clip_len} h w with h, w multiples of 16; "
                             f"got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``b c t h w`` -> code ``b C t/8 h/16 w/16``."""
        self._check(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """code -> (reconstruction ``b c t h w`` in [-1, 1], next frame ``b c h w`` in [-1, 1])."""
        d = self.decoder(z)
        frame = torch.tanh(self.ffp_head(rearrange(d, "b c t h w -> b (c t) h w")))
        return torch.tanh(d), frame

    def prp_logits(self, z: torch.Tensor) -> torch.Tensor:
        """code ``b C t' h' w'`` -> logits ``b 2`` (index 1 = accelerated playback)."""
        f = self.prp_conv(reduce(z, "b c t h w -> b c h w", "mean"))
        return self.prp_fc(reduce(f, "b c h w -> b c", "mean"))

    def forward(self, x: torch.Tensor, x_prp: torch.Tensor | None = None):
        """``x`` (b c T h w) -> (recon b c T h w, next frame b c h w, PRP logits b 2 of ``x_prp``, or of ``x``)."""
        z = self.encode(x)
        recon, frame = self.decode(z)
        if x_prp is None:
            return recon, frame, self.prp_logits(z)
        with _running_statistics(self.encoder):
            z_prp = self.encode(x_prp)
        return recon, frame, self.prp_logits(z_prp)


def build_luss_ae(*, preset: str = "paper", clip_len: int = 16, widths: Sequence[int] | None = None,
                  prp_width: int | None = None) -> LussAE:
    """The registry builder (stored-model kind ``luss_ae``)."""
    if preset not in PRESETS:
        raise ValueError(f"LUSS-AE preset {preset!r} is not one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    return LussAE(clip_len=clip_len, widths=tuple(widths or p["widths"]), prp_width=prp_width or p["prp_width"])


def count_macs(model: LussAE, t: int = 16, h: int = 256, w: int = 256) -> dict[str, int]:
    """Multiply-accumulates of the convolutions and the FC per part, computed from the shapes (no forward)."""
    def conv_macs(mods, shape):
        total = 0
        c, tt, hh, ww = shape
        for m in mods.modules():
            if isinstance(m, nn.Conv3d):
                st = m.stride
                tt, hh, ww = (tt + st[0] - 1) // st[0], (hh + st[1] - 1) // st[1], (ww + st[2] - 1) // st[2]
                total += m.out_channels * tt * hh * ww * m.in_channels * 27
                c = m.out_channels
            elif isinstance(m, nn.ConvTranspose3d):
                total += c * tt * hh * ww * m.out_channels * 27  # each input element scatters a k^3 kernel
                st = m.stride
                tt, hh, ww = tt * st[0], hh * st[1], ww * st[2]
                c = m.out_channels
        return total, (c, tt, hh, ww)

    enc, code = conv_macs(model.encoder, (model.in_channels, t, h, w))
    dec, _ = conv_macs(model.decoder, code)
    ffp = model.ffp_head.in_channels * 9 * h * w
    c, _, hh, ww = code
    pw = model.prp_fc.in_features
    prp = c * pw * 9 * hh * ww + pw * 2
    return {"encoder": enc, "decoder": dec, "ffp": ffp, "prp": prp}
