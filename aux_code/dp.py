"""Differentially private training with Opacus: DP-SGD, DP-Adam, DP-Adagrad, and a no-DP path.

The DP autoencoder (Giorgi et al., JoWUA 2022, s.3.3.2 and 4.2) is trained with DP
optimizers: each example's gradient is clipped to ``max_grad_norm`` (L2 over all
parameters), the clipped gradients are summed, Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` is added, and the result, divided by the expected
batch size, is handed to an ordinary optimizer. Opacus wraps any torch optimizer that way,
so SGD / Adam / Adagrad become DP-SGD / DP-Adam / DP-Adagrad. Batches are drawn by
Poisson sampling (each example independently with probability ``sample_rate``), which is
what the accountant's guarantee assumes; a batch can therefore be empty, and
:func:`mean_over_batch` returns 0 rather than NaN for one.

Privacy: epsilon for a given delta after N steps, from Opacus's accountant (RDP by
default, as in the paper's TensorFlow Privacy; ``"prv"`` is Opacus's own default and gives a
tighter number). Small noise multipliers give no meaningful guarantee: at sample rate 0.01,
1000 steps and delta 1e-5, sigma 0.3 gives an epsilon in the thousands (see
:func:`epsilon_for`).

Everything is validated before any work (:func:`validate_settings`,
:func:`check_dp_compatible`): a noise multiplier <= 0, a target epsilon the accountant
cannot reach, a BatchNorm layer (it mixes the examples of a batch, so per-example
gradients do not exist) are refused with the value or the module named.

Training loop contract (aux_code.fit): forward through :attr:`DPTraining.module` (the
Opacus GradSampleModule, whose hooks record per-example gradients), pass
:attr:`DPTraining.optimizer` (the DPOptimizer) to ``stepper.update``: its ``zero_grad``
clears the per-example gradients too and its ``step`` clips, adds noise and steps. Store
:attr:`DPTraining.model` (the plain module, no ``_module.`` prefix) in checkpoints, and
:meth:`DPTraining.state_dict` (the accountant's history) in the task state so a resumed
run keeps counting its privacy spend.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "OPTIMIZERS",
    "ACCOUNTANTS",
    "DPError",
    "DPSettings",
    "DPTraining",
    "check_dp_compatible",
    "validate_settings",
    "epsilon_for",
    "make_optimizer",
    "make_training",
    "sampling_schedule",
    "mean_over_batch",
]

# Opacus's per-example hooks are full backward hooks on modules whose input (the frames) needs no
# gradient; torch warns on every backward that the hook then sees only the output gradient, which is
# all the per-example rule uses (tests/test_dpae_dp.py checks the gradients one example at a time).
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs",
                        category=UserWarning)

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
}
ACCOUNTANTS = ("rdp", "prv", "gdp")


class DPError(ValueError):
    """A DP training that cannot run as asked (bad setting, unreachable budget, incompatible layer)."""


@dataclass(frozen=True)
class DPSettings:
    """How to train: ``private=False`` is the paper's plain-Adam baseline (no clipping, no noise).

    With ``target_epsilon`` set, the noise multiplier is solved for it (the given
    ``noise_multiplier`` is then ignored); otherwise ``noise_multiplier`` is used as is.
    """

    optimizer: str = "adam"
    lr: float = 1e-5
    private: bool = True
    noise_multiplier: float | None = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    optimizer_args: Mapping[str, Any] = field(default_factory=dict)


def check_dp_compatible(model: nn.Module, *, who: str = "DP training") -> None:
    """Refuse a model Opacus cannot give per-example gradients for (BatchNorm first of all)."""
    batchnorms = [name or "<root>" for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batchnorms:
        raise DPError(
            f"{who}: {type(model).__name__} has BatchNorm layers ({', '.join(batchnorms)}); BatchNorm mixes the "
            "examples of a batch, so per-example gradients and DP-SGD are undefined. Use GroupNorm "
            "(opacus.validators.ModuleValidator.fix converts them)"
        )
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        shown = "; ".join(str(e) for e in errors[:5])
        raise DPError(f"{who}: Opacus cannot train {type(model).__name__} privately: {shown}")


def epsilon_for(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                accountant: str = "rdp") -> float:
    """Epsilon after ``steps`` Poisson-sampled steps at ``noise_multiplier`` (Opacus's accountant)."""
    from opacus.accountants.utils import create_accountant

    _check_accounting(noise_multiplier=noise_multiplier, sample_rate=sample_rate, delta=delta, accountant=accountant)
    if steps <= 0:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))


