"""Run one unlearning method on one model: the Trainer settings, the training step and its result.

The run's inputs are one value, :class:`mpu.methods.job.UnlearnJob`; this module holds what it uses
(``training_arguments``, the prompt format and length policy, DP-SGD's plan, ``finish_unlearning``,
``frozen_gc``) and the positional adapters ``prepare_unlearning``/``run_unlearning``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from transformers import TrainingArguments

from mpu.errors import MPUError
from mpu.methods.base import METHODS, UnlearnTrainer
from mpu.methods.lora import lora_factors, merge_lora
from mpu.methods.memory import check_training_memory
from mpu.methods.options import TrainingConfig, build_dataclass

logger = logging.getLogger(__name__)


@dataclass
class UnlearnResult:
    """What one run did: optimizer ``steps``, the training loss per logging step, the training wall time
    in seconds, the merged LoRA factors (with ``lora_rank > 0``), the Trainer's log history, whether this
    process writes files, the rows' encoding record and the DP-SGD guarantee."""

    steps: int
    losses: list[float]  # the training loss at each logging step
    seconds: float  # wall time of training (data preparation and model loading excluded)
    lora_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # {base weight: (B·scaling, A)}
    log_history: list[dict[str, Any]] = field(default_factory=list)  # the Trainer's, with the loss terms
    is_main_process: bool = True  # only the main process should write files
    # the run's encoding: prompt format arguments, chat template hash, length policy, rows/tokens truncated
    encoding: dict[str, Any] = field(default_factory=dict)
    dp: dict[str, Any] | None = None  # the DP-SGD guarantee (mpu.methods.dp.PrivateSteps.report), or None


def method_hparams(name: str, overrides: dict[str, Any] | None = None, sources: dict[str, str] | None = None):
    """The validated hyperparameters of method ``name``: its defaults, changed by ``overrides``.

    An unknown key, a value of the wrong type or an invalid value raises ``MPUError`` naming the key
    and the method's valid keys.
    """
    cls = METHODS.get(name)
    return build_dataclass(cls.Hparams, dict(overrides or {}), f"{name} hyperparameter", sources)


def _resolve_hparams(method: str, hparams):
    cls = METHODS.get(method)
    if hparams is None or isinstance(hparams, dict):
        return method_hparams(method, hparams)
    if type(hparams) is not cls.Hparams:
        raise MPUError(f"hyperparameters {type(hparams).__name__} do not belong to method {method} ({cls.Hparams.__name__})")
    return hparams


# What every unlearning run's Trainer does, whatever the options: nothing saved or reported, the batch's
# extra columns kept (the methods read them), data loaded in this process (the pairing counts visits here).
# logging_nan_inf_filter off: a NaN or infinite loss is logged as it is, not replaced by the mean of the
# earlier ones (a diverged run read "loss 0 -> 0" and returned an all-NaN update as a normal one)
RUN_ARGUMENTS = dict(logging_strategy="steps", save_strategy="no", eval_strategy="no", report_to=[],
                     remove_unused_columns=False, dataloader_num_workers=0, logging_nan_inf_filter=False)


def training_arguments(training: TrainingConfig, output_dir: str) -> TrainingArguments:
    """The Hugging Face ``TrainingArguments`` of ``training`` (:meth:`TrainingConfig.hf_arguments`),
    with ``output_dir`` as the Trainer's scratch folder (nothing is saved there) and
    :data:`RUN_ARGUMENTS`; sets up gloo when several CPU processes train together."""
    arguments = training.hf_arguments()
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        arguments["activation_checkpointing"] = arguments.pop("gradient_checkpointing")  # transformers 5.x's name
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # Several CPU processes (torchrun on a machine without GPUs): accelerate sets up DDP over gloo
        # only when told it runs on the CPU; otherwise each process would train alone.
        arguments.update(use_cpu=True, ddp_backend="gloo")
    return TrainingArguments(output_dir=output_dir, **arguments, **RUN_ARGUMENTS,
                             dataloader_pin_memory=torch.cuda.is_available())


def prepare_unlearning(
    model: torch.nn.Module,
    tokenizer,
    forget_rows: Sequence[dict[str, Any]],
    retain_rows: Sequence[dict[str, Any]] | None,
    method: str,
    hparams,
    training: TrainingConfig,
    output_dir: str,
    reference: torch.nn.Module | Callable[[], torch.nn.Module] | None = None,
    dp_runs: int = 1,
) -> UnlearnTrainer:
    """Everything before ``train()``: :meth:`mpu.methods.job.UnlearnJob.prepare` of the job these
    arguments describe (kept for callers of the positional form)."""
    from mpu.methods.job import UnlearnJob

    return UnlearnJob(method, hparams, training, forget_rows, retain_rows, reference, dp_runs).prepare(model, tokenizer, output_dir)


def run_prompt_format(training: TrainingConfig, model, tokenizer):
    """The run's :class:`mpu.data.qa.PromptFormat` from ``prompt_format``/``system_prompt``/``date_string``."""
    from mpu.data.qa import model_name
    from mpu.data.templates import resolve_format

    return resolve_format(training.prompt_format, training.system_prompt, training.date_string, model_name(model, tokenizer))


def run_max_length(training: TrainingConfig, model, tokenizer) -> int:
    """The run's one length limit: ``max_length``, or the model's context length when not set."""
    from mpu.data.qa import model_max_length

    return training.max_length or model_max_length(model, tokenizer)


