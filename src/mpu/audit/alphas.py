"""The alpha_k of a round, estimated from the copies alone (the combination weights: :mod:`mpu.server.combine`).

After alignment, copy k is ``theta + alpha_k eps0_k`` (in copy 1's coordinates), where the eps0_k
are the zero-sum draws of Pre-Process, sqrt(m/(m-1)) (z_k - mean_j z_j) with z_k ~ N(0, sigma^2):
each element has variance sigma^2 and two different copies' draws have correlation -1/(m-1). So
the squared distance of two aligned copies is, summed over all N perturbed elements (sigma varies per block, alpha does not)::

    ||c_i - c_j||^2 = S (alpha_i^2 + alpha_j^2 + 2 alpha_i alpha_j / (m - 1)),   S = sum N_l sigma_l^2

The distances involve theta not at all, so no knowledge of theta is needed. There are m(m-1)/2
distances and m unknowns up to a common scale (which the harmonic weights ignore): m = 3 is
exactly determined (theta is the Fermat point of the triangle of copies), m > 3 over-determined,
m = 2 not identifiable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

# The combination weights and the noise covariance have one home, the server's combination rules; the
# audit's best linear attack uses the same formulas.
from mpu.server.combine import combined_noise_std, harmonic_weights, optimal_weights  # noqa: F401


@dataclass
class AlphaEstimate:
    """The fitted alphas (None when not identifiable, with the reason in ``note``) and the fit's RMS
    relative misfit."""

    alphas: list[float] | None  # scaled so that the smallest is 1 (the scale is not identifiable)
    relative_residual: float | None  # RMS relative misfit of the distance model
    note: str = ""


def model_distances(beta: np.ndarray) -> np.ndarray:
    """The m x m matrix of modelled squared distances (in units of S) for the noise multipliers ``beta``
    (shape (m,)): beta_i^2 + beta_j^2 + 2 beta_i beta_j / (m - 1) (the diagonal is not a distance)."""
    m = len(beta)
    return beta[:, None] ** 2 + beta[None, :] ** 2 + 2 * beta[:, None] * beta[None, :] / (m - 1)


def estimate_alphas(distances: np.ndarray) -> AlphaEstimate:
    """Fit the zero-sum distance model to the m x m matrix of squared distances."""
    d = np.asarray(distances, dtype=float)
    m = d.shape[0]
    if m < 3:
        return AlphaEstimate(None, None, "not identifiable from distances with m = 2")
    iu = np.triu_indices(m, 1)
    target = d[iu]
    if not np.all(np.isfinite(target)) or np.any(target <= 0):
        return AlphaEstimate(None, None, "copies are identical (no noise): nothing to estimate")

    def residuals(beta):
        return model_distances(beta)[iu] / target - 1.0

    scale = np.sqrt(target.mean() / (2 + 2 / (m - 1)))
    starts = [np.full(m, scale)]
    rng = np.random.default_rng(0)
    starts += [scale * rng.uniform(0.5, 1.5, m) for _ in range(8)]
    best = None
    for start in starts:
        fit = least_squares(residuals, start, bounds=(1e-12 * scale, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
        if best is None or fit.cost < best.cost:
            best = fit
    beta = best.x
    rms = float(np.sqrt(np.mean(best.fun**2)))
    return AlphaEstimate([float(b / beta.min()) for b in beta], rms)
