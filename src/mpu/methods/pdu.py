"""PDU (Entesari et al. 2025): primal-dual unlearning. Minimise γ·forget + λ·(retain − ε) over the model
and raise λ by dual ascent, λ ← max(0, λ + η·(retain − ε)), after each optimizer step (or epoch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import TrainerCallback

from mpu.data.qa import QACollator
from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer, step_mean


@dataclass
class PDUHparams(RetainHparams):
    alpha: float = field(default=1.0, metadata={"help": "initial dual variable λ on the retain constraint"})
    epsilon: Optional[float] = field(default=None, metadata={"help": "retain-loss bound ε (none: the retain loss of the model before unlearning)"})
    dual_step_size: float = field(default=1.0, metadata={"help": "dual ascent step η"})
    dual_update: str = field(default="step", metadata={"help": "update λ after every optimizer 'step' or every 'epoch'"})
    dual_warmup_epochs: float = field(default=0.0, metadata={"help": "keep λ fixed for this many epochs"})
    forget_loss: str = field(default="flatten", metadata={"help": "'flatten' ((max − mean logit)² on answer tokens) or 'GA' (−NLL)"})

    def __post_init__(self):
        super().__post_init__()
        if self.dual_update not in ("step", "epoch") or self.forget_loss not in ("flatten", "GA"):
            raise ValueError("dual_update must be 'step' or 'epoch'; forget_loss 'flatten' or 'GA'")
        if self.dual_step_size < 0 or self.dual_warmup_epochs < 0:
            raise ValueError("dual_step_size and dual_warmup_epochs must be >= 0")


@METHODS.register("PDU")
class PDU(UnlearnTrainer):
    Hparams = PDUHparams
    retain_use = "required"
    dp_refusal = "its dual variable λ is raised from the step's retain loss, which DP-SGD neither clips nor noises"

    @classmethod
    def uses_retain(cls, hp):
        return True  # the constraint is on the retain loss, whatever λ starts at

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # _pending: (step, retain-loss share) of the micro-batches since the last dual update
        self.dual, self.epsilon, self._pending = self.hp.alpha, self.hp.epsilon, []
        self.add_callback(_DualAscent(self))

    @torch.no_grad()
    def measure_epsilon(self) -> float:
        """The retain loss of the current model, averaged over every answer token of the retain set."""
        was_training, pad = self.model.training, QACollator(self.data_collator.pad_token_id)
        self.model.eval()
        total = count = 0.0
        retain, size = self.train_dataset.retain, self.args.per_device_train_batch_size
        for start in range(0, len(retain), size):
            batch = self._prepare_inputs(pad(retain[start:start + size]))
            total += self.retain_sum(self.model, batch).item()
            count += float(losses.answer_tokens(batch["labels"]))
        self.model.train(was_training)
        return total / count

    def dual_step(self, state) -> None:
        """λ ← max(0, λ + η·(retain − ε)), retain = the mean over the optimizer steps since the last update
        of each step's retain loss (over every retain token of the step, all processes)."""
        if not self._pending:
            return
        mean = step_mean([(step, True, value) for step, value in self._pending])
        self._pending = []
        if self.accelerator.num_processes > 1:
            mean = self.accelerator.reduce(mean, reduction="sum")  # each process holds its share
        if state.epoch >= self.hp.dual_warmup_epochs:
            self.dual = max(0.0, self.dual + self.hp.dual_step_size * (mean.item() - self.epsilon))

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        logits = self.logits(model, forget)
        if self.hp.forget_loss == "flatten":
            forget_total = losses.flatten_logits_sum(logits, forget["labels"])
        else:
            forget_total = -losses.nll_sum(logits, forget["labels"])
        forget_loss = self.per_item(forget_total, "forget.tokens")
        retain_loss = self.retain_term(model, inputs)
        if self.epsilon is None:
            self.epsilon = self.measure_epsilon()
        self._pending.append((self.state.global_step, retain_loss.detach()))
        self.record(forget_loss=forget_loss, retain_loss=retain_loss)
        self.record_value(dual=self.dual)
        # ε enters with this micro-batch's share of the step's retain tokens, so the shares add up to
        # λ·(retain − ε) for the step (the constant does not change the gradient, only the logged loss)
        share = self.per_item(losses.answer_tokens(inputs["retain"]["labels"]).float(), "retain.tokens")
        return self.hp.gamma * forget_loss + self.dual * (retain_loss - self.epsilon * share)


class _DualAscent(TrainerCallback):
    def __init__(self, trainer: PDU):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.epsilon is None:
            self.trainer.epsilon = self.trainer.measure_epsilon()

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.hp.dual_update == "step":
            self.trainer.dual_step(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.trainer.hp.dual_update == "epoch":
            self.trainer.dual_step(state)