def _check_accounting(*, noise_multiplier: float | None, sample_rate: float, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise DPError(f"accountant {accountant!r} is not one of {', '.join(ACCOUNTANTS)}")
    if noise_multiplier is not None and not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise DPError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier} "
                      "(for training without DP use private=False)")
    if not 0.0 < sample_rate <= 1.0:
        raise DPError(f"sample rate must be in (0, 1], got {sample_rate}")
    if not 0.0 < delta < 1.0:
        raise DPError(f"delta must be in (0, 1), got {delta}")


def validate_settings(settings: DPSettings, *, sample_rate: float, steps: int) -> float | None:
    """Check ``settings`` before any work; returns the noise multiplier to train with (None without DP)."""
    if settings.optimizer not in OPTIMIZERS:
        raise DPError(f"optimizer {settings.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if not settings.lr > 0:
        raise DPError(f"lr must be > 0, got {settings.lr}")
    if not settings.private:
        return None
    if not settings.max_grad_norm > 0:
        raise DPError(f"max_grad_norm (per-example clipping norm) must be > 0, got {settings.max_grad_norm}")
    if steps <= 0:
        raise DPError(f"a DP training needs at least one step, got {steps}")
    if settings.target_epsilon is None:
        if settings.noise_multiplier is None:
            raise DPError("private training needs noise_multiplier or target_epsilon")
        _check_accounting(noise_multiplier=settings.noise_multiplier, sample_rate=sample_rate,
                          delta=settings.delta, accountant=settings.accountant)
        return float(settings.noise_multiplier)
    _check_accounting(noise_multiplier=None, sample_rate=sample_rate, delta=settings.delta,
                      accountant=settings.accountant)
    eps = settings.target_epsilon
    if not (eps > 0 and math.isfinite(eps)):
        raise DPError(f"target_epsilon must be a finite number > 0, got {eps}")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        sigma = get_noise_multiplier(target_epsilon=eps, target_delta=settings.delta, sample_rate=sample_rate,
                                     steps=steps, accountant=settings.accountant)
    except ValueError as e:
        raise DPError(f"target_epsilon {eps} at delta {settings.delta} cannot be reached with sample rate "
                      f"{sample_rate:.4g} over {steps} steps ({settings.accountant} accountant: {e}); "
                      "raise target_epsilon or delta, or train fewer steps / smaller batches") from None
    return float(sigma)


def make_optimizer(name: str, params, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise DPError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, **kwargs)


def mean_over_batch(per_example: torch.Tensor) -> torch.Tensor:
    """Mean of per-example losses, 0 (not NaN) for the empty batches of Poisson sampling.

    With Opacus's ``loss_reduction="mean"`` the per-example gradients are recovered from this
    mean exactly (its hooks multiply by the actual batch size).
    """
    return per_example.sum() / max(per_example.shape[0], 1)


@dataclass
class DPTraining:
    """The pieces a training step uses. ``module`` is what the forward goes through."""

    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    settings: DPSettings
    sample_rate: float
    noise_multiplier: float | None
    engine: Any = None  # opacus.PrivacyEngine, None without DP
    sampling_generator: torch.Generator | None = None  # batches (Poisson or shuffled)
    noise_generator: torch.Generator | None = None  # the Gaussian noise

    @property
    def private(self) -> bool:
        return self.engine is not None

    def epsilon(self, delta: float | None = None) -> float:
        """Privacy spent so far (inf without DP; 0 before the first private step)."""
        if self.engine is None:
            return math.inf
        if len(self.engine.accountant) == 0:
            return 0.0
        return float(self.engine.accountant.get_epsilon(delta=self.settings.delta if delta is None else delta))

    def steps_taken(self) -> int:
        if self.engine is None:
            return 0
        return int(sum(n for _, _, n in self.engine.accountant.history))

    def state_dict(self) -> dict:
        """Plain data for resume: the accountant's history of (noise, sample rate, steps) and
        the states of the sampling and noise generators."""
        state: dict[str, Any] = {"private": self.private}
        if self.engine is not None:
            state["history"] = [list(h) for h in self.engine.accountant.history]
        for key in ("sampling_generator", "noise_generator"):
            gen = getattr(self, key)
            if gen is not None:
                state[key] = gen.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if bool(state.get("private", False)) != self.private:
            raise DPError(f"resume state is for a {'private' if state.get('private') else 'non-private'} training, "
                          f"this one is {'private' if self.private else 'non-private'}")
        if self.engine is not None:
            self.engine.accountant.history = [tuple(h) for h in state.get("history", [])]
        for key in ("sampling_generator", "noise_generator"):
            gen = getattr(self, key)
            if gen is not None and key in state:
                gen.set_state(state[key])


def sampling_schedule(n: int, *, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, steps) of a training on ``n`` examples: ``ceil(n / batch_size)`` batches an epoch,
    each example in a batch with probability 1 / that (Opacus's DPDataLoader), over ``epochs``.
    Known before any data is decoded, so settings and budgets are checked first."""
    if n <= 0:
        raise DPError("DP training: the training set is empty")
    if batch_size <= 0:
        raise DPError(f"batch_size must be > 0, got {batch_size}")
    batches = math.ceil(n / batch_size)
    return 1.0 / batches, int(epochs) * batches


def make_training(
    model: nn.Module,
    dataset: Dataset,
    *,
    settings: DPSettings,
    batch_size: int,
    epochs: int,
    seed: int = 0,
    num_workers: int = 0,
) -> DPTraining:
    """Validate, then wrap ``model``, its optimizer and a loader of ``dataset`` for (DP) training.

    DP: Poisson sampling at ``1 / ceil(len(dataset) / batch_size)``, ``epochs * len(loader)`` steps
    accounted for ``target_epsilon``. No DP: a shuffled loader and the plain optimizer.
    """
    sample_rate, steps = sampling_schedule(len(dataset), batch_size=batch_size, epochs=epochs)  # type: ignore[arg-type]
    if settings.private:
        check_dp_compatible(model)
    sigma = validate_settings(settings, sample_rate=sample_rate, steps=steps)
    gen = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.lr, **dict(settings.optimizer_args))
    if not settings.private:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers)
        return DPTraining(model=model, module=model, optimizer=optimizer, loader=loader, settings=settings,
                          sample_rate=sample_rate, noise_multiplier=None, sampling_generator=gen)
    from opacus import PrivacyEngine

    loader = DataLoader(dataset, batch_size=batch_size, generator=gen, num_workers=num_workers)
    with warnings.catch_warnings():
        # secure_mode=False is the documented choice here: the noise comes from torch's generator, seeded
        # for reproducible runs; a deployment that needs a cryptographic RNG must retrain with secure_mode.
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        engine = PrivacyEngine(accountant=settings.accountant)
    # Opacus draws the noise on the parameters' device with this generator: it must live there.
    noise_gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 1)
    module, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_gen,
    )
    return DPTraining(model=model, module=module, optimizer=dp_optimizer, loader=dp_loader, settings=settings,
                      sample_rate=sample_rate, noise_multiplier=sigma, engine=engine, sampling_generator=gen,
                      noise_generator=noise_gen)
