"""DP-SGD for the returned updates: each example's gradient is clipped, the sum is noised at the stated
scale, ε is the accountant's for the steps taken, and the noise is not reproducible from the training seed."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mpu.errors import MPUError
from mpu.methods import METHODS, finish_unlearning, prepare_unlearning
from tests.methods.conftest import options

LR = 1.0


def update_of(method, model, tokenizer, forget, tmp_path, **overrides):
    """(flat parameter change, result) of one run with plain SGD at LR, no global clipping."""
    model = copy.deepcopy(model)
    before = [param.detach().clone() for param in model.parameters()]
    settings = dict(epochs=1, batch_size=len(forget), optim="sgd", learning_rate=LR, max_grad_norm=0.0)
    trainer = prepare_unlearning(model, tokenizer, forget, None, method, {}, options(**{**settings, **overrides}), str(tmp_path))
    result = finish_unlearning(trainer)
    return torch.cat([(param.detach() - start).flatten() for param, start in zip(model.parameters(), before)]), result


@pytest.mark.parametrize("method", ["GradAscent", "NPO", "SimNPO"])
def test_each_example_gradient_is_clipped_before_the_sum(method, model, tokenizer, forget_rows, tmp_path):
    forget = forget_rows[:4]
    # Each example's own gradient: a one-example step without DP moves the weights by -LR * g_i.
    grads = [-update_of(method, model, tokenizer, [row], tmp_path)[0] / LR for row in forget]
    clip = 0.5 * min(float(g.norm()) for g in grads)      # every example is clipped
    expected = -LR * sum(g * min(1.0, clip / float(g.norm())) for g in grads) / len(forget)

    private, result = update_of(method, model, tokenizer, forget, tmp_path, dp_noise_multiplier=1e-12, dp_clip_norm=clip)
    assert float((private - expected).norm() / expected.norm()) < 1e-4
    assert float(private.norm()) <= LR * clip * (1 + 1e-4)
    unclipped, _ = update_of(method, model, tokenizer, forget, tmp_path)
    assert float(unclipped.norm()) > 2 * float(private.norm())      # the plain step is not clipped
    assert result.dp["clip_norm"] == clip and result.dp["steps"] == 1


def test_the_noise_has_the_stated_scale(model, tokenizer, forget_rows, tmp_path):
    forget, clip, sigma = forget_rows[:4], 1e-8, 1e5
    private, result = update_of("GradAscent", model, tokenizer, forget, tmp_path, dp_noise_multiplier=sigma, dp_clip_norm=clip)
    expected_std = LR * sigma * clip / len(forget)
    assert float(private.std()) == pytest.approx(expected_std, rel=0.05)
    assert abs(float(private.mean())) < 0.05 * expected_std
    assert result.dp["noise_multiplier"] == sigma


def test_the_noise_does_not_follow_the_training_seed(model, tokenizer, forget_rows, tmp_path):
    # the training seed is published in the update manifest: a noise drawn from it could be subtracted
    first, _ = update_of("GradAscent", model, tokenizer, forget_rows[:4], tmp_path, dp_noise_multiplier=1.0)
    second, _ = update_of("GradAscent", model, tokenizer, forget_rows[:4], tmp_path, dp_noise_multiplier=1.0)
    assert not torch.allclose(first, second)


def test_epsilon_is_the_accountants_for_the_steps_taken(model, tokenizer, forget_rows, tmp_path):
    from opacus.accountants import RDPAccountant

    from mpu.methods.dp import RDP_ORDERS

    forget = forget_rows[:8]
    _, result = update_of("GradAscent", model, tokenizer, forget, tmp_path, epochs=3, batch_size=2, dp_epsilon=8.0,
                          dp_delta=1e-3)
    dp = result.dp
    assert result.steps == dp["steps"] == 12 and dp["sample_rate"] == pytest.approx(2 / 8)
    accountant = RDPAccountant()
    for _ in range(result.steps):
        accountant.step(noise_multiplier=dp["noise_multiplier"], sample_rate=2 / 8)
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-3, alphas=RDP_ORDERS), rel=1e-4)
    assert 7.5 < dp["epsilon"] <= 8.0 * 1.001 and dp["target_epsilon"] == 8.0 and dp["delta"] == 1e-3


def test_a_stricter_epsilon_needs_more_noise(model, tokenizer, forget_rows, tmp_path):
    sigmas = [update_of("GradAscent", model, tokenizer, forget_rows[:8], tmp_path, batch_size=2, dp_epsilon=eps)[1].dp["noise_multiplier"]
              for eps in (8.0, 1.0)]
    assert sigmas[1] > sigmas[0] > 0


def test_a_method_that_couples_examples_is_refused(model, tokenizer, forget_rows, retain_rows, tmp_path):
    training = options(epochs=1, dp_epsilon=4.0)
    with pytest.raises(MPUError, match="PDU cannot train with differential privacy: its dual variable"):
        prepare_unlearning(copy.deepcopy(model), tokenizer, forget_rows, retain_rows, "PDU", {}, training, str(tmp_path))


@pytest.mark.parametrize("field,value,message", [
    ("dp_delta", 0.0, "dp_delta must be in"), ("dp_delta", 1.0, "dp_delta must be in"),
    ("dp_clip_norm", 0.0, "dp_clip_norm must be"), ("dp_epsilon", -1.0, "dp_epsilon must be"),
    ("dp_epsilon", math.inf, "dp_epsilon must be"), ("dp_noise_multiplier", math.nan, "dp_noise_multiplier must be"),
])
def test_bad_privacy_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        options(**{field: value})


def test_graddiff_with_a_retain_set_trains_privately(model, tokenizer, forget_rows, retain_rows, tmp_path):
    model = copy.deepcopy(model)
    training = options(epochs=1, batch_size=4, dp_epsilon=8.0, learning_rate=1e-3)
    result = finish_unlearning(prepare_unlearning(model, tokenizer, forget_rows, retain_rows, "GradDiff", {}, training, str(tmp_path)))
    assert result.dp["epsilon"] is not None and result.dp["epsilon"] <= 8.0 * 1.001
    assert all(math.isfinite(loss) for loss in result.losses)


@pytest.mark.parametrize("method", [name for name in METHODS.names() if name != "PDU"])
def test_every_per_example_method_takes_a_private_step(method, model, tokenizer, forget_rows, retain_rows, tmp_path):
    from tests.methods.test_accumulation import HPARAMS

    model = copy.deepcopy(model)
    before = [param.detach().clone() for param in model.parameters()]
    training = options(epochs=1, batch_size=4, max_steps=1, dp_noise_multiplier=0.5, learning_rate=1e-3)
    result = finish_unlearning(prepare_unlearning(model, tokenizer, forget_rows[:4], retain_rows, method,
                                                  HPARAMS.get(method, {}), training, str(tmp_path)))
    assert result.steps == 1 and result.dp["steps"] == 1 and result.dp["epsilon"] is not None
    assert any(not torch.equal(param, start) for param, start in zip(model.parameters(), before))


def test_one_epsilon_covers_every_copy_of_the_round(model, tokenizer, forget_rows, tmp_path):
    from opacus.accountants import RDPAccountant

    from mpu.methods.dp import RDP_ORDERS

    model = copy.deepcopy(model)
    training = options(epochs=2, batch_size=2, dp_epsilon=4.0, dp_delta=1e-3, learning_rate=1e-3)
    result = finish_unlearning(prepare_unlearning(model, tokenizer, forget_rows[:8], None, "GradAscent", {}, training,
                                                  str(tmp_path), dp_runs=3))
    dp = result.dp
    accountant = RDPAccountant()
    accountant.history = [(dp["noise_multiplier"], 2 / 8, 3 * result.steps)]
    assert dp["runs"] == 3 and dp["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-3, alphas=RDP_ORDERS), rel=1e-4)
    assert dp["epsilon"] <= 4.0 * 1.001 and dp["epsilon_one_copy"] < dp["epsilon"]
