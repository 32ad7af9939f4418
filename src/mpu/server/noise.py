"""Pre-Process noise: per-block scale, zero-sum draws across copies, the alpha schedule."""

from __future__ import annotations

import math

import torch

from mpu.protocol import RoundKeys
from mpu.server.combine import harmonic_weights  # noqa: F401  (its home is mpu.server.combine; kept importable here)
from mpu.server.config import ServerConfig


def alphas_for_round(config: ServerConfig, secret: bytes) -> list[float]:
    """alpha_k for copies k = 1..m, in copy order (element i is copy i + 1's); unitless multipliers of
    the block's sigma, each >= 1 for ``public`` and ``secret``.

    ``public``: the paper's public schedule (arXiv 2602.23798), alpha_k = 1 + (k-1)/(m-1), evenly spaced
    on [1, 2]; ``list``: the configured ones; ``secret``: drawn uniformly on [1, alpha_max] from the round
    ``secret`` (:meth:`RoundKeys.alpha`), so they are fresh each round. ``config`` is already checked
    (m >= 2, one positive alpha per copy for ``list``), so nothing is raised here.
    """
    m = config.copies
    if config.alpha_mode == "public":
        return [1.0 + k / (m - 1) for k in range(m)]
    if config.alpha_mode == "list":
        return [float(alpha) for alpha in config.alphas]
    keys = RoundKeys(secret)
    return [keys.alpha(copy_id, config.alpha_max) for copy_id in range(1, m + 1)]


def zero_sum_noise(shape: torch.Size, sigma: float, generators: list[torch.Generator]) -> torch.Tensor:
    """The zero-sum noise of Pre-Process for m = ``len(generators)`` copies: eps0_k = sqrt(m/(m-1)) (z_k - mean_j z_j),
    z_k ~ N(0, sigma^2) drawn from ``generators[k]``. The m draws sum to 0 element-wise, each element has
    variance sigma^2, and two copies' elements have correlation -1/(m-1).

    Returns a float32 tensor ``[m, *shape]`` on the generators' device (copy k's noise is element k - 1),
    in the units of ``sigma`` (the block's weights). Needs m >= 2: m = 1 divides by zero."""
    m = len(generators)
    draws = torch.stack([torch.randn(shape, generator=gen, dtype=torch.float32, device=gen.device) for gen in generators])
    draws -= draws.mean(dim=0, keepdim=True)
    draws *= sigma * math.sqrt(m / (m - 1))
    return draws


def sum_sq(tensor: torch.Tensor) -> float:
    """Sum of squares (torch's float32 reduction sums blockwise, accurate to ~1e-6 relative; a
    float64 norm is several times slower on the CPU)."""
    return float(torch.linalg.vector_norm(tensor)) ** 2


def independent_noise(shape: torch.Size, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Noise of one copy alone, float32 ``shape`` on the generator's device, elements N(0, scale^2) with
    ``scale`` = tau * sigma: no other copy cancels it, for the server or a client."""
    return scale * torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)


def default_device() -> torch.device:
    """Where Pre- and Post-Process do their arithmetic: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rms(sum_of_squares: float, count: int) -> float:
    """sqrt(sum_of_squares / count), 0 for no elements."""
    return math.sqrt(sum_of_squares / count) if count else 0.0
