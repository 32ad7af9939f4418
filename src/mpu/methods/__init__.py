"""Client-side unlearning methods on a shared Hugging Face Trainer. They know nothing of MPU: the
noise-free baseline (``mpu unlearn``) and the MPU client (``mpu client unlearn``) run the same code.

API::

    METHODS                                   # Registry: name -> UnlearnTrainer subclass
    TrainingConfig                           # dataclass of Trainer settings (epochs, learning_rate, LoRA, ...)
    method_hparams(name, overrides)           # validated hyperparameter dataclass of one method
    UnlearnJob(method, hparams, training, forget_rows, retain_rows, reference)
                                              # one run's inputs; .run(model, tokenizer, scratch_dir)
                                              # -> UnlearnResult(steps, losses, seconds, lora_factors, ...)
    unlearn_model(model_dir, job, out_dir)    # the noise-free baseline: load, unlearn, save
    run_unlearning(model, tokenizer, forget_rows, retain_rows, method, hparams, training, output_dir)
                                              # the positional form of UnlearnJob(...).run
    add_method_arguments(parser)              # --method, --config, --hp, per-hyperparameter and training flags
    options_from_args(args)                   # -> (method, hparams, TrainingConfig); config < command line

Methods: GradAscent, GradDiff, NPO, SimNPO, DPO, RMU, UNDIAL, SatImp, WGA, CEU, PDU (one file each).
"""

from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer
from mpu.methods import ceu, dpo, grad_ascent, grad_diff, npo, pdu, rmu, satimp, simnpo, undial, wga  # noqa: F401  (registers)
from mpu.methods.options import TrainingConfig, TrainingOptions, training_options
from mpu.methods.training import (
    UnlearnResult,
    finish_unlearning,
    method_hparams,
    prepare_unlearning,
    run_unlearning,
    training_arguments,
)
from mpu.methods.job import UnlearnJob, unlearn_model
from mpu.methods.config import add_method_arguments, load_method_config, methods_table, options_from_args

__all__ = [
    "METHODS",
    "RetainHparams",
    "TrainingConfig",
    "TrainingOptions",
    "UnlearnJob",
    "UnlearnResult",
    "UnlearnTrainer",
    "add_method_arguments",
    "finish_unlearning",
    "load_method_config",
    "method_hparams",
    "methods_table",
    "options_from_args",
    "prepare_unlearning",
    "run_unlearning",
    "training_arguments",
    "training_options",
    "unlearn_model",
]
