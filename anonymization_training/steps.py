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

fA's privacy term ``P`` is ``-L_B`` (the paper; ``privacy="ntxent"``) or the bounded
:func:`~aux_code.losses.contrastive.similarity_certainty` (``privacy="entropy"``), so Step 1
minimises ``w_T * L_T + w_B * P``. With a budget ensemble (members ``[budget, *ensemble]``,
Wu et al. TPAMI 2020) ``P`` is the worst case, the max over members, and Step 2 trains every
member on the same image batch; :class:`BudgetRestarts` re-initialises them on a schedule.

Anchor, positive and negative clips go through fA and fT as one concatenated batch: one
forward instead of three (fT's BatchNorm then sees the three roles together in Step 2).
Losses are computed in float32 even under autocast.

Memory (``optim.micro_batch``): the action batch can go through fA and fT in parts of
``micro_batch`` clips whose gradients are summed before the one optimiser step (each part's L_T
weighted by its share of the batch, so the step's gradient is the batch's). The image views
always go through in one pass: NT-Xent's negatives are the whole image batch. What micro-batches
change is BatchNorm's batch statistics in train mode (each part is normalised by its own, as
per-GPU BatchNorm is without sync) and the order of fT's dropout masks. (``optim.recompute``
acts on the models themselves, aux_code.memory.recompute_blocks; the steps do not see it.)

Under torchrun (anonymization_training.train) each step receives a :class:`MinimaxModels`
view in which only the models that step updates are DistributedDataParallel wrappers (Step 1:
fA; Step 2: fT, the head and every fB) and the frozen ones are the plain modules, so a step
all-reduces the gradients of exactly the models it steps; ``LossWeights.across_ranks`` makes
the batch-coupled terms gather the global batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from aux_code.losses.contrastive import (
    attribute_certainty,
    nt_xent,
    nt_xent_from_logits,
    similarity_certainty,
    similarity_logits,
    temporal_distinctive_triplet,
    temporal_invariance_loss,
    utility_loss,
)
from aux_code.models import anonymize_clip
from aux_code.fit import Stepper
from aux_code.precision import Precision
from aux_code.runtime import gather_rows


PRIVACY_OBJECTIVES = ("ntxent", "entropy")


def micro_batches(batch: Mapping[str, torch.Tensor], size: int | None) -> list[dict[str, torch.Tensor]]:
    """The action batch ({"clip", "label", ...}, B rows each) as consecutive micro-batches of
    ``size`` rows (one part when size is None or >= B); B must be a multiple of size."""
    b = batch["label"].shape[0]
    if size is None or size >= b:
        return [dict(batch)]
    if b % size:
        raise ValueError(f"micro-batches of {size} clips do not divide the batch of {b} clips (optim.micro_batch)")
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, b, size)]


def _no_sync(module: object, last: bool):
    """DDP all-reduces once, at the last micro-batch's backward; earlier ones only accumulate."""
    return contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()


