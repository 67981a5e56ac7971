"""The two alternating steps of the minimax (TeD-SPAD Algorithm 1) and the losses they share.

Models: fA anonymizer (frames (N, 3, H, W) -> same, in [0, 1]), fT utility
(clips (B, 3, T, H, W) -> (logits (B, K), feature (B, D))), the embedding head
((B, D) -> (B, E) unit vectors) and fB budget ((N, 3, H, W) -> (N, P) unit vectors).

* Step 1 (:func:`anonymizer_step`): fT, head and fB in eval mode with their parameters
  frozen; fA minimises ``w_T * L_T - w_B * L_B``.
* Step 2 (:func:`adversary_step`): fA in eval mode, frozen, its outputs computed without a
  graph; fT (+ head) minimise L_T, fB minimises L_B.

``L_T = CE + omega * temporal`` where temporal is the triplet L_D (``tedspad``), L_I
(``temporal_invariance``), or absent (``spact``: the positive and negative clips are not even
run). ``L_B`` is NT-Xent between fB(fA(view1)) and fB(fA(view2)).

Anchor, positive and negative clips go through fA and fT as one concatenated batch: one
forward instead of three (fT's BatchNorm then sees the three roles together in Step 2).
Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from aux_code.losses.contrastive import nt_xent, temporal_distinctive_triplet, temporal_invariance_loss, utility_loss
from aux_code.models import anonymize_clip
from aux_code.fit import Stepper
from aux_code.precision import Precision


@dataclass
class MinimaxModels:
    anonymizer: nn.Module
    utility: nn.Module
    embedding: nn.Module
    budget: nn.Module

    def as_dict(self) -> dict[str, nn.Module]:
        return {"anonymizer": self.anonymizer, "utility": self.utility, "embedding": self.embedding, "budget": self.budget}


@dataclass(frozen=True)
class LossWeights:
    """What the steps need of the loss config (see LossSection)."""

    method: str = "tedspad"
    omega: float = 0.1
    margin: float = 1.0
    invariance_temperature: float = 0.1
    temperature: float = 0.1
    w_t: float = 0.7
    w_b: float = 1.0

    @property
    def temporal(self) -> bool:
        return self.method != "spact" and self.omega > 0


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and requires_grad False for the modules; both restored on exit.

    Freezing (rather than zeroing their gradients afterwards) also skips computing the
    parameter gradients of the frozen models.
    """
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)


