"""CE-U (Yang et al. 2025, arXiv:2503.01224): cross-entropy to the model's own distribution with the
true token's logit set to −∞."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpu.methods import losses
from mpu.methods.base import METHODS, UnlearnTrainer


@dataclass
class CEUHparams:
    ignore_first_n_answer_tokens: int = field(
        default=1, metadata={"help": "skip the first n answer tokens of each sequence (the paper's footnote trick)"}
    )

    def __post_init__(self):
        if self.ignore_first_n_answer_tokens < 0:
            raise ValueError("ignore_first_n_answer_tokens must be >= 0")


@METHODS.register("CEU")
class CEU(UnlearnTrainer):
    """Forget-only: the target (detached) keeps the model's belief about every other token."""

    Hparams = CEUHparams
    reference_schedule = (1, 10)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget = inputs["forget"]
        loss = losses.ceu_loss(self.logits(model, forget), forget["labels"], self.hp.ignore_first_n_answer_tokens)
        self.record(forget_loss=loss)
        return (loss, None) if return_outputs else loss
