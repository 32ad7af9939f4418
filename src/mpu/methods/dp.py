"""Differentially private unlearning updates (DP-SGD) for the client's Trainer-based methods.

The server sees the client's updates, and a membership test on them tells the forgotten items from
the others (docs/privacy.md). With ``--dp-epsilon`` (or ``--dp-noise-multiplier``) every optimizer step
becomes a DP-SGD step (Abadi et al. 2016, "Deep Learning with Differential Privacy"):

    g = ( Σ_i clip_C(∇ℓ_i) + N(0, (σ·C)² I) ) / B

where ℓ_i is the method's loss on example i alone (a forget row together with the retain row and, for
DPO, the alternate answer paired with it), clip_C scales a gradient down to L2 norm C (Opacus's flat
clipping), σ is the noise multiplier and B the number of examples in the optimizer step. Privacy is
accounted with Opacus's RDP accountant (Mironov 2017) at sample rate q = B / N over the run's steps;
the update manifest records ε, δ, C, σ, q and the steps, nothing else about the data.

What the guarantee assumes: the accountant's ε is for Poisson-subsampled batches; the Trainer draws
shuffled fixed-size batches, the approximation most DP-SGD implementations make. The noise comes from
a generator seeded by the operating system's CSPRNG, never from the training seed, which the update
manifest publishes (a known seed would let the server subtract the noise).

Methods whose loss couples examples cannot be made per-example: they set ``dp_refusal``
(PDU: its dual variable λ is raised from the batch's retain loss, which is neither clipped nor noised).
"""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

import torch

# Opacus's default RDP orders extended upwards: small ε with few steps needs high orders for a tight bound.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024]
# Opacus adds this to the norm before dividing (opacus.optimizers.optimizer.DPOptimizer.clip_and_accumulate).
CLIP_EPSILON = 1e-6


@dataclass(frozen=True)
class DPConfig:
    """The privacy parameters of one run.

    ``noise_multiplier`` σ (noise std / C), ``clip_norm`` C (L2, in gradient units), ``delta`` δ,
    ``sample_rate`` q = examples per optimizer step / forget-set size, ``steps`` the optimizer steps of
    one run, ``runs`` how many runs on the same data the guarantee covers together (the m copies of a
    round: the server sees all of them), ``target_epsilon`` the ε asked for (None when σ was given).
    """

    noise_multiplier: float
    clip_norm: float
    delta: float
    sample_rate: float
    steps: int
    runs: int = 1
    target_epsilon: float | None = None


def plan(*, epsilon: float, noise_multiplier: float, delta: float, clip_norm: float, examples: int,
         batch: int, steps: int, runs: int = 1) -> DPConfig:
    """The DP settings for ``runs`` runs of ``steps`` optimizer steps of ``batch`` examples out of
    ``examples`` each; ε covers all of them together (RDP composition of runs × steps Gaussian steps).

    Exactly one of ``epsilon`` (> 0; σ is then found with Opacus's ``get_noise_multiplier``) and
    ``noise_multiplier`` (> 0, or 0 for clipping only, ε = ∞) is used; ``epsilon`` wins when both are set.
    Raises ValueError for a δ outside (0, 1), a C ≤ 0, or no examples or steps.
    """
    if not 0 < delta < 1:
        raise ValueError(f"dp_delta must be in (0, 1), got {delta}")
    if not clip_norm > 0:
        raise ValueError(f"dp_clip_norm must be > 0, got {clip_norm}")
    if examples < 1 or steps < 1 or batch < 1 or runs < 1:
        raise ValueError("differential privacy needs at least one example and one step")
    sample_rate = min(1.0, batch / examples)
    if epsilon > 0:
        from opacus.accountants.utils import get_noise_multiplier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                         steps=steps * runs, accountant="rdp", alphas=RDP_ORDERS)
        return DPConfig(float(sigma), clip_norm, delta, sample_rate, steps, runs, target_epsilon=epsilon)
    return DPConfig(float(noise_multiplier), clip_norm, delta, sample_rate, steps, runs)


def spent_epsilon(settings: DPConfig, steps: int) -> float:
    """ε spent after ``steps`` steps at the settings' σ and q (Opacus RDP accountant); ∞ without noise."""
    if settings.noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(settings.noise_multiplier, settings.sample_rate, steps)]
    with warnings.catch_warnings():   # "optimal order is the largest alpha": the bound is still valid
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=settings.delta, alphas=RDP_ORDERS))


class PrivateSteps:
    """Clips per-example gradients and noises their sum once per optimizer step, inside the Trainer.

    Used by :meth:`mpu.methods.base.UnlearnTrainer.training_step`: :meth:`accumulate` adds the clipped
    per-example gradients of one micro-batch to ``p.grad`` (already divided by the step's example count),
    :meth:`add_noise` adds N(0, (σC/B)²) to every trainable parameter's gradient at the step's end.
    """

    def __init__(self, settings: DPConfig, generator: torch.Generator | None = None):
        self.settings = settings
        self.steps_taken = 0
        self.clipped = 0   # examples whose gradient norm exceeded C
        self.examples = 0
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(secrets.randbits(63))
        self.generator = generator

    def accumulate(self, params: list[torch.Tensor], example_losses, step_examples: int) -> torch.Tensor:
        """Clip each example's gradient to C and add it, divided by ``step_examples``, to the ``.grad``.

        ``example_losses`` yields one scalar loss per example (its graph reaches ``params``). Returns
        the sum of the losses (detached), for logging.
        """
        total = torch.zeros(())
        for loss in example_losses:
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            norm = torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads if g is not None))
            factor = (self.settings.clip_norm / (norm + CLIP_EPSILON)).clamp(max=1.0)
            self.clipped += int(factor.item() < 1.0)
            self.examples += 1
            for p, g in zip(params, grads):
                if g is None:
                    continue
                share = (g * factor.to(g.dtype)) / step_examples
                p.grad = share.detach() if p.grad is None else p.grad + share.detach()
            total = total + loss.detach().float().cpu()
        return total

    def add_noise(self, params: list[torch.Tensor], step_examples: int) -> None:
        """N(0, (σ·C / B)²) on every coordinate of every trainable gradient; one accounting step."""
        std = self.settings.noise_multiplier * self.settings.clip_norm / step_examples
        if std > 0:
            for p in params:
                noise = torch.normal(0.0, std, size=p.shape, generator=self.generator, dtype=torch.float32)
                noise = noise.to(device=p.device, dtype=p.dtype)
                p.grad = noise if p.grad is None else p.grad + noise
        self.steps_taken += 1

    def report(self) -> dict[str, Any]:
        """What the update manifest records: the guarantee and its parameters (no data statistics).

        The count of clipped examples stays out: it depends on the data and is not covered by the noise.
        """
        s = self.settings
        # every run on the same data takes the same steps: ε of all of them together, and of this one
        epsilon = spent_epsilon(s, self.steps_taken * s.runs)
        one_run = spent_epsilon(s, self.steps_taken)
        return {
            "epsilon": None if math.isinf(epsilon) else round(epsilon, 6),
            "epsilon_one_copy": None if math.isinf(one_run) else round(one_run, 6),
            "runs": s.runs,
            "delta": s.delta,
            "clip_norm": s.clip_norm,
            "noise_multiplier": round(s.noise_multiplier, 6),
            "sample_rate": round(s.sample_rate, 8),
            "steps": self.steps_taken,
            "target_epsilon": s.target_epsilon,
            "accountant": "rdp (opacus)",
        }


# The name before settings dataclasses were all called *Config (one suffix for one concept).
DPSettings = DPConfig
