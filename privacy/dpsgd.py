"""Local DP-SGD with Opacus (Abadi et al. 2016, "Deep Learning with Differential Privacy",
CCS; Opacus: Yousefpour et al. 2021, arXiv:2109.12298).

`make_private` turns a task's model, optimizer and data loader into their Opacus
counterparts: per-example gradients clipped to ``max_grad_norm``, Gaussian noise of
``noise_multiplier · max_grad_norm`` added to each batch's gradient sum, and batches drawn
by Poisson sampling at rate ``q = 1 / len(loader)`` — the sampling the accountant assumes.

Two things would silently break that assumption, and are refused instead:

* a loader whose sampler does not cover the whole dataset uniformly (a subset, weighted or
  custom sampler, a custom batch sampler, ``drop_last``): Opacus replaces the sampler and
  takes ``1/len(loader)`` as the sampling rate, which is then not the rate at which each
  record is used (Opacus issue #813);
* layers whose per-example gradients do not exist (BatchNorm mixes examples in a batch).

The noise and the Poisson sampling draw from node-local randomness (the OS), never from a
seed the coordinator sends: whoever knows the noise can subtract it. ``noise_seed`` exists
for reproducible research in simulation only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from federator import ConfigError


@dataclass(frozen=True, kw_only=True)
class DpSgd:
    """The DP-SGD settings of one round of local training."""

    noise_multiplier: float
    max_grad_norm: float
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ConfigError(f"noise multiplier must be > 0 (got {self.noise_multiplier})")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm (clip) must be > 0 (got {self.max_grad_norm})")


def model_problems(model: torch.nn.Module) -> list[str]:
    """Why Opacus cannot compute per-example gradients for ``model`` (empty if it can)."""
    from opacus.validators import ModuleValidator

    problems = []
    for err in ModuleValidator.validate(model, strict=False):
        text = str(err).strip()
        if "BatchNorm" in text:
            text += (
                " — use GroupNorm (or LayerNorm) instead; "
                "opacus.validators.ModuleValidator.fix(model) does the swap"
            )
        problems.append(text)
    return problems


def check_model(model: torch.nn.Module) -> None:
    """`ConfigError` naming every layer DP-SGD cannot handle."""
    problems = model_problems(model)
    if problems:
        raise ConfigError(
            "the model cannot be trained with DP-SGD: " + "; ".join(dict.fromkeys(problems))
        )


def check_loader(loader: DataLoader[object]) -> None:
    """`ConfigError` if Poisson sampling over this loader would not match the accounting."""
    if isinstance(loader.dataset, IterableDataset):
        raise ConfigError("DP-SGD needs a map-style dataset (Poisson sampling by index)")
    batch_sampler = loader.batch_sampler
    if type(batch_sampler) is not BatchSampler:
        raise ConfigError(
            f"DP-SGD cannot account for a custom batch sampler ({type(batch_sampler).__name__})"
        )
    if batch_sampler.drop_last:
        raise ConfigError("DP-SGD cannot use drop_last=True: it changes the sampling rate")
    sampler = loader.sampler
    n = len(loader.dataset)  # type: ignore[arg-type]
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler.num_samples != n:
            raise ConfigError(
                "DP-SGD needs every record sampled at the same rate; this RandomSampler "
                f"draws {sampler.num_samples} of {n} records"
                + (" with replacement" if sampler.replacement else "")
            )
    elif type(sampler) is not SequentialSampler:
        raise ConfigError(
            f"DP-SGD cannot account for sampler {type(sampler).__name__}: Opacus would replace "
            "it by Poisson sampling over the whole dataset at rate 1/len(loader), which is "
            "not the rate this sampler uses records at (Opacus issue #813)"
        )


@dataclass
class PrivateParts:
    """What `make_private` hands back: use these instead of the originals."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader[object]
    _engine: object

    @property
    def steps(self) -> int:
        """Noisy optimizer steps taken so far (counted by Opacus)."""
        history = self._engine.accountant.history  # type: ignore[attr-defined]
        return sum(int(s) for _, _, s in history)


def sample_rate_for(num_examples: int, batch_size: int) -> float:
    """The Poisson sampling rate Opacus uses for ``num_examples`` at ``batch_size``."""
    batches = max(1, -(-num_examples // batch_size))
    return 1 / batches


@contextmanager
def make_private(
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[object],
    dp: DpSgd,
) -> Iterator[PrivateParts]:
    """Opacus-wrapped model, optimizer and Poisson loader for one round of training.

    The wrapped model shares its parameters with ``model``; on exit Opacus's hooks are
    removed, so ``model`` is a plain module again holding the trained weights.
    """
    from opacus import PrivacyEngine

    check_model(model)
    check_loader(loader)
    seed = dp.noise_seed if dp.noise_seed is not None else int.from_bytes(os.urandom(8), "big")
    fresh = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )
    with warnings.catch_warnings():
        # Opacus warns that its secure (CSPRNG) mode is off and that its backward hooks fire
        # on module outputs; both are known and documented in docs/privacy.md.
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
        engine = PrivacyEngine(accountant="rdp")
        private_model, private_opt, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=fresh,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(seed ^ 0x5DEECE66D),
        )
        try:
            yield PrivateParts(
                model=private_model,
                optimizer=private_opt,
                loader=private_loader,
                _engine=engine,
            )
        finally:
            private_model._close()


__all__ = [
    "DpSgd",
    "PrivateParts",
    "check_loader",
    "check_model",
    "make_private",
    "model_problems",
    "sample_rate_for",
]
