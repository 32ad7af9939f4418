"""UNDIAL (Dong et al. 2024): self-distillation towards the reference with the true token's logit lowered by β."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer


@dataclass
class UNDIALHparams(RetainHparams):
    alpha: float = field(default=0.0, metadata={"help": "weight α of the retain term (0: no retain term)"})
    beta: float = field(default=10.0, metadata={"help": "how much the true token's reference logit is lowered"})

    def __post_init__(self):
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@METHODS.register("UNDIAL")
class UNDIAL(UnlearnTrainer):
    """Cross-entropy to softmax(ref logits − β·onehot(label)) on answer tokens; lr 1e-4 by default."""

    Hparams = UNDIALHparams
    retain_use = "optional"
    training_defaults = {"learning_rate": 1e-4}
    paper_schedule = (1, 10)

    @classmethod
    def needs_reference(cls, hp, with_retain):
        return True

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        total = losses.undial_sum(self.logits(model, forget), self.ref_logits(forget), forget["labels"], self.hp.beta)
        return self.combine(self.per_item(total, "forget.tokens"), self.retain_term(model, inputs))
