"""The memory check before training: weights, gradients, AdamW's moments and the reference model are
counted, and a run whose count exceeds the device's memory is refused before the first step."""

from __future__ import annotations

import pytest
import torch

from mpu.errors import MPUError
from mpu.methods import finish_unlearning, prepare_unlearning
from mpu.methods import memory
from mpu.methods.memory import training_memory
from tests.methods.conftest import options


def _parameter_bytes(model) -> int:
    return sum(p.numel() * 4 for p in model.parameters())


def test_full_fine_tuning_with_adamw_counts_weights_gradients_and_two_moments(model):
    size = _parameter_bytes(model)

    parts = training_memory(model, "adamw_torch")

    assert parts == {"weights": size, "gradients": size, "optimizer": 2 * size, "reference": 0}


def test_only_trainable_parameters_get_gradients_and_moments(model):
    frozen = model.get_input_embeddings().weight
    frozen.requires_grad_(False)
    trainable = _parameter_bytes(model) - frozen.numel() * 4

    parts = training_memory(model, "adamw_torch", ref_model=model)

    assert parts == {"weights": _parameter_bytes(model), "gradients": trainable, "optimizer": 2 * trainable,
                     "reference": _parameter_bytes(model)}


@pytest.mark.parametrize("optim, gradients, moments", [("sgd", 1, 0), ("adamw_bnb_8bit", 1, 0), ("lomo", 0, 0),
                                                       ("galore_adamw_layerwise", 0, 0), ("adamw_torch_fused", 1, 2)])
def test_optimizers_that_keep_less_are_not_counted_above_what_they_keep(model, optim, gradients, moments):
    size = _parameter_bytes(model)

    parts = training_memory(model, optim)

    assert (parts["gradients"], parts["optimizer"]) == (gradients * size, moments * size)


def test_a_run_that_cannot_fit_is_refused_before_the_first_step(model, tokenizer, forget_rows, retain_rows, tmp_path, monkeypatch):
    size = _parameter_bytes(model)
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 4 * size - 1)   # weights and gradients fit, the moments do not
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, "GradAscent", {}, options(), str(tmp_path))

    with pytest.raises(MPUError, match=r"training needs at least [\d,.]+ (bytes|GB) \(weights .*, gradients .*, "
                                       r"adamw_torch moments .*; activations come on top\) and this machine has .* of memory: "
                                       r"train LoRA adapters"):
        finish_unlearning(trainer)

    assert trainer.state.global_step == 0
    assert all(torch.equal(param.detach(), before[name]) for name, param in model.named_parameters())
    assert all(param.requires_grad for param in model.parameters()), "requires_grad flags were not restored"


def test_lora_fits_where_full_fine_tuning_does_not(model, tokenizer, forget_rows, retain_rows, tmp_path, monkeypatch):
    size = _parameter_bytes(model)
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 2 * size)
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, "GradAscent", {}, options(lora_rank=2), str(tmp_path))

    result = finish_unlearning(trainer)

    assert result.steps > 0


def test_the_reference_model_is_counted(model, tokenizer, forget_rows, retain_rows, tmp_path, monkeypatch):
    size = _parameter_bytes(model)
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 4 * size + size // 2)   # fits without the reference
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, "NPO", {}, options(), str(tmp_path))

    with pytest.raises(MPUError, match=r"reference model"):
        finish_unlearning(trainer)


def test_an_unknown_memory_size_checks_nothing(model, tokenizer, forget_rows, retain_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: None)
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, "GradAscent", {}, options(), str(tmp_path))

    assert finish_unlearning(trainer).steps > 0


def test_the_processes_of_a_launch_share_the_machines_memory(model, tokenizer, forget_rows, retain_rows, tmp_path, monkeypatch):
    size = _parameter_bytes(model)
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 6 * size)   # one process fits (4 x the weights)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, "GradAscent", {}, options(), str(tmp_path))

    with pytest.raises(MPUError, match=r"and each of the 2 processes on this machine has [\d,.]+ (bytes|GB) of memory"):
        finish_unlearning(trainer)
