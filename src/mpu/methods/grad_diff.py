"""GradDiff: gradient ascent on forget, descent on retain: loss = −γ·NLL(forget) + α·retain."""

from __future__ import annotations

from dataclasses import dataclass

from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer


@dataclass
class GradDiffHparams(RetainHparams):
    """γ = 1, α = 1, retain loss NLL (OpenUnlearning's defaults)."""


@METHODS.register("GradDiff")
class GradDiff(UnlearnTrainer):
    Hparams = GradDiffHparams
    retain_use = "required"
    paper_schedule = (1, 10)

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        forget_loss = -self.per_item(losses.nll_sum(self.logits(model, forget), forget["labels"]), "forget.tokens")
        return self.combine(forget_loss, self.retain_term(model, inputs))
