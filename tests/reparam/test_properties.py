"""Property tests: preservation and inversion over random seeds, head counts and options."""

import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from mpu.reparam import ReparamConfig, get_adapter
from reparam_helpers import make_config, make_model, max_logit_diff, reparameterised_copy, sample_all, transform_state

PROPERTY = settings(max_examples=15, deadline=None, derandomize=True, database=None)


@st.composite
def configs(draw):
    model_type = draw(st.sampled_from(["llama", "qwen2", "qwen3", "phi3", "olmo2"]))
    n_kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))  # group 1 is MHA, > 1 is GQA (MQA when n_kv is 1)
    head_dim = draw(st.sampled_from([4, 8, 12]))
    overrides = dict(
        num_attention_heads=n_kv * group,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        hidden_size=n_kv * group * head_dim if model_type == "phi3" else 24,
        intermediate_size=draw(st.integers(4, 24)),
    )
    if model_type == "phi3":
        overrides["partial_rotary_factor"] = draw(st.sampled_from([0.5, 0.75, 1.0]))
    return make_config(model_type, **overrides)


options = st.builds(
    ReparamConfig,
    qk_rotation=st.booleans(),
    vo=st.sampled_from(["plane", "haar", "none"]),
    kv_permutation=st.booleans(),
    ffn_permutation=st.booleans(),
    ffn_scaling=st.booleans(),
    ffn_scale_range=st.floats(1.0, 4.0),
)


@PROPERTY
@given(config=configs(), opts=options, seed=st.integers(0, 2**31 - 1))
def test_preserves_function(config, opts, seed):
    model = make_model(config, seed=seed % 1000)
    adapter = get_adapter(config, opts)
    copy = reparameterised_copy(model, adapter, sample_all(adapter, seed))
    assert max_logit_diff(model, copy, config.vocab_size, seed=seed % 1000) < 1e-4


@PROPERTY
@given(config=configs(), opts=options, seed=st.integers(0, 2**31 - 1))
def test_inverse_undoes_transform(config, opts, seed):
    gen = torch.Generator().manual_seed(seed % 1000)
    adapter = get_adapter(config, opts)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in transformers.AutoModelForCausalLM.from_config(config).state_dict().items()}
    state = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    transforms = sample_all(adapter, seed)
    back = transform_state(adapter, transform_state(adapter, state, transforms), transforms, inverse=True)
    for name, tensor in state.items():
        assert (back[name] - tensor).abs().max().item() < 1e-6, name