def utility_terms(
    utility: nn.Module,
    embedding: nn.Module,
    anchor: torch.Tensor,
    labels: torch.Tensor,
    *,
    weights: LossWeights,
    positive: torch.Tensor | None = None,
    negative: torch.Tensor | None = None,
    precision: Precision | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """L_T on (already anonymized) clips (B, 3, T, H, W); returns (L_T, terms, anchor logits (B, K)).

    terms: "ce", "temporal" (already times omega; exactly 0 when the method has no temporal
    term) and, when computed, "triplet" or "invariance" (unweighted).
    """
    precision = precision or Precision("fp32", anchor.device)
    b = anchor.shape[0]
    if weights.temporal:
        if negative is None or (weights.method == "tedspad" and positive is None):
            raise ValueError(f"loss method {weights.method!r} with omega {weights.omega} needs the negative "
                             f"(and, for tedspad, the positive) clips")
        parts = [anchor, positive, negative] if weights.method == "tedspad" else [anchor, negative]
        with precision.autocast():
            logits, feature = utility(torch.cat(parts))
            z = embedding(feature).float()
        logits = logits[:b].float()
        if weights.method == "tedspad":
            temporal = temporal_distinctive_triplet(z[:b], z[b : 2 * b], z[2 * b :], margin=weights.margin)
            name = "triplet"
        else:
            temporal = temporal_invariance_loss(z[:b], z[b:], temperature=weights.invariance_temperature).loss
            name = "invariance"
        total, terms = utility_loss(logits, labels, temporal=temporal, omega=weights.omega)
        terms = {**terms, name: temporal}
    else:
        with precision.autocast():
            logits, _ = utility(anchor)
        logits = logits.float()
        total, terms = utility_loss(logits, labels, temporal=None)
    return total, terms, logits


def budget_terms(budget: nn.Module, view1: torch.Tensor, view2: torch.Tensor, *, temperature: float,
                 precision: Precision | None = None):
    """NT-Xent (loss, accuracy) of fB on two (already anonymized) views (N, 3, H, W)."""
    precision = precision or Precision("fp32", view1.device)
    n = view1.shape[0]
    with precision.autocast():
        z = budget(torch.cat([view1, view2])).float()
    return nt_xent(z[:n], z[n:], temperature=temperature)


def anonymize_action_batch(anonymizer: nn.Module, batch: Mapping[str, torch.Tensor], *, temporal: bool, method: str,
                           precision: Precision) -> dict[str, torch.Tensor]:
    """fA on the batch's clips (B, 3, T, H, W), as one concatenated pass; returns anchor/positive/negative."""
    roles = ["clip"]
    if temporal:
        roles = ["clip", "positive", "negative"] if method == "tedspad" else ["clip", "negative"]
    b = batch["clip"].shape[0]
    with precision.autocast():
        out = anonymize_clip(anonymizer, torch.cat([batch[r] for r in roles])).float()
    return {r: out[i * b : (i + 1) * b] for i, r in enumerate(roles)}


def anonymize_views(anonymizer: nn.Module, batch: Mapping[str, torch.Tensor], *, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """fA on both image views (N, 3, H, W), as one pass."""
    n = batch["view1"].shape[0]
    with precision.autocast():
        out = anonymizer(torch.cat([batch["view1"], batch["view2"]])).float()
    return out[:n], out[n:]


def anonymizer_step(
    models: MinimaxModels,
    optimizer: torch.optim.Optimizer,
    action: Mapping[str, torch.Tensor],
    images: Mapping[str, torch.Tensor],
    *,
    weights: LossWeights,
    stepper: Stepper,
) -> dict[str, float]:
    """Step 1: update fA only, on ``w_T * L_T - w_B * L_B``; fT, head, fB frozen in eval mode.

    ``action``: {"clip", "label"} (+ "positive", "negative" for temporal methods), clips
    (B, 3, T, H, W); ``images``: {"view1", "view2"} (N, 3, H, W). Returns the loss terms.
    """
    precision = stepper.precision
    models.anonymizer.train()
    with frozen(models.utility, models.embedding, models.budget):
        clips = anonymize_action_batch(models.anonymizer, action, temporal=weights.temporal, method=weights.method,
                                       precision=precision)
        l_t, terms, logits = utility_terms(
            models.utility, models.embedding, clips["clip"], action["label"], weights=weights,
            positive=clips.get("positive"), negative=clips.get("negative"), precision=precision,
        )
        v1, v2 = anonymize_views(models.anonymizer, images, precision=precision)
        budget = budget_terms(models.budget, v1, v2, temperature=weights.temperature, precision=precision)
        loss = weights.w_t * l_t - weights.w_b * budget.loss
        stepper.check({"step1_loss": loss, "L_T": l_t, "L_B": budget.loss, **terms}, half="anonymizer (Step 1)")
        optimizer.zero_grad(set_to_none=True)
        stepper.backward(loss, optimizer, name="anonymizer")
    return {
        "loss_A": float(loss.detach()), "L_T": float(l_t.detach()), "L_B": float(budget.loss.detach()),
        "budget_acc": float(budget.accuracy), "action_acc": float((logits.argmax(1) == action["label"]).float().mean()),
        **{k: float(v.detach()) for k, v in terms.items()},
    }


def adversary_step(
    models: MinimaxModels,
    utility_optimizer: torch.optim.Optimizer,
    budget_optimizer: torch.optim.Optimizer,
    action: Mapping[str, torch.Tensor],
    images: Mapping[str, torch.Tensor],
    *,
    weights: LossWeights,
    stepper: Stepper,
) -> dict[str, float]:
    """Step 2: fA frozen; fT + head minimise L_T, fB minimises L_B (each its own optimiser)."""
    precision = stepper.precision
    with frozen(models.anonymizer), torch.no_grad():
        clips = anonymize_action_batch(models.anonymizer, action, temporal=weights.temporal, method=weights.method,
                                       precision=precision)
        v1, v2 = anonymize_views(models.anonymizer, images, precision=precision)
    models.utility.train()
    models.embedding.train()
    models.budget.train()
    l_t, terms, logits = utility_terms(
        models.utility, models.embedding, clips["clip"], action["label"], weights=weights,
        positive=clips.get("positive"), negative=clips.get("negative"), precision=precision,
    )
    budget = budget_terms(models.budget, v1, v2, temperature=weights.temperature, precision=precision)
    stepper.check({"L_T": l_t, "L_B": budget.loss, **terms}, half="adversary (Step 2)")
    utility_optimizer.zero_grad(set_to_none=True)
    budget_optimizer.zero_grad(set_to_none=True)
    stepper.backward(l_t, utility_optimizer, name="utility")
    stepper.backward(budget.loss, budget_optimizer, name="budget")
    return {
        "L_T": float(l_t.detach()), "L_B": float(budget.loss.detach()), "budget_acc": float(budget.accuracy),
        "action_acc": float((logits.argmax(1) == action["label"]).float().mean()),
        **{k: float(v.detach()) for k, v in terms.items()},
    }
