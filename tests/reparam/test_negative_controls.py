"""The preservation check must be able to fail: transforms that do NOT commute with the model break it.

These are the reasons behind the adapter's restrictions (a generic orthogonal on Q/K moves the logits by ~30 on a tiny Llama,
as measured when the adapters were built).
"""

import torch

from mpu.reparam import LayerTransform, ReparamConfig, get_adapter
from mpu.reparam import maths
from reparam_helpers import CASES, make_config, make_model, max_logit_diff, reparameterised_copy


def _copy_with(case, make_transform):
    config = make_config(CASES[case][0], **CASES[case][1])
    model = make_model(config)
    adapter = get_adapter(config, ReparamConfig())
    transforms = [make_transform(adapter, layer) for layer in range(adapter.num_layers)]
    return max_logit_diff(model, reparameterised_copy(model, adapter, transforms), config.vocab_size)


def _gen(layer):
    return torch.Generator().manual_seed(100 + layer)


def test_generic_orthogonal_on_qk_breaks_rope():
    def transform(adapter, layer):
        g = adapter.geometry
        return LayerTransform(layer, qk=maths.haar_orthogonal(g.n_kv, g.head_dim, _gen(layer)))

    assert _copy_with("llama-gqa", transform) > 1e-2


def test_free_plane_rotations_break_qwen3_norms():
    """Why Qwen3 gets sign flips only: its q_norm/k_norm weights differ across the dims of a plane."""
    def transform(adapter, layer):
        g = adapter.geometry
        angles = maths.uniform_angles((g.n_kv, g.head_dim // 2), _gen(layer))
        return LayerTransform(layer, qk=maths.rope_plane_rotation(angles, g.head_dim))

    assert _copy_with("qwen3", transform) > 1e-2


def test_rotating_phi3_pass_through_dims_as_rope_planes_breaks_it():
    """Why partial rotary matters: planes must pair (i, i + rotary_dim/2), not (i, i + head_dim/2)."""
    def transform(adapter, layer):
        g = adapter.geometry
        angles = maths.uniform_angles((g.n_kv, g.head_dim // 2), _gen(layer))
        return LayerTransform(layer, qk=maths.rope_plane_rotation(angles, g.head_dim))

    assert _copy_with("phi3-partial", transform) > 1e-2


def test_ffn_scaling_on_gate_instead_of_up_would_break():
    """Scaling is only free on up: the gated product act(gate) * up is linear in up, not in gate."""
    config = make_config("llama")
    model = make_model(config)
    scale = maths.log_uniform_scales(config.intermediate_size, 4.0, _gen(0)).float()
    state = model.state_dict()
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp."
        state[prefix + "gate_proj.weight"] = state[prefix + "gate_proj.weight"] * scale[:, None]
        state[prefix + "down_proj.weight"] = state[prefix + "down_proj.weight"] / scale[None, :]
    broken = make_model(config)
    broken.load_state_dict(state)
    assert max_logit_diff(model, broken, config.vocab_size) > 1e-2
