"""apply_lora matches apply on B @ A; sampling is deterministic and uses only its generator."""

import pytest
import torch

from mpu.reparam import LayerTransform, ReparamConfig, get_adapter
from reparam_helpers import CASES, make_config, sample_all

ALL_ON = ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True)
FIELDS = ("qk", "vo", "kv_perm", "ffn_perm", "ffn_scale")


def _adapter(case, options=ALL_ON):
    model_type, overrides = CASES[case]
    config = make_config(model_type, **overrides)
    return config, get_adapter(config, options)


def _block_shapes(config):
    """Name -> shape for layer 1 of the tiny model, without building it."""
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.state_dict().items() if n.startswith("model.layers.1.")}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("inverse", [False, True])
def test_lora_factors_transform_like_their_product(case, inverse):
    config, adapter = _adapter(case)
    transform = adapter.sample(1, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(8)
    weights = {n: s for n, s in _block_shapes(config).items() if n.endswith("proj.weight")}
    assert weights
    for name, (out_dim, in_dim) in weights.items():
        B = torch.randn(out_dim, 3, generator=gen, dtype=torch.float64)
        A = torch.randn(3, in_dim, generator=gen, dtype=torch.float64)
        new_B, new_A = adapter.apply_lora(transform, name, B, A, inverse=inverse)
        expected = adapter.apply(transform, name, B @ A, inverse=inverse)
        assert new_B.shape == B.shape and new_A.shape == A.shape
        assert torch.allclose(new_B @ new_A, expected, atol=1e-12), name


def test_lora_factors_keep_dtype():
    _, adapter = _adapter("llama-gqa")
    transform = adapter.sample(0, torch.Generator().manual_seed(0))
    B, A = torch.randn(40, 2, dtype=torch.bfloat16), torch.randn(2, 48, dtype=torch.bfloat16)
    new_B, new_A = adapter.apply_lora(transform, "model.layers.0.mlp.up_proj.weight", B, A)
    assert new_B.dtype == new_A.dtype == torch.bfloat16
    assert torch.equal(new_A, A)  # up has only a row transform: A (columns) is untouched


def _same(a: LayerTransform, b: LayerTransform) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in ((getattr(a, f), getattr(b, f)) for f in FIELDS)
    )


@pytest.mark.parametrize("case", ["llama-gqa", "qwen3", "phi3-partial"])
def test_same_seed_same_transform_different_seed_different(case):
    _, adapter = _adapter(case)
    first = adapter.sample(0, torch.Generator().manual_seed(123))
    torch.manual_seed(999)  # the global RNG must not matter
    torch.rand(5)
    again = adapter.sample(0, torch.Generator().manual_seed(123))
    other = adapter.sample(0, torch.Generator().manual_seed(124))
    assert _same(first, again)
    assert not torch.equal(first.qk, other.qk) and not torch.equal(first.vo, other.vo)
    assert not torch.equal(first.ffn_perm, other.ffn_perm)


def test_sampling_leaves_the_global_rng_alone():
    _, adapter = _adapter("llama-gqa")
    state = torch.get_rng_state()
    adapter.sample(0, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("case", ["llama-gqa", "qwen3", "phi3-partial", "gemma"])
def test_sampled_matrices_are_float64_cpu_orthogonal(case):
    _, adapter = _adapter(case, ReparamConfig(vo="haar", ffn_scaling=True))
    t = adapter.sample(1, torch.Generator().manual_seed(5))
    g = adapter.geometry
    for m in (t.qk, t.vo):
        assert m.dtype == torch.float64 and m.device.type == "cpu" and m.shape == (g.n_kv, g.head_dim, g.head_dim)
        eye = torch.eye(g.head_dim, dtype=torch.float64).expand_as(m)
        assert torch.allclose(m @ m.transpose(-1, -2), eye, atol=1e-12)
    assert sorted(t.ffn_perm.tolist()) == list(range(g.intermediate))
    assert t.ffn_scale.min() >= 0.5 and t.ffn_scale.max() <= 2.0


def test_plane_vo_reuses_the_qk_rotation_unless_qk_is_restricted():
    _, llama = _adapter("llama-gqa", ReparamConfig())
    t = llama.sample(0, torch.Generator().manual_seed(0))
    assert torch.equal(t.qk, t.vo)
    _, qwen3 = _adapter("qwen3", ReparamConfig())
    t = qwen3.sample(0, torch.Generator().manual_seed(0))
    # Qwen3: QK is +-1 diagonal; V/O still gets a full random plane rotation.
    assert torch.equal(t.qk.abs(), torch.eye(16, dtype=torch.float64).expand(2, 16, 16))
    assert not torch.equal(t.vo.abs(), t.qk.abs())


def test_apply_keeps_shape_dtype_and_returns_new_tensor():
    _, adapter = _adapter("qwen2")
    t = adapter.sample(0, torch.Generator().manual_seed(0))
    w = torch.randn(48, 48, dtype=torch.bfloat16)
    out = adapter.apply(t, "model.layers.0.self_attn.q_proj.weight", w)
    assert out.shape == w.shape and out.dtype == torch.bfloat16 and out.device == w.device
    assert out.data_ptr() != w.data_ptr()
    back = adapter.apply(t, "model.layers.0.self_attn.q_proj.weight", out.float(), inverse=True)
    assert (back - w.float()).abs().max() < 0.05  # bf16 round-off only
