"""TrainingConfig is a thin view over transformers.TrainingArguments: each field that is a Trainer
setting names it (metadata ``hf``), and training_arguments() passes exactly those values on."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import TrainingArguments

from mpu.methods import TrainingConfig, training_arguments

# one value per mapped field that differs from its default (and keeps the derived settings out of the way)
CHANGED = {"epochs": 2.0, "max_steps": 3, "learning_rate": 2e-3, "batch_size": 3, "gradient_accumulation_steps": 2,
           "warmup_ratio": 0.25, "lr_scheduler_type": "cosine", "max_grad_norm": 0.5, "weight_decay": 0.01,
           "optim": "sgd", "seed": 7, "logging_steps": 3, "gradient_checkpointing": True}
# the Trainer setting each one is (the test's own statement, so a field mapped to the wrong setting fails)
TRAINER_NAME = {"epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size", "warmup_ratio": "warmup_steps"}
NOT_ON_CPU = {"bf16"}   # the Trainer refuses bf16 without a device that has it; checked by name only
HF_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
RENAMED = {"gradient_checkpointing": "activation_checkpointing"}  # transformers 5.x's name for it


def value(args: TrainingArguments, name: str):
    name = name if name in HF_FIELDS else RENAMED[name]
    got = getattr(args, name)
    return getattr(got, "value", got)   # SchedulerType / OptimizerNames enums: their names


def mapped() -> dict[str, str]:
    return {f.name: f.metadata["hf"] for f in dataclasses.fields(TrainingConfig) if "hf" in f.metadata}


def test_every_mapped_name_is_a_training_arguments_field():
    assert mapped(), "no field names its TrainingArguments setting"
    for name, hf in mapped().items():
        assert hf in HF_FIELDS or RENAMED.get(hf) in HF_FIELDS, (name, hf)


def test_every_mapped_field_reaches_the_trainer(tmp_path):
    assert set(CHANGED) | NOT_ON_CPU == set(mapped()), "a mapped field without a test value"
    options = TrainingConfig(**CHANGED)
    for name, changed in CHANGED.items():
        assert changed != getattr(TrainingConfig(), name), name

    args = training_arguments(options, str(tmp_path))

    for name, changed in CHANGED.items():
        assert value(args, TRAINER_NAME.get(name, name)) == changed, name
    assert args.train_batch_size == 3 and args.num_train_epochs == 2.0


@pytest.mark.parametrize("options, name, expected", [
    ({"warmup_ratio": 0.1}, "lr_scheduler_type", "constant_with_warmup"),   # constant alone ignores warmup
    ({"warmup_ratio": 0.0}, "lr_scheduler_type", "constant"),
    ({"dp_epsilon": 1.0, "max_grad_norm": 2.0}, "max_grad_norm", 0.0),      # DP-SGD clips per example itself
    ({"max_grad_norm": 2.0}, "max_grad_norm", 2.0),
    ({"seed": 11}, "data_seed", 11),
    ({"progress_bar": False}, "disable_tqdm", True),
    ({"progress_bar": True}, "disable_tqdm", False),
])
def test_settings_that_follow_from_several_fields(options, name, expected, tmp_path):
    args = training_arguments(TrainingConfig(**options), str(tmp_path))

    assert value(args, name) == expected


def test_a_run_saves_and_reports_nothing(tmp_path):
    args = training_arguments(TrainingConfig(), str(tmp_path))

    assert (value(args, "save_strategy"), value(args, "eval_strategy"), args.report_to) == ("no", "no", [])
    assert args.remove_unused_columns is False and args.output_dir == str(tmp_path)
