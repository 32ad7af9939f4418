"""GradAscent: gradient ascent on the forget answers, loss = −NLL(forget)."""

from __future__ import annotations

from mpu.methods import losses
from mpu.methods.base import METHODS, UnlearnTrainer


@METHODS.register("GradAscent")
class GradAscent(UnlearnTrainer):
    """No hyperparameters and no retain data: the plainest baseline, and the fastest to collapse a model."""

    reference_schedule = (1, 10)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget = inputs["forget"]
        loss = -losses.mean_nll(self.logits(model, forget), forget["labels"])
        self.record(forget_loss=loss)
        return (loss, None) if return_outputs else loss
