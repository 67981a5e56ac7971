from __future__ import annotations

import math

import pytest
import torch

from aux_code.losses.contrastive import nt_xent, temporal_distinctive_triplet, temporal_invariance_loss, utility_loss
from aux_code.losses.mgfn import magnitude_contrast_terms, mgfn_loss

# ---------------------------------------------------------------- MGFN loss, B = 2


def _two_video_batch() -> dict[str, torch.Tensor]:
    return {
        "scores": torch.tensor([[0.1, 0.3, 0.2], [0.5, 0.9, 0.6]]),
        "video_scores": torch.tensor([0.2, 0.8]),
        "labels": torch.tensor([0, 1]),
        # (B=2, ncrops=1, k=2, C=2); L1 norms: normal (3, 3), abnormal (10, 6).
        "topk_features": torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]], [[[10.0, 0.0], [-4.0, 2.0]]]]),
    }


def test_mgfn_loss_terms_by_hand() -> None:
    total, terms = mgfn_loss(**_two_video_batch())
    # BCE: -(log(1 - 0.2) + log(0.8)) / 2 = -log(0.8).
    assert terms["bce"].item() == pytest.approx(-math.log(0.8), rel=1e-6)
    # Smoothness: (0.2^2 + 0.1^2) + (0.4^2 + 0.3^2) = 0.30, times 8e-4.
    assert terms["smoothness"].item() == pytest.approx(8e-4 * 0.30, rel=1e-5)
    # Sparsity on the abnormal video: ||(0.5, 0.9, 0.6)|| = sqrt(1.42), times 8e-3.
    assert terms["sparsity"].item() == pytest.approx(8e-3 * math.sqrt(1.42), rel=1e-6)
    # Separation: d = ||(10, 6) - (3, 3)|| = sqrt(58) = 7.6158; (200 - d)^2 = 37011.69, times 1e-6.
    assert terms["separation"].item() == pytest.approx(1e-6 * (200.0 - math.sqrt(58.0)) ** 2, rel=1e-6)
    assert terms["separation"].item() == pytest.approx(0.0370117, rel=1e-5)
    # One row per class: nothing to pair within a class.
    assert terms["compact_normal"].item() == 0.0 and terms["compact_abnormal"].item() == 0.0
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)


def test_mgfn_loss_sparsity_target_normal() -> None:
    _, terms = mgfn_loss(**_two_video_batch(), sparsity_target="normal")
    # ||(0.1, 0.3, 0.2)|| = sqrt(0.14).
    assert terms["sparsity"].item() == pytest.approx(8e-3 * math.sqrt(0.14), rel=1e-6)
    with pytest.raises(ValueError, match="sparsity_target"):
        mgfn_loss(**_two_video_batch(), sparsity_target="both")  # type: ignore[arg-type]


def test_mgfn_loss_weights_are_keywords() -> None:
    _, terms = mgfn_loss(
        **_two_video_batch(), smoothness_weight=1.0, sparsity_weight=1.0, margin=10.0, separation_weight=1.0
    )
    assert terms["smoothness"].item() == pytest.approx(0.30, rel=1e-5)
    assert terms["separation"].item() == pytest.approx((10.0 - math.sqrt(58.0)) ** 2, rel=1e-5)
    # Beyond the margin the separation term vanishes.
    _, far = mgfn_loss(**_two_video_batch(), margin=5.0)
    assert far["separation"].item() == 0.0


def test_mgfn_compact_terms_four_videos() -> None:
    # k = 2, C = 1 so each feature's L1 norm is its absolute value.
    feats = torch.tensor([[3.0, 3.0], [1.0, 2.0], [10.0, 6.0], [10.0, 10.0]]).reshape(4, 1, 2, 1)
    labels = torch.tensor([0, 0, 1, 1])
    scores = torch.full((4, 2), 0.5)
    _, terms = mgfn_loss(scores=scores, video_scores=torch.full((4,), 0.5), labels=labels, topk_features=feats)
    # Normal rows (3,3), (1,2): d^2 = 4 + 1 = 5. Abnormal rows (10,6), (10,10): d^2 = 16.
    assert terms["compact_normal"].item() == pytest.approx(1e-3 * 5.0)
    assert terms["compact_abnormal"].item() == pytest.approx(1e-3 * 16.0)
    # Pairs (abnormal i, normal i): d = sqrt(58) and sqrt(81 + 64) = sqrt(145).
    expected = ((200 - math.sqrt(58.0)) ** 2 + (200 - math.sqrt(145.0)) ** 2) / 2
    assert terms["separation"].item() == pytest.approx(1e-6 * expected, rel=1e-6)