def _private_steps(cls: type[UnlearnTrainer], method: str, training: TrainingConfig, examples: int, runs: int):
    """DP-SGD for this run: σ from the ε asked for (or as given), over the steps the Trainer will take."""
    from mpu.methods.dp import PrivateSteps, plan

    if cls.dp_refusal:
        raise MPUError(f"{method} cannot train with differential privacy: {cls.dp_refusal}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MPUError("differential privacy (--dp-epsilon/--dp-noise-multiplier) runs in one process; drop torchrun/accelerate launch")
    batches = math.ceil(examples / training.batch_size)
    per_epoch = max(math.ceil(batches / training.gradient_accumulation_steps), 1)
    steps = training.max_steps if training.max_steps > 0 else math.ceil(training.epochs * per_epoch)
    settings = plan(epsilon=training.dp_epsilon, noise_multiplier=training.dp_noise_multiplier, delta=training.dp_delta,
                    clip_norm=training.dp_clip_norm, examples=examples,
                    batch=training.batch_size * training.gradient_accumulation_steps, steps=steps, runs=runs)
    logger.info("%s with DP-SGD: noise multiplier %.4g, clip norm %g, sample rate %.4g, %d steps x %d run(s), target ε %s, δ %g",
                method, settings.noise_multiplier, settings.clip_norm, settings.sample_rate, steps, runs,
                settings.target_epsilon, settings.delta)
    return PrivateSteps(settings)


def _retain_reason(hp) -> str:
    return f"its retain term has weight alpha={hp.alpha}; set alpha=0 to drop it" if hasattr(hp, "alpha") else "it constrains the retain loss"


def finish_unlearning(trainer: UnlearnTrainer) -> UnlearnResult:
    """``train()``, then merge LoRA into the model and put the model back as it came (flags, mode)."""
    model, saved = trainer.mpu_restore
    wrapped = trainer.model is not model  # a PEFT wrapper
    factors = None
    try:
        check_training_memory(trainer.model, trainer.args.optim, trainer.ref_model,
                              sharded=trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        if wrapped:
            factors = lora_factors(trainer.model)
            merge_lora(trainer.model)
            wrapped = False
    finally:
        if wrapped:  # training failed: take the adapters out again, unmerged
            trainer.model.unload()
        for name, param in model.named_parameters():
            param.requires_grad_(saved["requires_grad"].get(name, True))
        model.train(saved["training"])
    history = [dict(entry) for entry in trainer.state.log_history]
    result = UnlearnResult(
        steps=trainer.state.global_step,
        losses=[float(entry["loss"]) for entry in history if "loss" in entry],
        seconds=seconds,
        lora_factors=factors,
        log_history=history,
        is_main_process=trainer.is_world_process_zero(),
        encoding=trainer.train_dataset.record() if hasattr(trainer.train_dataset, "record") else {},
        dp=trainer.dp.report() if trainer.dp is not None else None,
    )
    trainer.ref_model = None
    trainer.mpu_restore = None
    return result


def run_unlearning(
    model: torch.nn.Module,
    tokenizer,
    forget_rows: list[dict],
    retain_rows: list[dict] | None,
    method: str,
    hparams,
    training: TrainingConfig,
    output_dir: str,
    reference: torch.nn.Module | Callable[[], torch.nn.Module] | None = None,
    dp_runs: int = 1,
) -> UnlearnResult:
    """Unlearn ``forget_rows`` from ``model`` in place with ``method``: :meth:`mpu.methods.job.UnlearnJob.run`
    of the job these arguments describe (kept for callers of the positional form).

    Reference-model methods (NPO, DPO, UNDIAL, the KL retain loss, RMU's retain activations) compare with
    a frozen deep copy of ``model`` taken at the start, or with ``reference`` (a model, or a callable
    that loads one) when given. With ``training.lora_rank > 0`` LoRA adapters are trained, merged into
    ``model`` at the end, and returned as ``lora_factors``.
    """
    from mpu.methods.job import UnlearnJob

    return UnlearnJob(method, hparams, training, forget_rows, retain_rows, reference, dp_runs).run(model, tokenizer, output_dir)


_FREEZE_DEPTH = 0  # how many frozen_gc() blocks are open; only the outermost one collects and freezes
_FROZE = False  # whether the outermost block froze (it does not when the caller had frozen objects itself)


@contextmanager
def frozen_gc():
    """The HF Trainer starts every ``train()`` with a full ``gc.collect()``, which walks every live Python
    object (0.2 s in a process with transformers loaded), once per copy and round. Collect once here and
    freeze what is alive, so those collections only walk the objects made since (the copies' models,
    which stay collectable); unfreeze at the end.

    Re-entrant: an inner block does nothing, so a caller that runs many trainings in one process
    (:func:`mpu.experiments.two_party.run_mpu`: R rounds of m copies) wraps all of them and pays the full collection once.
    :func:`run_unlearning` uses it too, so the noise-free baseline gets the same treatment. A process
    that froze objects itself is left alone: unfreezing at the end would undo its freeze. The nesting
    count is module state: use it from one thread (as the Trainer itself must be)."""
    global _FREEZE_DEPTH, _FROZE
    if _FREEZE_DEPTH == 0:
        _FROZE = gc.get_freeze_count() == 0
        if _FROZE:
            gc.collect()
            gc.freeze()
    _FREEZE_DEPTH += 1
    try:
        yield
    finally:
        _FREEZE_DEPTH -= 1
        if _FREEZE_DEPTH == 0 and _FROZE:
            gc.unfreeze()
