"""Every method, run briefly on the tiny model, unlearns: the forget answers get less likely and every
trainable parameter moves (RMU: the chosen layer's forget activations move towards their target, and
only the chosen parameters move)."""

from __future__ import annotations

import pytest
import torch

from mpu.methods import METHODS, prepare_unlearning, finish_unlearning
from tests.methods.conftest import options
from tests.methods.helpers import batch_of, mean_answer_nll

# Per-method settings that make two epochs visible on a 125k-parameter model (defaults suit 1B models).
SETTINGS = {
    "RMU": ({"steering_coeff": 20.0, "alpha": 1.0, "rmu_layer": 1}, {"learning_rate": 1e-2}),
    "SatImp": ({}, {"learning_rate": 3e-3}),
    "SimNPO": ({}, {"learning_rate": 3e-3}),
}


@pytest.mark.parametrize("method", METHODS.names())
def test_short_run_unlearns(method, model, tokenizer, forget_rows, retain_rows, tmp_path):
    hparams, training = SETTINGS.get(method, ({}, {}))
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    forget_before = mean_answer_nll(model, tokenizer, forget_rows)

    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, method, hparams, options(**training), str(tmp_path))
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    if method == "RMU":
        layer = trainer.model.model.layers[1]
        acts_before = _layer_output(model, layer, batch_of(tokenizer, forget_rows))
    result = finish_unlearning(trainer)

    assert result.steps == 4 and len(result.losses) == 4 and result.seconds > 0
    assert all(torch.isfinite(torch.tensor(result.losses)))
    changed = {name for name, param in model.named_parameters() if not torch.equal(param.detach(), before[name])}
    assert changed == trainable, f"unchanged trainable: {sorted(trainable - changed)}; changed frozen: {sorted(changed - trainable)}"
    if method == "RMU":
        assert trainable == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
        target = trainer.control_vector
        acts_after = _layer_output(model, layer, batch_of(tokenizer, forget_rows))
        assert (acts_after - target).pow(2).mean() < 0.9 * (acts_before - target).pow(2).mean()
    else:
        assert mean_answer_nll(model, tokenizer, forget_rows) > forget_before + 0.05
    assert all(param.requires_grad for param in model.parameters()), "requires_grad flags were not restored"


@torch.no_grad()
def _layer_output(model, layer, batch):
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    mask = batch["labels"] != -100
    return captured[0][mask]


@pytest.mark.parametrize("method", METHODS.names())
def test_runs_with_its_defaults_alone(method, model, tokenizer, forget_rows, retain_rows, tmp_path):
    """Default hyperparameters and training options (two steps only, to stay fast)."""
    from mpu.methods import method_hparams, training_options

    training = training_options({**METHODS.get(method).training_defaults, "max_steps": 2})
    trainer = prepare_unlearning(model, tokenizer, forget_rows, retain_rows, method, method_hparams(method, {}), training, str(tmp_path))
    result = finish_unlearning(trainer)
    assert result.steps == 2 and len(result.losses) == 2
    assert all(torch.isfinite(torch.tensor(result.losses)))
    if method == "PDU":
        assert 0 < trainer.epsilon < 1  # measured on the model as received (its value is checked in test_losses)


def test_gradient_accumulation_and_max_steps(model, tokenizer, forget_rows, retain_rows, tmp_path):
    result = finish_unlearning(prepare_unlearning(
        model, tokenizer, forget_rows, retain_rows, "GradDiff", {},
        options(epochs=2, batch_size=2, gradient_accumulation_steps=2, warmup_ratio=0.25, lr_scheduler_type="linear"), str(tmp_path)))
    assert result.steps == 4  # 8 rows / (2 x 2) per step x 2 epochs
    rates = [entry["learning_rate"] for entry in result.log_history if "loss" in entry]
    assert rates[0] == 0.0 and max(rates) == pytest.approx(1e-3)
