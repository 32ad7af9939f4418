"""Reference-model methods compare with a frozen copy of the model exactly as received; LoRA adapters are
merged into the model at the end and returned as exact low-rank factors."""

from __future__ import annotations

import pytest
import torch

from mpu.methods import finish_unlearning, prepare_unlearning, run_unlearning
from tests.methods.conftest import options

WITH_REFERENCE = [
    ("NPO", {}), ("DPO", {}), ("UNDIAL", {}), ("GradDiff", {"retain_loss": "KL"}),
    ("SimNPO", {"retain_loss": "KL"}), ("RMU", {"rmu_layer": 1}), ("PDU", {"retain_loss": "KL"}),
]


@pytest.mark.parametrize("method,hp", WITH_REFERENCE)
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_reference_is_the_received_model(method, hp, lora_rank, model, tokenizer, forget_rows, retain_rows, tmp_path):
    received = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, method, hp, options(epochs=1, lora_rank=lora_rank), str(tmp_path))
    ref = trainer.ref_model
    assert ref is not None and ref is not model and not ref.training
    assert not any(param.requires_grad for param in ref.parameters())
    ref_state = ref.state_dict()
    assert ref_state.keys() == received.keys()
    assert all(torch.equal(ref_state[name], received[name]) for name in received)
    live = dict(model.named_parameters())
    assert all(ref_state[name].data_ptr() != live[name].data_ptr() for name in live if name in ref_state)

    finish_unlearning(trainer)
    assert all(torch.equal(value, received[name]) for name, value in ref.state_dict().items()), "the reference moved"
    assert any(not torch.equal(value, received[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("method,hp", [("GradAscent", {}), ("GradDiff", {}), ("SimNPO", {}), ("WGA", {}), ("SatImp", {}), ("CEU", {})])
def test_no_reference_without_need(method, hp, model, tokenizer, forget_rows, retain_rows, tmp_path):
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, method, hp, options(), str(tmp_path))
    assert trainer.ref_model is None


def test_lora_merged_model_is_base_plus_factors(model, tokenizer, forget_rows, retain_rows, tmp_path):
    base = {name: value.clone() for name, value in model.state_dict().items()}
    result = run_unlearning(model, tokenizer, forget_rows, retain_rows, "GradDiff", {}, options(lora_rank=4, learning_rate=1e-2), str(tmp_path))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name in model.state_dict()), "adapters left in the model"
    assert model.state_dict().keys() == base.keys()
    factors = result.lora_factors
    linear = {name for name in base if name.startswith("model.layers.") and name.endswith("proj.weight")}
    assert set(factors) == linear  # "all-linear" (PEFT leaves lm_head out)
    for name, value in model.state_dict().items():
        expected = base[name]
        if name in factors:
            b, a = factors[name]
            assert b.dtype == a.dtype == torch.float32 and b.shape[1] == a.shape[0] == 4
            expected = expected + b @ a
            assert (b @ a).abs().max() > 0
        assert torch.allclose(value, expected, atol=1e-6, rtol=0), name
    assert all(param.requires_grad for param in model.parameters())


def test_lora_target_modules_and_rmu_pattern(model, tokenizer, forget_rows, retain_rows, tmp_path):
    result = run_unlearning(model, tokenizer, forget_rows, retain_rows, "GradAscent", {},
                            options(lora_rank=2, lora_target_modules="q_proj,v_proj"), str(tmp_path))
    assert set(result.lora_factors) == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qv"}
    result = run_unlearning(model, tokenizer, forget_rows, retain_rows, "RMU", {"rmu_layer": 1, "steering_coeff": 10.0},
                            options(lora_rank=2), str(tmp_path))
    assert set(result.lora_factors) == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
