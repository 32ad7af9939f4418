"""The Trainer every method subclasses, the method registry and the hyperparameter base classes.

A training batch is ``{"forget": batch, "retain": batch}`` (``"retain"`` only when the method uses retain
data; DPO adds ``"alternate"``), each an ordinary padded causal-LM batch with labels on answer tokens. A
method overrides :meth:`UnlearnTrainer.unlearning_loss`; the shared maths lives in :mod:`mpu.methods.losses`.

Normalisation: a method sums its per-token or per-sequence terms over the micro-batch and divides by the
number of those items in the whole optimizer step (every micro-batch of the step, every process), through
:meth:`UnlearnTrainer.per_item`. The Trainer's own division by the number of accumulation steps is off
(``loss_is_scaled_for_ga``), so gradient accumulation, a short last micro-batch and several processes
give the update of one full batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from mpu.data.qa import IGNORE_INDEX
from mpu.methods import losses
from mpu.registry import Registry

logger = logging.getLogger(__name__)

METHODS: Registry = Registry("unlearning method")


@dataclass
class NoHparams:
    """A method without hyperparameters of its own."""


@dataclass
class RetainHparams:
    """Forget term weighted by γ, retain term by α; the retain term is NLL or KL to the reference."""

    RETAIN_LOSSES: ClassVar[tuple[str, ...]] = ("NLL", "KL")

    gamma: float = field(default=1.0, metadata={"help": "weight γ of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term (0: no retain term)"})
    retain_loss: str = field(default="NLL", metadata={"help": "retain term: NLL of retain answers, or KL to the reference model"})

    def __post_init__(self):
        if self.gamma < 0 or self.alpha < 0:
            raise ValueError("gamma and alpha must be >= 0")
        if self.retain_loss not in self.RETAIN_LOSSES:
            raise ValueError(f"retain_loss must be one of {', '.join(self.RETAIN_LOSSES)}, got {self.retain_loss!r}")


def positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


class UnlearnTrainer(Trainer):
    """A ``transformers.Trainer`` whose batches hold forget (and retain) examples.

    Class attributes a method sets: ``Hparams`` (its dataclass), ``retain_use`` ("none", "optional" or
    "required"), ``uses_alternate`` (DPO), ``training_defaults`` (TrainingConfig fields it changes) and
    ``paper_schedule`` (the paper's (R, E): rounds, epochs per round, for MPU runs).
    """

    Hparams: ClassVar[type] = NoHparams
    retain_use: ClassVar[str] = "none"
    uses_alternate: ClassVar[bool] = False
    training_defaults: ClassVar[dict[str, Any]] = {}
    paper_schedule: ClassVar[tuple[int, int]] = (1, 10)
    # compute_loss divides by the items of the whole optimizer step (see per_item): no further scaling.
    loss_is_scaled_for_ga = True
    # Why the method cannot train with differential privacy (its loss couples examples), or None.
    dp_refusal: ClassVar[str | None] = None
    # mpu.methods.dp.PrivateSteps when the run is differentially private (set by prepare_unlearning).
    dp = None

    @classmethod
    def uses_retain(cls, hp) -> bool:
        """Whether retain batches enter the loss with these hyperparameters."""
        return cls.retain_use != "none" and getattr(hp, "alpha", 0.0) != 0.0

    @classmethod
    def needs_retain(cls, hp) -> bool:
        """Whether running without retain data is an error."""
        return cls.retain_use == "required" and cls.uses_retain(hp)

    @classmethod
    def needs_reference(cls, hp, with_retain: bool) -> bool:
        """Whether the frozen copy of the starting model is used."""
        return with_retain and getattr(hp, "retain_loss", None) == "KL"

    @classmethod
    def prepare_model(cls, model: torch.nn.Module, hp) -> None:
        """Called before the optimizer exists, e.g. to freeze parameters. Default: train everything."""

    def __init__(self, *args, hparams, ref_model: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hp = hparams
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            else:
                self.ref_model = ref_model.to(self.args.device)
        self._parts: dict[str, list[tuple[int, bool, torch.Tensor]]] = {}
        self._items: StepItems | None = None
        self.remove_callback(PrinterCallback)
        if self.pop_callback(ProgressCallback) is not None:   # present only when the bar is on
            self.add_callback(_BarWithLoss())
        self.add_callback(_LogToLogger())

    # ---- forward passes ----
    @staticmethod
    def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits

    @torch.no_grad()
    def ref_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.ref_model is None:
            raise RuntimeError(f"{type(self).__name__} needs the reference model but none was built")
        return self.logits(self.ref_model, batch)

    def retain_term(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor | None:
        """The retain loss of this batch (NLL or KL to the reference, per retain token of the step), or
        None without retain data."""
        batch = inputs.get("retain")
        return None if batch is None else self.per_item(self.retain_sum(model, batch), "retain.tokens")

    def retain_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The retain loss (NLL or KL to the reference) summed over the batch's answer tokens."""
        logits = self.logits(model, batch)
        if self.hp.retain_loss == "KL":
            return losses.kl_sum(logits, self.ref_logits(batch), batch["labels"])
        return losses.nll_sum(logits, batch["labels"])

    def combine(self, forget: torch.Tensor, retain: torch.Tensor | None) -> torch.Tensor:
        """γ·forget + α·retain, recording both terms for the log."""
        self.record(forget_loss=forget)
        if retain is None:
            return self.hp.gamma * forget
        self.record(retain_loss=retain)
        return self.hp.gamma * forget + self.hp.alpha * retain

    # ---- normalisation over the optimizer step ----
    def count_items(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The items of one micro-batch a loss can be averaged over: ``"<part>.tokens"`` (answer tokens,
        i.e. predicted positions) and ``"<part>.sequences"`` (rows) for every part (forget, retain,
        alternate). A method that averages over other items (CE-U skips tokens) adds its own keys."""
        counts = {}
        for part, batch in inputs.items():
            if isinstance(batch, dict) and "labels" in batch:
                labels = batch["labels"]
                counts[f"{part}.tokens"] = (labels[:, 1:] != IGNORE_INDEX).sum()
                counts[f"{part}.sequences"] = torch.tensor(labels.shape[0], device=labels.device)
        return counts

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> "StepItems | None":
        """The Trainer's hook for the items of one optimizer step: here, every kind :meth:`count_items`
        knows, summed over the step's micro-batches and over all processes."""
        if not batch_samples:
            return None
        totals: dict[str, torch.Tensor] = {}
        for inputs in batch_samples:
            for key, value in self.count_items(inputs).items():
                totals[key] = totals.get(key, 0) + value.to(device=device, dtype=torch.float64)
        keys = sorted(totals)
        vector = torch.stack([totals[key] for key in keys])
        processes = self.accelerator.num_processes
        if processes > 1:
            # every process has the same keys (same method, same parts), so the vectors line up
            vector = self.accelerator.gather(vector.unsqueeze(0)).sum(0)
        return StepItems({key: vector[i] for i, key in enumerate(keys)}, processes=processes)

    def per_item(self, total: torch.Tensor, key: str) -> torch.Tensor:
        """``total`` (summed over this micro-batch's items) divided by the number of ``key`` items in the
        whole optimizer step. Outside ``train()`` (no step counts), by this batch's own count."""
        count = self._items[key]
        return total / count.to(total.device, total.dtype).clamp(min=1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The method's loss for one micro-batch, already normalised for the whole optimizer step.

        ``num_items_in_batch`` is what :meth:`_get_num_items_in_batch` counted for the step; without it
        (a direct call) the batch is its own step. Several processes: DDP averages the gradients over
        processes, so the loss is multiplied by their number to leave the sum over all items / their count.
        """
        if isinstance(num_items_in_batch, StepItems):
            self._items = num_items_in_batch
        else:
            self._items = StepItems(self.count_items(inputs), processes=1)
        loss = self.unlearning_loss(model, inputs)
        if self._items.processes > 1:
            loss = loss * self._items.processes
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, or with differential privacy a DP-SGD micro-batch: each example's loss
        (normalised over its own items) is differentiated alone, its gradient clipped and added to
        ``.grad`` divided by the step's example count; the step's last micro-batch adds the noise."""
        if self.dp is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        step_examples = int(num_items_in_batch["forget.sequences"].item()) if isinstance(num_items_in_batch, StepItems) \
            else int(inputs["forget"]["input_ids"].shape[0])
        params = [p for p in model.parameters() if p.requires_grad]

        def example_losses():
            for i in range(inputs["forget"]["input_ids"].shape[0]):
                example = {part: {key: value[i:i + 1] for key, value in batch.items()} for part, batch in inputs.items()}
                with self.compute_loss_context_manager():
                    yield self.compute_loss(model, example)

        total = self.dp.accumulate(params, example_losses(), step_examples)
        if self.accelerator.sync_gradients:
            self.dp.add_noise(params, step_examples)
        return (total / step_examples).to(self.args.device)

    def unlearning_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The method's loss for one micro-batch: sums of terms divided with :meth:`per_item`."""
        raise NotImplementedError(f"{type(self).__name__} must override unlearning_loss")

    # ---- logging of the loss terms ----
    def record(self, **parts: torch.Tensor | float) -> None:
        """Loss terms normalised by :meth:`per_item`: summed over the micro-batches of a step."""
        self._record(True, parts)

    def record_value(self, **values: torch.Tensor | float) -> None:
        """Values that are not parts of a sum (e.g. PDU's λ): averaged."""
        self._record(False, values)

    def _record(self, additive: bool, parts) -> None:
        for name, value in parts.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            self._parts.setdefault(name, []).append((self.state.global_step, additive, value.to(self.args.device)))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts:
            for name, entries in sorted(self._parts.items()):
                mean = step_mean(entries)
                if self.accelerator.num_processes > 1:
                    # additive terms are this process's share of the step's value: add the shares
                    mean = self.accelerator.reduce(mean, reduction="sum" if entries[0][1] else "mean")
                logs[name] = round(mean.item(), 6)
            self._parts = {}
        super().log(logs, start_time)


def step_mean(entries: list[tuple[int, bool, torch.Tensor]]) -> torch.Tensor:
    """The mean over optimizer steps of what was recorded: additive entries are summed within a step."""
    if not entries[0][1]:
        return torch.stack([value for _, _, value in entries]).mean()
    steps = {step for step, _, _ in entries}
    return torch.stack([value for _, _, value in entries]).sum() / len(steps)


class StepItems(dict):
    """``{"forget.tokens": n, "forget.sequences": n, ...}`` for one optimizer step (0-d tensors), and the
    number of processes whose micro-batches were counted."""

    def __init__(self, counts: dict[str, torch.Tensor], processes: int):
        super().__init__(counts)
        self.processes = processes

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return super().__getitem__(key)
        except KeyError:
            raise KeyError(f"no count of {key!r} in this step (counted: {', '.join(sorted(self))})") from None


class _BarWithLoss(ProgressCallback):
    """The Trainer's progress bar (on by default: ``--no-progress-bar`` turns it off) with the latest
    loss beside it, instead of one printed log dict per logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        bar = getattr(self, "training_bar", None)
        if bar is not None and logs and "loss" in logs:
            bar.set_postfix(loss=logs["loss"], refresh=False)


class _LogToLogger(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            logger.debug("step %d: %s", state.global_step, logs)
