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
    paper_schedule = (1, 10)

    def count_items(self, inputs):
        """Adds ``"forget.ceu_tokens"``: the answer tokens left after skipping the first n of each sequence."""
        counts = super().count_items(inputs)
        trained = losses.ceu_labels(inputs["forget"]["labels"], self.hp.ignore_first_n_answer_tokens)
        counts["forget.ceu_tokens"] = losses.answer_tokens(trained)
        return counts

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        total = losses.ceu_sum(self.logits(model, forget), forget["labels"], self.hp.ignore_first_n_answer_tokens)
        loss = self.per_item(total, "forget.ceu_tokens")
        self.record(forget_loss=loss)
        return loss
