"""The check that holds it all : T preserves the function, T^-1 undoes T, T changes weights."""

import copy

import pytest
import torch

from mpu.reparam import ReparamConfig, get_adapter
from reparam_helpers import (
    CASES,
    make_config,
    make_model,
    max_logit_diff,
    reparameterised_copy,
    sample_all,
    transform_state,
)

OPTIONS = {
    "default": ReparamConfig(),
    "all-haar": ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True, ffn_scale_range=3.0),
    "plane-kvperm-scale": ReparamConfig(kv_permutation=True, ffn_scaling=True),
    "no-qk-vo-none": ReparamConfig(qk_rotation=False, vo="none", kv_permutation=True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    model_type, overrides = CASES[request.param]
    config = make_config(model_type, **overrides)
    return config, make_model(config)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_function_preserved_with_left_padding(case, options):
    config, model = case
    adapter = get_adapter(config, options)
    adapter.check_names(model.state_dict())
    copy = reparameterised_copy(model, adapter, sample_all(adapter, seed=3))
    assert max_logit_diff(model, copy, config.vocab_size) < 1e-4


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_inverse_restores_every_tensor(case, options):
    config, model = case
    adapter = get_adapter(config, options)
    transforms = sample_all(adapter, seed=4)
    state = model.state_dict()
    back = transform_state(adapter, transform_state(adapter, state, transforms), transforms, inverse=True)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert (back[name] - tensor).abs().max().item() < 1e-6, name


def test_all_projections_change(case):
    """With every switch on, every attention and FFN projection of the copy differs from the original."""
    config, model = case
    adapter = get_adapter(config, OPTIONS["all-haar"])
    state = model.state_dict()
    copied = transform_state(adapter, state, sample_all(adapter, seed=5))
    projections = [n for n in state if n.endswith("proj.weight")]
    assert projections
    for name in projections:
        assert not torch.equal(copied[name], state[name]), name


def test_float64_preservation_is_exact_up_to_round_off(case):
    """In float64 the maths is exact to round-off, which catches errors hiding under the 1e-4.

    No padding here: with float64 masks HF turns fully padded rows into NaN. One exception: OLMo2's
    q_norm/k_norm computes its mean square in float32 over the whole projection, so permuting KV groups
    changes the summation order and leaves float32 round-off (~1e-7) even in a float64 model.
    """
    config, model = case
    adapter = get_adapter(config, OPTIONS["all-haar"])
    model64 = copy.deepcopy(model).double()
    copy64 = reparameterised_copy(model64, adapter, sample_all(adapter, seed=6))
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        diff = (model64(input_ids=ids, attention_mask=mask).logits - copy64(input_ids=ids, attention_mask=mask).logits)
    tolerance = 1e-5 if config.model_type == "olmo2" else 1e-9
    assert diff.abs().max().item() < tolerance


def test_qwen3_norm_weights_really_differ_within_planes():
    """Guards the Qwen3 case above: with equal weights on a plane, free rotations would also pass."""
    config = make_config(*CASES["qwen3"][:1], **CASES["qwen3"][1])
    weight = make_model(config).model.layers[0].self_attn.q_norm.weight
    half = config.head_dim // 2
    assert (weight[:half] - weight[half:]).abs().min() > 1e-3
