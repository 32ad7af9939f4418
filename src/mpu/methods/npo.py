"""NPO (Zhang et al. 2024): −(2/β)·mean log σ(β(ℓ_θ − ℓ_ref)), ℓ = summed answer NLL of a sequence."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer, positive


@dataclass
class NPOHparams(RetainHparams):
    beta: float = field(default=0.1, metadata={"help": "inverse temperature β of the NPO loss"})

    def __post_init__(self):
        super().__post_init__()
        positive(beta=self.beta)


@METHODS.register("NPO")
class NPO(UnlearnTrainer):
    """Pushes each forget answer's NLL above the reference model's; retain term optional (α)."""

    Hparams = NPOHparams
    retain_use = "optional"
    paper_schedule = (2, 5)

    @classmethod
    def needs_reference(cls, hp, with_retain):
        return True

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        nll = losses.sequence_nll(self.logits(model, forget), forget["labels"])
        ref_nll = losses.sequence_nll(self.ref_logits(forget), forget["labels"])
        forget_loss = self.per_item(losses.npo_terms(nll, ref_nll, self.hp.beta).sum(), "forget.sequences")
        return self.combine(forget_loss, self.retain_term(model, inputs))