def test_compact_pairs_rows_crop_major() -> None:
    # Two normal videos x two crops, k = C = 1. L1: v0c0 = 1, v0c1 = 2, v1c0 = 10, v1c1 = 14.
    normal = torch.tensor([[[[1.0]], [[2.0]]], [[[10.0]], [[14.0]]]])
    terms = magnitude_contrast_terms(normal, normal.clone())
    # Crop-major rows (1, 10, 2, 14) pair (1, 2) and (10, 14): (1 + 16) / 2 = 8.5
    # (video-major would pair (1, 10), (2, 14) and give 112.5).
    assert terms["compact_normal"].item() == pytest.approx(8.5)
    assert terms["separation"].item() == pytest.approx(200.0**2)


def test_mgfn_loss_rejects_unpaired_batch() -> None:
    batch = _two_video_batch()
    batch["labels"] = torch.tensor([1, 1])
    with pytest.raises(ValueError, match="same shape"):
        mgfn_loss(**batch)


# ---------------------------------------------------------------- stage-1 losses


def test_triplet_by_hand() -> None:
    anchor = torch.zeros(2, 2)
    positive = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    negative = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    # Row 0: 5 - 1 + 1 = 5. Row 1: 1 - 5 + 1 = -3 -> 0. Mean 2.5.
    assert temporal_distinctive_triplet(anchor, positive, negative).item() == pytest.approx(2.5)
    # mu = 0.5: row 0 -> 4.5, row 1 -> 0. Mean 2.25.
    assert temporal_distinctive_triplet(anchor, positive, negative, margin=0.5).item() == pytest.approx(2.25)


def test_nt_xent_aligned_views() -> None:
    # Normalised embeddings: e1, e2, e1, e2. Each row: positive similarity 1, two negatives
    # with similarity 0 -> loss = log(1 + 2 exp(-1/T)), every positive ranked first.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    result = nt_xent(z1, z2, temperature=0.5)
    assert result.loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2.0)), rel=1e-6)
    assert result.loss.item() == pytest.approx(0.2395448, rel=1e-5)
    assert result.accuracy.item() == 1.0
    assert nt_xent(z1, z2).loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-10.0)), abs=2e-6)


def test_nt_xent_swapped_views() -> None:
    # Views swapped: row 0 (e1) has its positive e2 at similarity 0, a negative e1 at 1.
    # loss = -log(e^0 / (e^0 + e^0 + e^{1/T})) = log(2 + e) at T = 1; no positive ranked first.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    result = nt_xent(z1, z2, temperature=1.0)
    assert result.loss.item() == pytest.approx(math.log(2 + math.e), rel=1e-6)
    assert result.accuracy.item() == 0.0


def test_temporal_invariance_pulls_same_video_clips() -> None:
    z_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = temporal_invariance_loss(z_t, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), temperature=1.0)
    crossed = temporal_invariance_loss(z_t, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), temperature=1.0)
    assert same.loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-1.0)), rel=1e-6)
    assert crossed.loss.item() > same.loss.item()


def test_utility_loss() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    labels = torch.tensor([0])
    # CE = log(1 + e^-2) = 0.126928; 0.1 * 2.5 added.
    total, terms = utility_loss(logits, labels, temporal=torch.tensor(2.5), omega=0.1)
    assert terms["ce"].item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    assert total.item() == pytest.approx(0.126928 + 0.25, rel=1e-5)
    ce_only, ce_terms = utility_loss(logits, labels)
    assert ce_only.item() == pytest.approx(0.126928, rel=1e-5) and ce_terms["temporal"].item() == 0.0
