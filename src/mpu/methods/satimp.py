"""SatImp (Yang et al. 2025): token-weighted ascent, −mean over tokens of p^β1 (1 − p)^β2 · CE."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer


@dataclass
class SatImpHparams(RetainHparams):
    gamma: float = field(default=0.1, metadata={"help": "weight γ of the forget term"})
    beta1: float = field(default=5.0, metadata={"help": "exponent β1 of the saturation weight p^β1"})
    beta2: float = field(default=1.0, metadata={"help": "exponent β2 of the importance weight (1 − p)^β2"})

    def __post_init__(self):
        super().__post_init__()
        if self.beta1 < 0 or self.beta2 < 0:
            raise ValueError("beta1 and beta2 must be >= 0")


@METHODS.register("SatImp")
class SatImp(UnlearnTrainer):
    """Weights (detached) favour tokens the model still predicts confidently but not certainly."""

    Hparams = SatImpHparams
    retain_use = "optional"
    paper_schedule = (10, 1)

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        logits = self.logits(model, forget)
        total = losses.weighted_ascent_sum(logits, forget["labels"], self.hp.beta1, self.hp.beta2)
        return self.combine(self.per_item(total, "forget.tokens"), self.retain_term(model, inputs))
