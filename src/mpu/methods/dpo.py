"""IdK-DPO: DPO with an "I don't know" answer preferred over the true (forget) answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer, positive


@dataclass
class DPOHparams(RetainHparams):
    beta: float = field(default=0.1, metadata={"help": "inverse temperature β of the DPO loss"})

    def __post_init__(self):
        super().__post_init__()
        positive(beta=self.beta)


@METHODS.register("DPO")
class DPO(UnlearnTrainer):
    """Preferred answer: the forget row's ``alternate`` (or ``idk``) field, else one of the shipped IdK
    answers (``mpu/resources/idk.txt``) drawn per item and visit from the seed. Dispreferred: the answer."""

    Hparams = DPOHparams
    retain_use = "optional"
    uses_alternate = True
    paper_schedule = (10, 1)

    @classmethod
    def needs_reference(cls, hp, with_retain):
        return True

    def _nll(self, model, batch):
        logits = self.ref_logits(batch) if model is None else self.logits(model, batch)
        return losses.sequence_nll(logits, batch["labels"])

    def unlearning_loss(self, model, inputs):
        forget, idk = inputs["forget"], inputs["alternate"]
        lose, win = self._nll(model, forget), self._nll(model, idk)
        lose_ref, win_ref = self._nll(None, forget), self._nll(None, idk)  # None: the frozen reference
        terms = losses.dpo_terms(win, win_ref, lose, lose_ref, self.hp.beta)  # one per (forget, alternate) pair
        forget_loss = self.per_item(terms.sum(), "forget.sequences")
        return self.combine(forget_loss, self.retain_term(model, inputs))
