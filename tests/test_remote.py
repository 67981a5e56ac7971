"""The server's pieces of the remote split (remote.server; issue 16), on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aux_code.latent_codes import CodeFileError, encode_frames, encoder_digest
from aux_code.models.dpae import DPAutoencoder
from aux_code.models.mgfn import build_mgfn
from remote.server import check_headers, clip_features, detector_scores


def test_causal_scores_see_only_the_past() -> None:
    torch.manual_seed(0)
    mgfn = build_mgfn(preset="tiny", feature_dim=12).eval()
    feats = np.random.default_rng(0).standard_normal((7, 12)).astype(np.float32)
    causal = detector_scores(mgfn, feats, causal=True)
    offline = detector_scores(mgfn, feats, causal=False)
    assert causal.shape == offline.shape == (7,)
    for t in range(7):
        # Clip t's causal score is the offline score of the video cut after clip t ...
        assert causal[t] == pytest.approx(detector_scores(mgfn, feats[: t + 1], causal=False)[-1], abs=1e-6)
    # ... and the last one sees what the offline pass sees.
    assert causal[-1] == pytest.approx(offline[-1], abs=1e-6)
    # MGFN looks at the whole sequence, so the offline scores of earlier clips use the future.
    changed = feats.copy()
    changed[-1] += 5.0
    assert not np.allclose(detector_scores(mgfn, changed, causal=False)[:3], offline[:3])
    np.testing.assert_allclose(detector_scores(mgfn, changed, causal=True)[:3], causal[:3], atol=1e-6)


def test_clip_features_cut_clips_as_stage_3() -> None:
    class Mean(torch.nn.Module):
        feature_dim = 3

        def forward(self, x):  # (B, C, T, H, W) -> (logits, feature (B, C))
            return None, x.mean(dim=(2, 3, 4))

    frames = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1).expand(40, 3, 8, 8) / 40
    feats = clip_features(frames, Mean(), clip_len=4, skip=2, resolution=8, crop_scale=1.0, batch_size=2)
    # Non-overlapping clips of 4 frames at skip 2: clip s holds frames 8s, 8s+2, 8s+4, 8s+6.
    assert feats.shape == (5, 3)
    np.testing.assert_allclose(feats[:, 0], [(8 * s + 3) / 40 for s in range(5)], rtol=1e-6)
    with pytest.raises(ValueError, match="7 frames hold no clip of 4 frames at skip 2"):
        clip_features(frames[:7], Mean(), clip_len=4, skip=2, resolution=8, crop_scale=1.0)


def test_headers_are_checked_before_decoding(tmp_path) -> None:
    torch.manual_seed(0)
    ae = DPAutoencoder.build(width_mult=0.125)
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    good, bad = tmp_path / "a.dpae", tmp_path / "b.dpae"
    encode_frames(frames, ae.encoder, good)
    other = DPAutoencoder.build(width_mult=0.125)
    encode_frames(frames, other.encoder, bad)
    digest = encoder_digest(ae.encoder)
    assert check_headers([good], expected_digest=digest, code_channels=16)[good].frames == 3
    with pytest.raises(CodeFileError, match=r"b\.dpae: was written by encoder"):
        check_headers([good, bad], expected_digest=digest, code_channels=16)
    with pytest.raises(CodeFileError, match=r"a\.dpae: holds codes of shape \(16, 2, 2\); this decoder takes 8"):
        check_headers([good], expected_digest=digest, code_channels=8)
