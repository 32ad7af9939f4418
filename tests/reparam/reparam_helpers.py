"""Tiny models and a logit comparison shared by the reparam tests (and the measurement script)."""

from __future__ import annotations

import math

import torch
import transformers

from mpu.reparam import Adapter, LayerTransform

_BASE = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

_CONFIG_CLASSES = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "gemma": transformers.GemmaConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
    "olmo2": transformers.Olmo2Config,
    "phi3": transformers.Phi3Config,
}

# name -> (model_type, config overrides). Head counts: GQA (4/2), MHA (4/4), MQA (4/1).
CASES: dict[str, tuple[str, dict]] = {
    "llama-gqa": ("llama", {}),
    "llama-mha": ("llama", {"num_key_value_heads": 4}),
    "llama-bias-mqa": ("llama", {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True}),
    "mistral": ("mistral", {"sliding_window": 5}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),  # explicit head_dim != hidden / heads (12)
    "gemma": ("gemma", {"head_dim": 16, "num_key_value_heads": 1}),
    "gemma2": ("gemma2", {"head_dim": 16, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
                          "sliding_window": 5}),
    "gemma3_text": ("gemma3_text", {"head_dim": 16, "sliding_window": 5}),
    "olmo2": ("olmo2", {}),
    "phi3-partial": ("phi3", {"partial_rotary_factor": 0.5}),  # head_dim 12: 6 rotary dims, 6 pass-through
    "phi3-mha": ("phi3", {"num_key_value_heads": 4}),
}


def make_config(model_type: str, **overrides) -> transformers.PretrainedConfig:
    return _CONFIG_CLASSES[model_type](**{**_BASE, **overrides})


def make_model(config: transformers.PretrainedConfig, seed: int = 0, dtype=torch.float32):
    """A tiny model with weights large enough that a wrong transform shows in the logits.

    HF's init (std 0.02, norms at one, biases at zero) would leave logits near-constant and q_norm
    weights equal on both dims of every plane, hiding exactly the bugs these tests look for.
    """
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 2:
                scale = 1.0 if "embed_tokens" in name else 1.0 / math.sqrt(p.shape[1])
                p.copy_(noise * scale)
            elif name.endswith("bias"):
                p.copy_(0.5 * noise)
            else:  # norm weights: random and far from one, different on the two dims of every plane
                p.copy_(1.0 + 0.4 * noise)
    return model.to(dtype).eval()


def sample_all(adapter: Adapter, seed: int) -> list[LayerTransform]:
    """One transform per layer, each from its own generator (as the server seeds them)."""
    return [
        adapter.sample(layer, torch.Generator().manual_seed(seed * 1009 + layer))
        for layer in range(adapter.num_layers)
    ]


def transform_state(adapter: Adapter, state: dict, transforms: list[LayerTransform], inverse: bool = False) -> dict:
    out = {}
    for name, tensor in state.items():
        layer = adapter.layer_of(name)
        out[name] = tensor if layer is None else adapter.apply(transforms[layer], name, tensor, inverse=inverse)
    return out


def left_padded_batch(vocab_size: int, seed: int = 0, batch: int = 3, length: int = 11):
    """Random tokens with 0, 3 and 6 pad positions on the left of rows 0, 1, 2."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        mask[row, : 3 * row] = 0
    ids[mask == 0] = 0
    return ids, mask


@torch.no_grad()
def logits(model, ids, mask):
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does with left padding
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


def max_logit_diff(model_a, model_b, vocab_size: int, seed: int = 0) -> float:
    """max |logit difference| over the non-pad positions of a left-padded random batch."""
    ids, mask = left_padded_batch(vocab_size, seed)
    diff = (logits(model_a, ids, mask) - logits(model_b, ids, mask)).abs()
    return diff[mask.bool()].max().item()


def reparameterised_copy(model, adapter: Adapter, transforms: list[LayerTransform]):
    """A second model holding T(theta)."""
    copy = transformers.AutoModelForCausalLM.from_config(model.config, attn_implementation="eager")
    copy = copy.to(next(model.parameters()).dtype).eval()
    copy.load_state_dict(transform_state(adapter, model.state_dict(), transforms))
    return copy
