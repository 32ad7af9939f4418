"""Name checking, unsupported architectures, bad arguments and the identity adapter."""

import pytest
import torch
import transformers

from mpu.errors import MPUError, UnsupportedArchitectureError
from mpu.reparam import ARCHITECTURES, IdentityAdapter, ReparamConfig, get_adapter
from reparam_helpers import CASES, make_config, make_model

SUPPORTED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "phi3"}


def _llama(**overrides):
    config = make_config("llama", **overrides)
    return config, get_adapter(config, ReparamConfig())


def test_registry_lists_every_supported_family():
    assert SUPPORTED <= set(ARCHITECTURES.names())


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_tiny_model_is_understood(case):
    model_type, overrides = CASES[case]
    config = make_config(model_type, **overrides)
    with torch.device("meta"):
        names = list(transformers.AutoModelForCausalLM.from_config(config).state_dict())
    get_adapter(config, ReparamConfig()).check_names(names)


@pytest.mark.parametrize("enabled", [True, False])
def test_unknown_architecture_is_refused_naming_model_type_and_supported_ones(enabled):
    """--no-reparam included: a client refuses copies of an architecture outside the registry."""
    config = transformers.GPTJConfig(n_layer=1, n_embd=32, n_head=2)
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_adapter(config, ReparamConfig(enabled=enabled))
    message = str(err.value)
    assert "gptj" in message and "llama" in message and "Clients refuse" in message


def test_disabled_gives_identity_for_a_supported_architecture():
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2)
    adapter = get_adapter(config, ReparamConfig(enabled=False))
    assert isinstance(adapter, IdentityAdapter)
    adapter.check_names(["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"])
    with pytest.raises(UnsupportedArchitectureError, match="anything"):  # no noise scope: never published
        adapter.check_names(["transformer.h.0.attn.c_attn.weight", "anything"])
    t = adapter.sample(0, torch.Generator().manual_seed(0))
    assert t.is_identity()
    w = torch.randn(4, 4)
    assert torch.equal(adapter.apply(t, "transformer.h.0.attn.c_attn.weight", w, inverse=True), w)
    assert adapter.apply_lora(t, "x", w, w) == (w, w)
    assert "disabled" in adapter.describe()[0]


def test_unknown_block_parameter_is_named():
    config, adapter = _llama()
    names = list(make_model(config).state_dict()) + ["model.layers.0.self_attn.weird.weight"]
    with pytest.raises(UnsupportedArchitectureError, match=r"model\.layers\.0\.self_attn\.weird\.weight"):
        adapter.check_names(names)


def test_every_unknown_name_is_listed_at_once():
    _, adapter = _llama()
    bad = [
        "model.layers.0.self_attn.q_proj.bias",  # llama without attention_bias has no q bias
        "model.layers.1.mlp.experts.0.weight",  # an unknown module inside a block
        "model.layers.2.input_layernorm.weight",  # only 2 layers
        "model.vision_tower.weight",  # an unknown top-level tensor
    ]
    with pytest.raises(UnsupportedArchitectureError) as err:
        adapter.check_names(["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", *bad])
    for name in bad:
        assert name in str(err.value)
    assert "4 parameter" in str(err.value)


def test_check_names_rejects_a_single_string():
    _, adapter = _llama()
    with pytest.raises(TypeError):
        adapter.check_names("model.norm.weight")


def test_apply_refuses_unknown_block_names_and_the_wrong_layer():
    _, adapter = _llama()
    t = adapter.sample(0, torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedArchitectureError, match="weird"):
        adapter.apply(t, "model.layers.0.self_attn.weird.weight", torch.zeros(3))
    with pytest.raises(ValueError, match="layer 1"):
        adapter.apply(t, "model.layers.1.mlp.up_proj.weight", torch.zeros(40, 48))


def test_apply_refuses_a_shape_that_contradicts_the_config():
    _, adapter = _llama()
    t = adapter.sample(0, torch.Generator().manual_seed(0))
    with pytest.raises(MPUError, match="up_proj"):
        adapter.apply(t, "model.layers.0.mlp.up_proj.weight", torch.zeros(41, 48))
    with pytest.raises(MPUError, match="o_proj"):
        adapter.apply(t, "model.layers.0.self_attn.o_proj.weight", torch.zeros(48, 47))


def test_non_block_and_norm_tensors_pass_unchanged():
    _, adapter = _llama()
    t = adapter.sample(0, torch.Generator().manual_seed(0))
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.0.input_layernorm.weight"):
        w = torch.randn(7, 48)
        assert adapter.apply(t, name, w) is w


def test_sample_checks_its_arguments():
    _, adapter = _llama()
    with pytest.raises(ValueError):
        adapter.sample(2, torch.Generator())
    with pytest.raises(ValueError):
        adapter.sample(0, None)


def test_bad_geometry_is_refused():
    config = make_config("llama", num_attention_heads=4, num_key_value_heads=3, head_dim=12)
    with pytest.raises(UnsupportedArchitectureError, match="multiple"):
        get_adapter(config, ReparamConfig())


def test_describe_says_what_is_applied():
    qwen3 = get_adapter(make_config("qwen3", head_dim=16), ReparamConfig())
    lines = qwen3.describe()
    assert any(line.startswith("QK: plane sign flips only (per-head q_norm/k_norm)") for line in lines)
    assert any(line.startswith("V/O: an independent random plane rotation") for line in lines)
    phi3 = get_adapter(make_config("phi3", partial_rotary_factor=0.5), ReparamConfig(ffn_scaling=True))
    text = "\n".join(phi3.describe())
    assert "3 RoPE planes" in text and "6 pass-through dims" in text and "1/s_i" in text
    qwen2 = "\n".join(get_adapter(make_config("qwen2"), ReparamConfig()).describe())
    assert "biases of k_proj, q_proj, v_proj" in qwen2
