"""The Trainer every method subclasses, the method registry and the hyperparameter base classes.

A training batch is ``{"forget": batch, "retain": batch}`` (``"retain"`` only when the method uses retain
data; DPO adds ``"alternate"``), each an ordinary padded causal-LM batch with labels on answer tokens. A
method overrides :meth:`UnlearnTrainer.compute_loss`; the shared maths lives in :mod:`mpu.methods.losses`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback

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
    "required"), ``uses_alternate`` (DPO), ``training_defaults`` (TrainingOptions fields it changes) and
    ``reference_schedule`` (SPEC §4's (R, E) for MPU runs).
    """

    Hparams: ClassVar[type] = NoHparams
    retain_use: ClassVar[str] = "none"
    uses_alternate: ClassVar[bool] = False
    training_defaults: ClassVar[dict[str, Any]] = {}
    reference_schedule: ClassVar[tuple[int, int]] = (1, 10)
    # The loss is a per-micro-batch mean, so the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

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
        self._parts: dict[str, list[torch.Tensor]] = {}
        self.remove_callback(PrinterCallback)
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
        """The retain loss of this batch (NLL or KL to the reference), or None without retain data."""
        batch = inputs.get("retain")
        return None if batch is None else self.retain_loss_of(model, batch)

    def retain_loss_of(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.logits(model, batch)
        if self.hp.retain_loss == "KL":
            return losses.kl_to_reference(logits, self.ref_logits(batch), batch["labels"])
        return losses.mean_nll(logits, batch["labels"])

    def combine(self, forget: torch.Tensor, retain: torch.Tensor | None) -> torch.Tensor:
        """γ·forget + α·retain, recording both terms for the log."""
        self.record(forget_loss=forget)
        if retain is None:
            return self.hp.gamma * forget
        self.record(retain_loss=retain)
        return self.hp.gamma * forget + self.hp.alpha * retain

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        raise NotImplementedError(f"{type(self).__name__} must override compute_loss")

    # ---- logging of the loss terms ----
    def record(self, **parts: torch.Tensor | float) -> None:
        for name, value in parts.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            self._parts.setdefault(name, []).append(value.to(self.args.device))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts:
            for name, values in sorted(self._parts.items()):
                mean = torch.stack(values).mean()
                if self.accelerator.num_processes > 1:
                    mean = self.accelerator.reduce(mean, reduction="mean")
                logs[name] = round(mean.item(), 6)
            self._parts = {}
        super().log(logs, start_time)


class _LogToLogger(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            logger.debug("step %d: %s", state.global_step, logs)