def _mean_logs(parts: Sequence[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Share-weighted means of the micro-batches' logged values (shares sum to 1)."""
    out: dict[str, float] = {}
    for share, logs in parts:
        for k, v in logs.items():
            out[k] = out.get(k, 0.0) + share * v
    return out


def member_key(k: int) -> str:
    """Checkpoint / optimiser key of budget member k: 'budget' (the paper's fB) then 'budget_1', ..."""
    return "budget" if k == 0 else f"budget_{k}"


@dataclass
class MinimaxModels:
    """fA, fT, the triplet head and the budget model(s): ``budget`` is member 0 (the paper's fB),
    ``ensemble`` the further members of a budget ensemble (empty: the paper's single fB)."""

    anonymizer: nn.Module
    utility: nn.Module
    embedding: nn.Module
    budget: nn.Module
    ensemble: list[nn.Module] = field(default_factory=list)

    @property
    def budgets(self) -> list[nn.Module]:
        return [self.budget, *self.ensemble]

    def as_dict(self) -> dict[str, nn.Module]:
        out = {"anonymizer": self.anonymizer, "utility": self.utility, "embedding": self.embedding, "budget": self.budget}
        out.update({member_key(k): m for k, m in enumerate(self.ensemble, start=1)})
        return out


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
    privacy: str = "ntxent"
    budget_task: str = "ntxent"
    # Under torchrun each rank holds its shard of the global batch: the batch-coupled terms
    # (NT-Xent's negatives, the similarity certainty, L_I) then gather every rank's rows first.
    across_ranks: bool = False

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
            z_t, z_neg = z[:b], z[b:]
            if weights.across_ranks:
                z_t, z_neg = gather_rows(z_t), gather_rows(z_neg)
            temporal = temporal_invariance_loss(z_t, z_neg, temperature=weights.invariance_temperature).loss
            name = "invariance"
        total, terms = utility_loss(logits, labels, temporal=temporal, omega=weights.omega)
        terms = {**terms, name: temporal}
    else:
        with precision.autocast():
            logits, _ = utility(anchor)
        logits = logits.float()
        total, terms = utility_loss(logits, labels, temporal=None)
    return total, terms, logits


class BudgetTerms(NamedTuple):
    """loss: fB's NT-Xent L_B (what Step 2 minimises); accuracy: its agreement accuracy;
    privacy: fA's privacy term P against this fB (Step 1 minimises w_B * P): -L_B for the
    paper's objective, the bounded similarity certainty in [0, 1] for ``entropy``."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    privacy: torch.Tensor


def budget_terms(budget: nn.Module, view1: torch.Tensor, view2: torch.Tensor, *, temperature: float,
                 precision: Precision | None = None, privacy: str = "ntxent", across_ranks: bool = False) -> BudgetTerms:
    """NT-Xent (loss, accuracy) of fB on two (already anonymized) views (N, 3, H, W), and fA's
    privacy term under objective ``privacy`` (one of PRIVACY_OBJECTIVES).

    ``across_ranks``: the views are this rank's shard of a global batch; the embeddings of every
    rank are gathered (aux_code.runtime.gather_rows) so the negatives, and the values, are the
    global batch's (the same on every rank)."""
    precision = precision or Precision("fp32", view1.device)
    n = view1.shape[0]
    with precision.autocast():
        z = budget(torch.cat([view1, view2])).float()
    z1, z2 = z[:n], z[n:]
    if across_ranks:
        z1, z2 = gather_rows(z1), gather_rows(z2)
    if privacy == "ntxent":
        result = nt_xent(z1, z2, temperature=temperature)
        return BudgetTerms(result.loss, result.accuracy, -result.loss)
    if privacy == "entropy":
        logits, targets = similarity_logits(z1, z2, temperature=temperature, name="budget_terms")
        result = nt_xent_from_logits(logits, targets)
        return BudgetTerms(result.loss, result.accuracy, similarity_certainty(logits))
    raise ValueError(f"budget_terms: privacy objective {privacy!r} is not one of {', '.join(PRIVACY_OBJECTIVES)}")


def attribute_terms(budget: nn.Module, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor, *,
                    precision: Precision | None = None) -> BudgetTerms:
    """A supervised budget (Wu et al.'s): attribute logits of fB on both (already anonymized)
    views (N, 3, H, W) against the images' labels (N, A) 0/1. loss: BCE (what Step 2 minimises);
    accuracy: mean per-attribute accuracy at logit 0; privacy: the bounded attribute certainty."""
    precision = precision or Precision("fp32", view1.device)
    with precision.autocast():
        logits = budget(torch.cat([view1, view2])).float()
    targets = torch.cat([labels, labels]).float()
    if logits.shape != targets.shape:
        raise ValueError(f"attribute_terms: budget logits {tuple(logits.shape)} do not match labels {tuple(targets.shape)}")
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    accuracy = ((logits.detach() > 0).float() == targets).float().mean()
    return BudgetTerms(loss, accuracy, attribute_certainty(logits))


def member_terms(member: nn.Module, v1: torch.Tensor, v2: torch.Tensor, images: Mapping[str, torch.Tensor], *,
                 weights: LossWeights, precision: Precision) -> BudgetTerms:
    """One budget member's terms for the budget task of ``weights`` (NT-Xent or attributes)."""
    if weights.budget_task == "attributes":
        if "labels" not in images:
            raise ValueError("budget task 'attributes' needs the image batch's 'labels' (ImageViews(labels=True))")
        return attribute_terms(member, v1, v2, images["labels"], precision=precision)
    return budget_terms(member, v1, v2, temperature=weights.temperature, precision=precision, privacy=weights.privacy,
                        across_ranks=weights.across_ranks)


def worst_case(values: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(max of the scalar ``values``, index of the max): the member fA must beat hardest.

    One value is returned as it is (no stack: the single-fB graph stays the paper's)."""
    if not values:
        raise ValueError("worst_case: no budget members")
    if len(values) == 1:
        return values[0], 0
    stacked = torch.stack(list(values))
    k = int(stacked.detach().argmax())
    return stacked[k], k


def strongest(members: Sequence[BudgetTerms]) -> dict[str, float]:
    """Log values over an ensemble: the strongest member's L_B (min) and accuracy (max), and
    every member's own values when there is more than one."""
    out = {"L_B": min(float(m.loss.detach()) for m in members), "budget_acc": max(float(m.accuracy) for m in members)}
    if len(members) > 1:
        for k, m in enumerate(members):
            out[f"L_B_{k}"] = float(m.loss.detach())
            out[f"budget_acc_{k}"] = float(m.accuracy)
    return out


class BudgetRestarts:
    """Wu et al.'s (TPAMI 2020) "restarting": every ``every`` steps each budget member starts over,
    so fA cannot keep winning by exploiting what one long-trained fB happens to rely on.

    A restart happens before Step 1 of global step ``s`` (1-based, as fit counts them; the same
    when resumed) whenever ``s > 1`` and ``(s - 1) % every == 0``: each member has then trained
    exactly ``every`` steps since its last (re)start. ``start(k, r)`` gives member k's state dict
    for its r-th start; r = 0 is the state it began the run with (the budget_ssl checkpoint for
    member 0), and ``mode`` "init" always returns there while "random" draws start r = s // every
    afresh. Each member's optimiser state (Adam's moments) is cleared with it.
    """

    def __init__(self, every: int | None, mode: str, start: Callable[[int, int], Mapping[str, torch.Tensor]]) -> None:
        if every is not None and every < 1:
            raise ValueError(f"BudgetRestarts: every = {every} must be >= 1 (or None: never)")
        if mode not in ("init", "random"):
            raise ValueError(f"BudgetRestarts: mode {mode!r} is not 'init' or 'random'")
        self.every, self.mode, self.start = every, mode, start

    def due(self, step: int) -> bool:
        return self.every is not None and step > 1 and (step - 1) % self.every == 0

    def index(self, step: int) -> int:
        """Which start a restart before ``step`` loads (0 for mode "init")."""
        assert self.every is not None
        return 0 if self.mode == "init" else (step - 1) // self.every

    def apply(self, step: int, members: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> bool:
        """Restart every member if ``step`` is due; returns whether it was."""
        if not self.due(step):
            return False
        if len(members) != len(optimizers):
            raise ValueError(f"BudgetRestarts: {len(members)} members but {len(optimizers)} optimizers")
        r = self.index(step)
        for k, (member, optimizer) in enumerate(zip(members, optimizers)):
            # In place: the optimiser keeps pointing at the same parameter tensors.
            member.load_state_dict(self.start(k, r))
            optimizer.state.clear()
        return True


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
    micro_batch: int | None = None,
) -> dict[str, float]:
    """Step 1: update fA only, on ``w_T * L_T - w_B * L_B``; fT, head, fB frozen in eval mode.

    ``action``: {"clip", "label"} (+ "positive", "negative" for temporal methods), clips
    (B, 3, T, H, W); ``images``: {"view1", "view2"} (N, 3, H, W). Returns the loss terms.
    With micro-batches, L_T of each is backpropagated at its share of B, and the privacy term
    (one pass over the views) with the last one; then one optimiser step.
    """
    precision = stepper.precision
    models.anonymizer.train()
    parts = micro_batches(action, micro_batch)
    logs = []
    with frozen(models.utility, models.embedding, *models.budgets):
        optimizer.zero_grad(set_to_none=True)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            share = part["label"].shape[0] / action["label"].shape[0]
            with _no_sync(models.anonymizer, last):
                clips = anonymize_action_batch(models.anonymizer, part, temporal=weights.temporal, method=weights.method,
                                               precision=precision)
                l_t, terms, logits = utility_terms(
                    models.utility, models.embedding, clips["clip"], part["label"], weights=weights,
                    positive=clips.get("positive"), negative=clips.get("negative"), precision=precision,
                )
                loss = weights.w_t * (l_t if len(parts) == 1 else l_t * share)
                checked = {"L_T": l_t, **terms}
                if last:
                    v1, v2 = anonymize_views(models.anonymizer, images, precision=precision)
                    members = [member_terms(m, v1, v2, images, weights=weights, precision=precision)
                               for m in models.budgets]
                    privacy, worst = worst_case([m.privacy for m in members])
                    loss = loss + weights.w_b * privacy
                    checked = {"step1_loss": loss, **checked, "L_B": members[worst].loss, "privacy": privacy}
                stepper.check(checked, half="anonymizer (Step 1)")
                stepper.accumulate(loss, name="anonymizer")
            logs.append((share, {"L_T": float(l_t.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                                 "action_acc": float((logits.argmax(1) == part["label"]).float().mean())}))
        stepper.step_optimizer(optimizer, name="anonymizer")
    mean = _mean_logs(logs)
    out = {
        "loss_A": weights.w_t * mean["L_T"] + float(weights.w_b * privacy.detach()), "L_T": mean["L_T"],
        "L_B": float(members[worst].loss.detach()), "budget_acc": float(members[worst].accuracy),
        "action_acc": mean["action_acc"], **{k: mean[k] for k in terms},
    }
    if len(parts) == 1:  # the paper's single pass logs its own loss value as computed
        out["loss_A"] = float(loss.detach())
    if len(members) > 1 or weights.privacy != "ntxent" or weights.budget_task != "ntxent":  # the paper's run logs what it did
        out["privacy"] = float(privacy.detach())
        out["worst_member"] = float(worst)
    return out


def adversary_step(
    models: MinimaxModels,
    utility_optimizer: torch.optim.Optimizer,
    budget_optimizer: torch.optim.Optimizer,
    action: Mapping[str, torch.Tensor],
    images: Mapping[str, torch.Tensor],
    *,
    weights: LossWeights,
    stepper: Stepper,
    ensemble_optimizers: Sequence[torch.optim.Optimizer] = (),
    micro_batch: int | None = None,
) -> dict[str, float]:
    """Step 2: fA frozen; fT + head minimise L_T, every budget member minimises its own L_B on
    the same anonymized views (``budget_optimizer`` for fB, ``ensemble_optimizers`` for the
    further members, in order). Logged L_B / budget_acc are the strongest member's. With
    micro-batches fT's gradient is summed over them (each L_T at its share) before its step."""
    if len(ensemble_optimizers) != len(models.ensemble):
        raise ValueError(f"adversary_step: {len(models.ensemble)} further budget members but "
                         f"{len(ensemble_optimizers)} ensemble optimizers")
    precision = stepper.precision
    parts = micro_batches(action, micro_batch)
    with frozen(models.anonymizer), torch.no_grad():
        v1, v2 = anonymize_views(models.anonymizer, images, precision=precision)
    models.utility.train()
    models.embedding.train()
    for member in models.budgets:
        member.train()
    members = [member_terms(m, v1, v2, images, weights=weights, precision=precision)
               for m in models.budgets]
    stepper.check({f"L_B_{k}" if k else "L_B": m.loss for k, m in enumerate(members)}, half="adversary (Step 2)")
    budget_optimizers = [budget_optimizer, *ensemble_optimizers]
    utility_optimizer.zero_grad(set_to_none=True)
    for opt in budget_optimizers:
        opt.zero_grad(set_to_none=True)
    logs = []
    for i, part in enumerate(parts):
        share = part["label"].shape[0] / action["label"].shape[0]
        with frozen(models.anonymizer), torch.no_grad():
            clips = anonymize_action_batch(models.anonymizer, part, temporal=weights.temporal, method=weights.method,
                                           precision=precision)
        with _no_sync(models.utility, i == len(parts) - 1), _no_sync(models.embedding, i == len(parts) - 1):
            l_t, terms, logits = utility_terms(
                models.utility, models.embedding, clips["clip"], part["label"], weights=weights,
                positive=clips.get("positive"), negative=clips.get("negative"), precision=precision,
            )
            stepper.check({"L_T": l_t, **terms}, half="adversary (Step 2)")
            stepper.accumulate(l_t if len(parts) == 1 else l_t * share, name="utility")
        logs.append((share, {"L_T": float(l_t.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                             "action_acc": float((logits.argmax(1) == part["label"]).float().mean())}))
    stepper.step_optimizer(utility_optimizer, name="utility")
    for k, (m, opt) in enumerate(zip(members, budget_optimizers)):
        stepper.backward(m.loss, opt, name=member_key(k))
    return {**_mean_logs(logs), **strongest(members)}
