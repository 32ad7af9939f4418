"""How Post-Process combines the m updates: the combination rule, a hook of :class:`mpu.server.round.Round`.

A rule turns the round's noise multipliers alpha_1..alpha_m and the independent noise share tau into
weights w_1..w_m (summing to 1); Post-Process then applies

    Delta = sum_k w_k Delta_k,      theta <- theta + eta * Delta.

Copy k was published with the noise alpha_k eps0_k + tau eta_k (in units of the block's sigma), where
the eps0_k are zero-sum across copies (element variance 1, correlation -1/(m-1) between copies) and
the eta_k independent standard normal. Two rules are registered in :data:`COMBINE_RULES`:

- ``harmonic`` (the default, and the protocol's rule): w_k = (1/alpha_k) / sum_j (1/alpha_j). Then
  sum_k w_k alpha_k eps0_k = 0 exactly, so the zero-sum noise cancels; the independent share leaves
  tau^2 sum_k w_k^2 per element.
- ``variance-optimal``: w = Sigma^-1 1 / (1^T Sigma^-1 1), Sigma = diag(alpha) C diag(alpha) + tau^2 I
  (C_kk = 1, C_jk = -1/(m-1)): the weights that minimise the variance of the combined noise
  w^T Sigma w. With tau = 0 they are the harmonic ones; with tau > 0 they trade a little uncancelled
  zero-sum noise for less independent noise. The client-side audit (:mod:`mpu.audit.alphas`) uses the
  same formula as its best linear attack.

A new rule is a class with ``name``, ``description`` and ``weights(alphas, tau)``, registered with
``@COMBINE_RULES.register("name")``. This module imports only the standard library (numpy when a
variance-optimal weight is computed), so the CLI lists the rules without loading torch.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from mpu.registry import Registry

DEFAULT_COMBINE = "harmonic"


class CombineRule(Protocol):
    """The hook: ``weights(alphas, tau)`` -> one weight per copy, in copy order, summing to 1."""

    name: str
    description: str

    def weights(self, alphas: Sequence[float], tau: float) -> list[float]:
        """w_1..w_m for the positive noise multipliers ``alphas`` (copy order) and the independent share
        ``tau`` >= 0 (in units of the block's sigma); they sum to 1."""
        ...


COMBINE_RULES: Registry[type] = Registry("combination rule")


def harmonic_weights(alphas: Sequence[float]) -> list[float]:
    """w_k = (1/alpha_k) / sum_j (1/alpha_j), in copy order: then sum_k w_k alpha_k eps0_k = 0 exactly for
    zero-sum eps0. ``alphas``: m positive floats. Raises ZeroDivisionError for an alpha of 0."""
    inverse = [1.0 / alpha for alpha in alphas]
    total = sum(inverse)
    return [value / total for value in inverse]


def noise_covariance(alphas: Sequence[float], tau: float = 0.0):
    """The m x m per-element covariance of the copies' noise in units of sigma^2 (a numpy array):
    Sigma = diag(alpha) C diag(alpha) + tau^2 I, C_kk = 1, C_jk = -1/(m-1). Needs m >= 2."""
    import numpy as np

    a = np.asarray(alphas, dtype=float)
    m = len(a)
    c = np.full((m, m), -1.0 / (m - 1))
    np.fill_diagonal(c, 1.0)
    return a[:, None] * c * a[None, :] + tau**2 * np.eye(m)


def optimal_weights(alphas: Sequence[float], tau: float = 0.0) -> list[float]:
    """The weights (summing to 1) that minimise the variance of the combined noise, given alpha and the
    independent share tau: Sigma^-1 1 / (1^T Sigma^-1 1) (:func:`noise_covariance`). With tau <= 0,
    Sigma is singular and the minimum (zero) is reached by the harmonic weights, which are returned."""
    if tau <= 0:
        return harmonic_weights(alphas)
    import numpy as np

    x = np.linalg.solve(noise_covariance(alphas, tau), np.ones(len(alphas)))
    return (x / x.sum()).tolist()


def combined_noise_std(weights: Sequence[float], alphas: Sequence[float], tau: float = 0.0) -> float:
    """Per-element standard deviation of sum_k w_k (alpha_k eps0_k + tau eta_k), in units of sigma."""
    import numpy as np

    w = np.asarray(weights, dtype=float)
    return float(np.sqrt(max(w @ noise_covariance(alphas, tau) @ w, 0.0)))


@COMBINE_RULES.register("harmonic")
class HarmonicCombine:
    """The protocol's rule: harmonic weights, which cancel the zero-sum noise exactly."""

    name = "harmonic"
    description = "w_k proportional to 1/alpha_k: cancels the zero-sum noise exactly (default)"

    def weights(self, alphas: Sequence[float], tau: float) -> list[float]:
        """:func:`harmonic_weights` of ``alphas``; ``tau`` is ignored."""
        return harmonic_weights(alphas)


@COMBINE_RULES.register("variance-optimal")
class VarianceOptimalCombine:
    """The minimum-variance weights of the combined noise, zero-sum and independent shares together."""

    name = "variance-optimal"
    description = ("Sigma^-1 1 / (1^T Sigma^-1 1): least combined noise variance when the independent share tau > 0 "
                   "(equals harmonic at tau = 0)")

    def weights(self, alphas: Sequence[float], tau: float) -> list[float]:
        """:func:`optimal_weights` of ``alphas`` and ``tau``."""
        return optimal_weights(alphas, tau)


def get_combine(rule: str | CombineRule) -> CombineRule:
    """The rule registered as ``rule`` (matched case-insensitively, ignoring ``_`` and ``-``), or ``rule``
    itself when it already is a rule object. Raises MPUError naming the known rules for an unknown name."""
    if isinstance(rule, str):
        return COMBINE_RULES.get(rule)()
    if not callable(getattr(rule, "weights", None)) or not isinstance(getattr(rule, "name", None), str):
        raise TypeError(f"a combination rule has a name and weights(alphas, tau), got {type(rule).__name__}")
    return rule


def combine_help() -> str:
    """One line per registered rule, ``name: description``, for ``--combine``'s help."""
    return "; ".join(f"{name}: {COMBINE_RULES.get(name).description}" for name in COMBINE_RULES.names())
