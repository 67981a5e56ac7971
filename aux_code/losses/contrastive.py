"""Stage-1 (anonymization training) losses: triplet, NT-Xent, temporal invariance, utility.

Embeddings are (B, E). Shapes of every result are scalars unless stated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = [
    "NTXentResult",
    "nt_xent",
    "nt_xent_from_logits",
    "attribute_certainty",
    "similarity_certainty",
    "similarity_logits",
    "temporal_distinctive_triplet",
    "temporal_invariance_loss",
    "utility_loss",
]


class NTXentResult(NamedTuple):
    """loss: scalar; accuracy: scalar in [0, 1], fraction of the 2N rows whose positive is
    the most similar other embedding (the "agreement accuracy" SPAct logs)."""

    loss: torch.Tensor
    accuracy: torch.Tensor


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: expected two embeddings of the same shape (B, E), got {tuple(a.shape)} and {tuple(b.shape)}")


def temporal_distinctive_triplet(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *, margin: float = 1.0
) -> torch.Tensor:
    """TeD-SPAD Eq. 4: mean over B of max(d(z_t, z~_t) - d(z_t, z_t') + margin, 0), d = L2.

    anchor z_t: (B, E) clip at time t; positive z~_t: (B, E) the same frames augmented
    differently; negative z_t': (B, E) a clip of the same video at another time t'.
    """
    _check_pair("temporal_distinctive_triplet (anchor, positive)", anchor, positive)
    _check_pair("temporal_distinctive_triplet (anchor, negative)", anchor, negative)
    d_pos = torch.linalg.vector_norm(anchor - positive, ord=2, dim=1)
    d_neg = torch.linalg.vector_norm(anchor - negative, ord=2, dim=1)
    return torch.clamp(d_pos - d_neg + margin, min=0.0).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.1) -> NTXentResult:
    """NT-Xent (SimCLR, SPAct's budget loss) over two views z1, z2: (N, E) each.

    The 2N embeddings are L2-normalised; logits are the 2N x 2N cosine similarities over
    temperature with each row's self-similarity removed; row i's target is the other view
    of the same sample (i + N mod 2N); cross-entropy is summed over rows and divided by 2N.
    """
    logits, targets = similarity_logits(z1, z2, temperature=temperature, name="nt_xent")
    return nt_xent_from_logits(logits, targets)


def nt_xent_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> NTXentResult:
    """NT-Xent of :func:`similarity_logits`' (2N, 2N) logits and (2N,) targets: CE summed / 2N."""
    loss = F.cross_entropy(logits, targets, reduction="sum") / logits.shape[0]
    accuracy = (logits.detach().argmax(dim=1) == targets).to(logits.dtype).mean()
    return NTXentResult(loss, accuracy)


def similarity_logits(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float, name: str = "similarity_logits"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2N x 2N cosine-similarity logits of NT-Xent (self-similarity -inf) and each row's target.

    z1, z2: (N, E) two views; rows are the 2N embeddings ``[z1; z2]``; row i's target (the other
    view of its sample) is ``(i + N) mod 2N``. Returns (logits (2N, 2N), targets (2N,)).
    """
    _check_pair(name, z1, z2)
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(rearrange([z1, z2], "v n e -> (v n) e"), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return logits, targets


def similarity_certainty(logits: torch.Tensor) -> torch.Tensor:
    """A bounded privacy loss for the anonymizer: 1 - (mean row entropy) / log(2N - 1).

    ``logits``: (2N, 2N) from :func:`similarity_logits` (the diagonal -inf). Each row's softmax
    over the 2N - 1 other embeddings is the budget model's belief about which one is its positive;
    its entropy is at most log(2N - 1), reached only when every similarity in the row is equal.
    The result lies in [0, 1] whatever the logits' scale, and is 0 exactly at uniform similarity,
    so an anonymizer minimising it makes the budget unsure (BDQ / ALBAR's entropy objective) and
    gains nothing by pushing the positive below the negatives (which a negated NT-Xent rewards, and
    which is itself a pattern a fresh attacker can learn).
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1] or logits.shape[0] < 3:
        raise ValueError(f"similarity_certainty: expected (2N, 2N) logits with 2N >= 3, got {tuple(logits.shape)}")
    m = logits.shape[0]
    off = ~torch.eye(m, dtype=torch.bool, device=logits.device)
    rows = logits[off].reshape(m, m - 1)  # the diagonal (-inf) removed: 0 * log 0 would be nan
    log_p = F.log_softmax(rows, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return 1.0 - entropy.mean() / math.log(m - 1)


def temporal_invariance_loss(z_t: torch.Tensor, z_t_prime: torch.Tensor, *, temperature: float = 0.1) -> NTXentResult:
    """L_I of the Table 2 ablation: the opposite of the triplet, as CVRL / TCLR's instance loss.

    z_t, z_t_prime: (B, E) clips of the same B videos at two different times. Row i's
    positive is the other clip of video i; the 2B - 2 clips of the other videos are the
    negatives. This is NT-Xent with the time shift playing the role of the augmentation.
    """
    _check_pair("temporal_invariance_loss", z_t, z_t_prime)
    return nt_xent(z_t, z_t_prime, temperature=temperature)


def utility_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temporal: torch.Tensor | None = None,
    omega: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TeD-SPAD Eq. 6: L_T = CE(logits (B, K), labels (B,)) + omega * temporal.

    ``temporal`` is the already computed temporal term (the triplet L_D, or L_I for the
    ablation); None gives the SPAct-style CE-only utility loss.
    Returns (total, {"ce", "temporal"}) with "temporal" already multiplied by omega.
    """
    ce = F.cross_entropy(logits, labels)
    weighted = omega * temporal if temporal is not None else torch.zeros_like(ce)
    return ce + weighted, {"ce": ce, "temporal": weighted}


def attribute_certainty(logits: torch.Tensor) -> torch.Tensor:
    """The bounded privacy loss against an attribute classifier: 1 - mean binary entropy / log 2.

    ``logits``: (N, A) the budget's attribute logits. Each sigmoid is the budget's belief that an
    attribute is present; its binary entropy is at most log 2 (at probability 1/2, logit 0). The
    result lies in [0, 1] whatever the logits' scale and is 0 exactly when every prediction is
    1/2 (BDQ's "maximise the budget's entropy" with binary attributes).
    """
    if logits.ndim != 2 or logits.numel() == 0:
        raise ValueError(f"attribute_certainty: expected (N, A) logits, got {tuple(logits.shape)}")
    p = torch.sigmoid(logits)
    # -p log p - (1 - p) log(1 - p) written with logsigmoid: finite for any logit.
    entropy = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))
    return 1.0 - entropy.mean() / math.log(2.0)
