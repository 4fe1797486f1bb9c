"""Model poisoning: what a Byzantine client sends instead of its honest update.

Each function maps updates (``u = w_client − w_global``, flattened to one float64 vector, or
a matrix with one row per client) to the update an attacker sends. These are the standard
attacks of the Byzantine-robustness literature, as used to evaluate Krum, the median and the
trimmed mean:

* **sign flip** — send ``−u``: the client pushes the model back the way it came (Damaskinos
  et al. 2018, "Asynchronous Byzantine Machine Learning"; Fang et al. 2020, "Local Model
  Poisoning Attacks to Byzantine-Robust Federated Learning");
* **scaling** — send ``k·u``: one large update dominates a plain average; the boosting of
  Bhagoji et al. 2019 ("Analyzing Federated Learning through an Adversarial Lens") and the
  model replacement of Bagdasaryan et al. 2020 ("How To Backdoor Federated Learning");
* **Gaussian** — send noise ``N(0, σ²)`` per coordinate (Blanchard et al. 2017, "Machine
  Learning with Adversaries: Byzantine Tolerant Gradient Descent"; Fang et al. 2020);
* **a little is enough** — send ``μ − z·σ`` of the honest updates, coordinate-wise
  (Baruch et al. 2019, "A Little Is Enough: Circumventing Defenses For Distributed
  Learning"): a shift small enough, in units of the honest clients' own spread, that the
  median, the trimmed mean and Krum all keep it, and consistent across attackers, so it adds
  up over rounds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]


def sign_flip(update: Vector) -> Vector:
    """``−u``."""
    return -update


def scaled(update: Vector, k: float) -> Vector:
    """``k·u``."""
    return k * update


def gaussian(size: int, sigma: float, rng: np.random.Generator) -> Vector:
    """A vector of ``size`` independent ``N(0, σ²)`` draws (the update is thrown away)."""
    return rng.normal(0.0, sigma, size=size)


def little_is_enough(honest: npt.NDArray[np.float64], z: float) -> Vector:
    """``μ − z·σ`` per coordinate, μ and σ the mean and (population) standard deviation of
    ``honest`` (one update per row). Every attacker sends the same vector."""
    if honest.ndim != 2 or len(honest) == 0:
        raise ValueError("little_is_enough needs a matrix with one honest update per row")
    mean = honest.mean(axis=0)
    std = honest.std(axis=0)
    result: Vector = mean - z * std
    return result


__all__ = ["Vector", "gaussian", "little_is_enough", "scaled", "sign_flip"]
