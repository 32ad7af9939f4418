"""Run one unlearning method on one model: what ``mpu unlearn`` and ``mpu client unlearn`` both call."""

from __future__ import annotations

import copy
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
from transformers import TrainingArguments, set_seed

from mpu.errors import MPUError
from mpu.methods.base import METHODS, UnlearnTrainer
from mpu.methods.data import ForgetRetainCollator, ForgetRetainDataset
from mpu.methods.lora import add_lora, lora_factors, merge_lora
from mpu.methods.options import TrainingOptions, build_dataclass

logger = logging.getLogger(__name__)


@dataclass
class UnlearnResult:
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


def training_arguments(training: TrainingOptions, output_dir: str) -> TrainingArguments:
    scheduler = training.lr_scheduler_type
    if training.warmup_ratio > 0 and scheduler == "constant":
        scheduler = "constant_with_warmup"  # "constant" alone ignores warmup
    extra = {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # Several CPU processes (torchrun on a machine without GPUs): accelerate sets up DDP over gloo
        # only when told it runs on the CPU; otherwise each process would train alone.
        extra.update(use_cpu=True, ddp_backend="gloo")
    # transformers 5.x renamed gradient_checkpointing; pass whichever this version has, once.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    extra["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = training.gradient_checkpointing
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps,
        learning_rate=training.learning_rate,
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        warmup_steps=training.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=scheduler,
        # DP-SGD clips each example's gradient itself; clipping the noised sum again would rescale the noise.
        max_grad_norm=0.0 if training.private else training.max_grad_norm,
        weight_decay=training.weight_decay,
        optim=training.optim,
        seed=training.seed,
        data_seed=training.seed,
        bf16=training.bf16,
        logging_strategy="steps",
        logging_steps=training.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=not training.progress_bar,
        dataloader_num_workers=0,  # the pairing counts visits in this process
        dataloader_pin_memory=torch.cuda.is_available(),
        **extra,
    )


def prepare_unlearning(
    model: torch.nn.Module,
    tokenizer,
    forget_rows: Sequence[dict[str, Any]],
    retain_rows: Sequence[dict[str, Any]] | None,
    method: str,
    hparams,
    training: TrainingOptions,
    output_dir: str,
    reference: torch.nn.Module | Callable[[], torch.nn.Module] | None = None,
    dp_runs: int = 1,
) -> UnlearnTrainer:
    """Everything before ``train()``: the reference model, LoRA, the data, the Trainer.

    ``dp_runs``: with differential privacy, how many runs on the same data one ε covers (the client
    passes the round's m copies, which the server all sees)."""
    cls = METHODS.get(method)
    hp = _resolve_hparams(method, hparams)
    if not isinstance(training, TrainingOptions):
        raise TypeError(f"training must be TrainingOptions, got {type(training).__name__}")
    retain_rows = list(retain_rows or [])
    if cls.needs_retain(hp) and not retain_rows:
        raise MPUError(f"{method} needs retain data ({_retain_reason(hp)}); give a retain set (--retain)")
    with_retain = bool(retain_rows) and cls.uses_retain(hp)
    if retain_rows and not with_retain:
        logger.warning("%s: the retain set is not used (%s)", method, "the method has no retain term" if cls.retain_use == "none" else "alpha=0")
    elif not retain_rows and cls.uses_retain(hp):
        logger.warning("%s: no retain set, so the retain term (alpha=%s) is left out", method, hp.alpha)

    set_seed(training.seed)
    ref_model = None
    if cls.needs_reference(hp, with_retain):
        # The reference is the model as received, frozen: copied before anything touches it. A given
        # reference replaces the copy; only its function matters (logits, residual activations).
        if reference is None:
            ref_model = copy.deepcopy(model)
        else:  # a callable loads it only for methods that need it
            ref_model = reference if isinstance(reference, torch.nn.Module) else reference()
    saved = {"requires_grad": {n: p.requires_grad for n, p in model.named_parameters()}, "training": model.training}
    train_model = add_lora(model, training) if training.lora_rank > 0 else model
    cls.prepare_model(train_model, hp)
    if not any(p.requires_grad for p in train_model.parameters()):
        raise MPUError(f"{method}: no parameter is trainable")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise MPUError("the tokenizer has neither a pad nor an EOS token")
    dataset = ForgetRetainDataset(
        tokenizer, forget_rows, retain_rows if with_retain else None,
        seed=training.seed, max_length=run_max_length(training, model, tokenizer), with_alternates=cls.uses_alternate,
        prompt_format=run_prompt_format(training, model, tokenizer), truncate=training.truncate,
    )
    trainer = cls(
        model=train_model,
        args=training_arguments(training, output_dir),
        train_dataset=dataset,
        data_collator=ForgetRetainCollator(pad_id),
        hparams=hp,
        ref_model=ref_model,
    )
    if training.private:
        trainer.dp = _private_steps(cls, method, training, len(dataset), dp_runs)
    trainer.mpu_restore = (model, saved)
    return trainer


def run_prompt_format(training: TrainingOptions, model, tokenizer):
    """The run's :class:`mpu.data.qa.PromptFormat` from ``prompt_format``/``system_prompt``/``date_string``."""
    from mpu.data.qa import model_name
    from mpu.data.templates import resolve_format

    return resolve_format(training.prompt_format, training.system_prompt, training.date_string, model_name(model, tokenizer))


def run_max_length(training: TrainingOptions, model, tokenizer) -> int:
    """The run's one length limit: ``max_length``, or the model's context length when not set."""
    from mpu.data.qa import model_max_length

    return training.max_length or model_max_length(model, tokenizer)


def _private_steps(cls: type[UnlearnTrainer], method: str, training: TrainingOptions, examples: int, runs: int):
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
    training: TrainingOptions,
    output_dir: str,
    reference: torch.nn.Module | Callable[[], torch.nn.Module] | None = None,
    dp_runs: int = 1,
) -> UnlearnResult:
    """Unlearn ``forget_rows`` from ``model`` in place with ``method``.

    Reference-model methods (NPO, DPO, UNDIAL, the KL retain loss, RMU's retain activations) compare with
    a frozen deep copy of ``model`` taken here, at the start, or with ``reference`` (a model, or a
    callable that loads one) when given. With ``training.lora_rank > 0`` LoRA adapters
    are trained, merged into ``model`` at the end, and returned as ``lora_factors``.
    """
    with frozen_gc():
        trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, method, hparams, training, output_dir,
                                     reference, dp_runs=dp_runs)
        return finish_unlearning(trainer)


_FREEZE_DEPTH = 0  # how many frozen_gc() blocks are open; only the outermost one collects and freezes
_FROZE = False  # whether the outermost block froze (it does not when the caller had frozen objects itself)


@contextmanager
def frozen_gc():
    """The HF Trainer starts every ``train()`` with a full ``gc.collect()``, which walks every live Python
    object (0.2 s in a process with transformers loaded), once per copy and round. Collect once here and
    freeze what is alive, so those collections only walk the objects made since (the copies' models,
    which stay collectable); unfreeze at the end.

    Re-entrant: an inner block does nothing, so a caller that runs many trainings in one process
    (:func:`mpu.run.run_mpu`: R rounds of m copies) wraps all of them and pays the full collection once.
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
