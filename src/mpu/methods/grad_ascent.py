"""GradAscent: gradient ascent on the forget answers, loss = −NLL(forget)."""

from __future__ import annotations

from mpu.methods import losses
from mpu.methods.base import METHODS, UnlearnTrainer


@METHODS.register("GradAscent")
class GradAscent(UnlearnTrainer):
    """No hyperparameters and no retain data: the plainest baseline, and the fastest to collapse a model."""

    paper_schedule = (1, 10)

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        loss = -self.per_item(losses.nll_sum(self.logits(model, forget), forget["labels"]), "forget.tokens")
        self.record(forget_loss=loss)
        return loss
