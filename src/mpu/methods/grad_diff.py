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
    reference_schedule = (1, 10)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget = inputs["forget"]
        forget_loss = -losses.mean_nll(self.logits(model, forget), forget["labels"])
        loss = self.combine(forget_loss, self.retain_term(model, inputs))
        return (loss, None) if return_outputs else loss
