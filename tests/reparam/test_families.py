"""The families beyond Llama (issue 14): GPT-2, GPT-NeoX, Phi, OPT, Falcon, StableLM, Granite, MoE.

Each family is checked the way the server uses it: on the tensors of a checkpoint written by
``save_pretrained`` (its on-disk names, tied weights dropped, MoE experts unfused), transformed, written
back and loaded by transformers. A tiny model mirrors the real config (partial rotary, fused QKV,
biases, parallel blocks) with random, non-default norm weights and biases.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from mpu.errors import UnsupportedArchitectureError
from mpu.reparam import ARCHITECTURES, ReparamConfig, get_adapter
from reparam_helpers import left_padded_batch, logits, sample_all

torch.set_num_threads(1)

V = 97  # vocabulary of every tiny model

# name -> (config class, config kwargs). Sizes are tiny; the structure mirrors the named real model.
FAMILIES: dict[str, tuple[type, dict]] = {
    # gpt2 / distilgpt2: Conv1D, learned positions, gelu_new
    "gpt2": (transformers.GPT2Config, dict(vocab_size=V, n_embd=48, n_layer=2, n_head=4, n_positions=64, n_inner=40,
                                           bos_token_id=1, eos_token_id=2)),
    # Pythia: rotary_pct 0.25, parallel residual, untied embed_out
    "gpt_neox": (transformers.GPTNeoXConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                                                  num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.25,
                                                  use_parallel_residual=True, bos_token_id=1, eos_token_id=2)),
    "gpt_neox-serial": (transformers.GPTNeoXConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=40,
                                                         num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.5,
                                                         use_parallel_residual=False, bos_token_id=1, eos_token_id=2)),
    # phi-1_5 / phi-2: parallel attention + MLP, partial rotary 0.5, biases, gelu_new
    "phi": (transformers.PhiConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=64)),
    "phi-gqa": (transformers.PhiConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5)),
    # opt-125m (ReLU, pre-norm) and opt-350m (post-norm, project_in/out)
    "opt": (transformers.OPTConfig, dict(vocab_size=V, hidden_size=48, ffn_dim=40, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=48,
                                         pad_token_id=0)),
    "opt-350m": (transformers.OPTConfig, dict(vocab_size=V, hidden_size=48, ffn_dim=40, num_hidden_layers=2,
                                              num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                                              do_layer_norm_before=False, pad_token_id=0)),
    # falcon-7b (multi-query, parallel), falcon-40b (grouped KV, two parallel norms), falcon-rw (ALiBi, MHA, biases)
    "falcon-7b": (transformers.FalconConfig, dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                                  multi_query=True, new_decoder_architecture=False, parallel_attn=True,
                                                  bias=False)),
    "falcon-40b": (transformers.FalconConfig, dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                                   num_kv_heads=2, new_decoder_architecture=True, ffn_hidden_size=40)),
    "falcon-rw": (transformers.FalconConfig, dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                                  multi_query=False, parallel_attn=False, alibi=True, bias=True)),
    # stablelm-2-1.6b (qkv bias, partial rotary 0.25) and stablelm-3b-4e1t-like (parallel residual)
    "stablelm": (transformers.StableLmConfig, dict(vocab_size=V, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.25,
                                                   use_qkv_bias=True, max_position_embeddings=64)),
    "stablelm-parallel": (transformers.StableLmConfig, dict(vocab_size=V, hidden_size=64, intermediate_size=40,
                                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                                            partial_rotary_factor=0.25, use_parallel_residual=True)),
    # granite-3: Llama plus embedding/residual/attention multipliers and logits scaling
    "granite": (transformers.GraniteConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, embedding_multiplier=12.0,
                                                 residual_multiplier=0.22, attention_multiplier=0.05, logits_scaling=4.0,
                                                 attention_bias=True, max_position_embeddings=64)),
    # MoE: experts as separate tensors on disk (transformers 5 fuses them on load)
    "mixtral": (transformers.MixtralConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=20, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                                 num_experts_per_tok=2, max_position_embeddings=64)),
    "qwen2_moe": (transformers.Qwen2MoeConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=24, num_hidden_layers=3,
                                                    num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                                    num_experts_per_tok=2, moe_intermediate_size=12,
                                                    shared_expert_intermediate_size=16, mlp_only_layers=[1],
                                                    max_position_embeddings=64)),
    "qwen3_moe": (transformers.Qwen3MoeConfig, dict(vocab_size=V, hidden_size=48, intermediate_size=24, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                                                    num_experts_per_tok=2, moe_intermediate_size=12, norm_topk_prob=True,
                                                    max_position_embeddings=64)),
}

OPTIONS = {
    "default": ReparamConfig(),
    "all": ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True, ffn_scale_range=3.0),
    "plane-kvperm": ReparamConfig(kv_permutation=True, ffn_scaling=True),
    "no-qk": ReparamConfig(qk_rotation=False, vo="none", kv_permutation=True),
}


def make_config(family: str, **overrides) -> transformers.PretrainedConfig:
    cls, kwargs = FAMILIES[family]
    return cls(**{**kwargs, **overrides})


def make_model(config, seed: int = 0):
    """Weights large enough that a wrong transform shows in the logits; norms and biases random."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                embedding = any(k in name for k in ("embed", "wte", "wpe", "word_embeddings"))
                p.copy_(noise if embedding else noise / math.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.copy_(0.5 * noise)
            else:  # norm weights: far from one, different on the two dims of every plane
                p.copy_(1.0 + 0.4 * noise)
    return model.eval()


def save_checkpoint(model, path: Path) -> dict[str, torch.Tensor]:
    model.save_pretrained(path)
    return load_file(str(path / "model.safetensors"))


def transform_checkpoint(adapter, state: dict, transforms, inverse: bool = False, skip=()) -> dict:
    out = {}
    for name, tensor in state.items():
        layer = adapter.layer_of(name)
        transformed = layer is not None and not any(s in name for s in skip)
        out[name] = adapter.apply(transforms[layer], name, tensor, inverse=inverse) if transformed else tensor
    return out


def load_transformed(src: Path, dst: Path, state: dict):
    """A model directory like ``src`` holding ``state``, loaded the way a client loads a copy."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    save_file({n: t.contiguous() for n, t in state.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return transformers.AutoModelForCausalLM.from_pretrained(dst, attn_implementation="eager").eval()


def max_diff(model_a, model_b) -> float:
    ids, mask = left_padded_batch(V, seed=0)
    diff = (logits(model_a, ids, mask) - logits(model_b, ids, mask)).abs()
    return diff[mask.bool()].max().item()


class Family:
    """One family's tiny checkpoint, as saved and as reloaded."""

    def __init__(self, family: str, root: Path, **overrides):
        self.config = make_config(family, **overrides)
        self.dir = root / "original"
        self.state = save_checkpoint(make_model(self.config), self.dir)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(self.dir, attn_implementation="eager").eval()
        self.root = root

    def copy(self, adapter, seed: int, name: str = "copy", skip=()):
        transforms = sample_all(adapter, seed)
        return load_transformed(self.dir, self.root / name, transform_checkpoint(adapter, self.state, transforms, skip=skip))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    return Family(request.param, tmp_path_factory.mktemp(request.param))


def test_registered_with_its_model_type(family):
    assert family.config.model_type in ARCHITECTURES.names()


def test_understands_every_checkpoint_tensor(family):
    get_adapter(family.config, ReparamConfig()).check_names(family.state)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_function_preserved_with_left_padding(family, options):
    adapter = get_adapter(family.config, options)
    copy = family.copy(adapter, seed=3)
    assert max_diff(family.model, copy) < 1e-4


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_inverse_restores_every_tensor(family, options):
    adapter = get_adapter(family.config, options)
    transforms = sample_all(adapter, seed=4)
    back = transform_checkpoint(adapter, transform_checkpoint(adapter, family.state, transforms), transforms, inverse=True)
    for name, tensor in family.state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert (back[name] - tensor).abs().max().item() < 1e-6, name


def test_every_projection_changes(family):
    """With every switch on, every tensor with a non-trivial rule differs from the original."""
    adapter = get_adapter(family.config, OPTIONS["all"])
    copied = transform_checkpoint(adapter, family.state, sample_all(adapter, seed=5))
    moved = [n for n in family.state if adapter.layer_of(n) is not None and not adapter.rules[adapter.block_suffix(n)].is_identity]
    assert moved
    for name in moved:
        assert not torch.equal(copied[name], family.state[name]), name


# Mutants: break one rule and the preservation check must notice ------------------------------

MUTANTS = {
    "gpt2": ["attn.c_attn.bias"],  # q/k/v biases left in the old coordinates
    "gpt_neox": ["attention.query_key_value.bias"],
    "phi": ["self_attn.k_proj.bias"],
    "opt": ["fc1.bias"],
    "falcon-rw": ["self_attention.query_key_value.bias"],
    "falcon-40b": ["self_attention.dense"],
    "granite": ["self_attn.k_proj.weight"],  # granite's multipliers keep logits small: 4e-3 when broken
    "stablelm": ["self_attn.q_proj.bias"],
    "mixtral": ["experts.3.w2"],  # one expert's down projection left unpermuted
    "qwen2_moe": ["shared_expert.down_proj"],
    "qwen3_moe": ["experts.0.up_proj"],
}


@pytest.mark.parametrize("family_name,skip", [(f, s) for f, skips in MUTANTS.items() for s in skips])
def test_skipping_one_rule_breaks_the_function(family_name, skip, tmp_path):
    fam = Family(family_name, tmp_path)
    adapter = get_adapter(fam.config, OPTIONS["all"])
    assert max_diff(fam.model, fam.copy(adapter, seed=3, skip=(skip,))) > 1e-3


# Refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family_name", ["phi", "stablelm"])
def test_per_head_qk_layernorm_is_refused_with_its_reason(family_name):
    config = make_config(family_name, qk_layernorm=True)
    with pytest.raises(UnsupportedArchitectureError, match="qk_layernorm.*LayerNorm.*no-reparam"):
        get_adapter(config, ReparamConfig())


def test_falcon_alibi_never_permutes_heads():
    """Each head has its own ALiBi slope: a head permutation would change the function."""
    adapter = get_adapter(make_config("falcon-rw"), OPTIONS["all"])
    assert all(t.kv_perm is None for t in sample_all(adapter, seed=1))
    assert any("ALiBi" in line for line in adapter.describe())


# LoRA factors and determinism -------------------------------------------------------------------

@pytest.mark.parametrize("inverse", [False, True])
def test_lora_factors_transform_like_their_product(family, inverse):
    """B' @ A' == apply(B @ A) for every 2-D block weight, in the stored orientation (Conv1D
    included) and through fused, interleaved rows."""
    adapter = get_adapter(family.config, OPTIONS["all"])
    transform = adapter.sample(1, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(8)
    weights = {n: t.shape for n, t in family.state.items() if adapter.layer_of(n) == 1 and t.dim() == 2}
    assert weights
    for name, (rows, cols) in weights.items():
        B = torch.randn(rows, 3, generator=gen, dtype=torch.float64)
        A = torch.randn(3, cols, generator=gen, dtype=torch.float64)
        new_B, new_A = adapter.apply_lora(transform, name, B, A, inverse=inverse)
        assert new_B.shape == B.shape and new_A.shape == A.shape, name
        assert torch.allclose(new_B @ new_A, adapter.apply(transform, name, B @ A, inverse=inverse), atol=1e-12), name


def test_same_seed_same_transform(family):
    adapter = get_adapter(family.config, OPTIONS["all"])
    first, second = sample_all(adapter, seed=9), sample_all(adapter, seed=9)
    name = next(n for n in family.state if adapter.layer_of(n) == 0 and not adapter.rules[adapter.block_suffix(n)].is_identity)
    tensor = family.state[name]
    assert torch.equal(adapter.apply(first[0], name, tensor), adapter.apply(second[0], name, tensor))
    assert not torch.equal(adapter.apply(first[0], name, tensor), adapter.apply(sample_all(adapter, seed=10)[0], name, tensor))


@pytest.mark.parametrize("family_name,prefix", [("gpt2", "transformer."), ("opt", "model."), ("falcon-7b", "transformer.")])
def test_checkpoints_saved_from_the_base_model_are_understood(family_name, prefix, tmp_path):
    """The hub's gpt2 and facebook/opt-* files name tensors without the base-model prefix ("h.0.attn...",
    "decoder.layers.0..."); transformers loads them, and so must the adapter."""
    fam = Family(family_name, tmp_path)
    bare = {n.removeprefix(prefix): t for n, t in fam.state.items()}
    assert any(n.startswith(("h.", "decoder.")) for n in bare)
    adapter = get_adapter(fam.config, OPTIONS["all"])
    adapter.check_names(bare)
    transforms = sample_all(adapter, seed=3)
    copy = load_transformed(fam.dir, tmp_path / "bare", transform_checkpoint(adapter, bare, transforms))
    assert max_diff(fam.model, copy) < 1e-4
    moved = [n for n in bare if adapter.layer_of(n) is not None and not adapter.rules[adapter.block_suffix(n)].is_identity]
    assert moved


def test_readme_lists_every_registered_family():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    paragraph = readme[readme.index("Supported architectures"):]
    paragraph = paragraph[: paragraph.index("\n\n")]
    listed = set(re.findall(r"`([a-z0-9_]+)`", paragraph))
    assert set(ARCHITECTURES.names()) <= listed, set(ARCHITECTURES.names()) - listed
    model_types = listed & set(transformers.CONFIG_MAPPING.keys())  # the backticked words that are families
    assert model_types <= set(ARCHITECTURES.names()), model_types - set(ARCHITECTURES.names())


# Real sizes (one block, meta device: no memory) ------------------------------------------------

REAL = {  # the published configs' shapes, one block
    "gpt2": (transformers.GPT2Config, dict(n_embd=768, n_head=12, n_layer=1)),
    "pythia-160m": (transformers.GPTNeoXConfig, dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                                                     rotary_pct=0.25, num_hidden_layers=1)),
    "phi-1_5": (transformers.PhiConfig, dict(hidden_size=2048, num_attention_heads=32, intermediate_size=8192,
                                             partial_rotary_factor=0.5, num_hidden_layers=1)),
    "opt-125m": (transformers.OPTConfig, dict(hidden_size=768, num_attention_heads=12, ffn_dim=3072, num_hidden_layers=1)),
    "falcon-7b": (transformers.FalconConfig, dict(hidden_size=4544, num_attention_heads=71, multi_query=True,
                                                  parallel_attn=True, num_hidden_layers=1)),
    "falcon-40b": (transformers.FalconConfig, dict(hidden_size=8192, num_attention_heads=128, num_kv_heads=8,
                                                   new_decoder_architecture=True, num_hidden_layers=1)),
    "stablelm-2-1_6b": (transformers.StableLmConfig, dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=32,
                                                          intermediate_size=5632, partial_rotary_factor=0.25,
                                                          use_qkv_bias=True, num_hidden_layers=1)),
    "granite-3.0-2b": (transformers.GraniteConfig, dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                                                        intermediate_size=8192, num_hidden_layers=1)),
    "mixtral-8x7b": (transformers.MixtralConfig, dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                                                      intermediate_size=14336, num_local_experts=8, num_hidden_layers=1)),
    "qwen3-30b-a3b": (transformers.Qwen3MoeConfig, dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4,
                                                        head_dim=128, moe_intermediate_size=768, num_experts=128,
                                                        num_hidden_layers=1)),
}


@pytest.mark.parametrize("real", sorted(REAL))
def test_real_sizes_fit_the_rules(real):
    """Every block tensor of the real shapes (on the meta device) is understood and transformed with
    its shape; MoE expert tensors, fused on load, are left to the checkpoint-name tests above."""
    cls, kwargs = REAL[real]
    config = cls(vocab_size=V, **kwargs)
    with torch.device("meta"):
        state = transformers.AutoModelForCausalLM.from_config(config).state_dict()
    adapter = get_adapter(config, OPTIONS["all"])
    transform = adapter.sample(0, torch.Generator().manual_seed(0))
    # Loaded names equal the checkpoint's except MoE experts (fused) and Mixtral's block_sparse_moe (now mlp).
    renamed = ".mlp." if config.model_type == "mixtral" else ".experts."
    block = {n: t for n, t in state.items() if adapter.layer_of(n) == 0 and ".experts." not in n and renamed not in n}
    assert block
    adapter.check_names(block)
    for name, tensor in block.items():
        assert adapter.apply(transform, name, tensor).shape == tensor.shape, name
