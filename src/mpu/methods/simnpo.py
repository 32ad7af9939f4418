"""SimNPO (Fan et al. 2024): −(2/β)·mean log σ(β(ℓ_θ/|y| − δ)); no reference model."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer, positive


@dataclass
class SimNPOHparams(RetainHparams):
    gamma: float = field(default=0.125, metadata={"help": "weight γ of the forget term"})
    beta: float = field(default=4.5, metadata={"help": "inverse temperature β"})
    delta: float = field(default=0.0, metadata={"help": "reward margin δ on the length-normalised NLL"})

    def __post_init__(self):
        super().__post_init__()
        positive(beta=self.beta)


@METHODS.register("SimNPO")
class SimNPO(UnlearnTrainer):
    """NPO with the length-normalised NLL and a margin instead of a reference model."""

    Hparams = SimNPOHparams
    retain_use = "optional"
    paper_schedule = (10, 1)

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        labels = forget["labels"]
        nll = losses.sequence_nll(self.logits(model, forget), labels)
        terms = losses.simnpo_terms(nll, losses.answer_lengths(labels), self.hp.beta, self.hp.delta)
        forget_loss = self.per_item(terms.sum(), "forget.sequences")
        return self.combine(forget_loss, self.retain_term(model, inputs))
