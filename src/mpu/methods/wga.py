"""WGA (weighted gradient ascent, Wang et al. 2025): −mean over answer tokens of p^β · CE."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer


@dataclass
class WGAHparams(RetainHparams):
    beta: float = field(default=1.0, metadata={"help": "exponent β of the confidence weight p^β"})

    def __post_init__(self):
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@METHODS.register("WGA")
class WGA(UnlearnTrainer):
    """Gradient ascent whose per-token weight (detached) fades as a token's probability falls."""

    Hparams = WGAHparams
    retain_use = "optional"
    paper_schedule = (2, 5)

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        total = losses.weighted_ascent_sum(self.logits(model, forget), forget["labels"], self.hp.beta)
        return self.combine(self.per_item(total, "forget.tokens"), self.retain_term(model, inputs))
