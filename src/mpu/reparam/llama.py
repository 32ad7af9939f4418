"""Llama-style families: they share DecoderAdapter and differ in biases, norms and q/k norms.

Checked against transformers 5.x modeling code: all of them use rotate_half RoPE over the whole head
(pairs (i, i + d_h/2)), HF repeat_kv grouping, a gated FFN ``down(act(gate(x)) * up(x))``.
"""

from __future__ import annotations

from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter

GEMMA2_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


@ARCHITECTURES.register("llama", "mistral")
class LlamaAdapter(DecoderAdapter):
    """Llama (optional attention_bias on q/k/v/o, mlp_bias on gate/up/down) and Mistral (no biases)."""

    family = "llama"


@ARCHITECTURES.register("qwen2")
class Qwen2Adapter(DecoderAdapter):
    """Qwen2: q/k/v always carry a bias (o does not); the biases follow their rows."""

    family = "qwen2"

    def _bias_modules(self) -> set[str]:
        return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}


@ARCHITECTURES.register("qwen3")
class Qwen3Adapter(DecoderAdapter):
    """Qwen3: per-head q_norm/k_norm (weight of size d_h shared by all heads) before RoPE."""

    family = "qwen3"
    qk_norm = "per_head"


@ARCHITECTURES.register("gemma")
class GemmaAdapter(DecoderAdapter):
    """Gemma: explicit head_dim (not hidden / heads); RMSNorm scales by (1 + weight), untouched by T."""

    family = "gemma"


@ARCHITECTURES.register("gemma2")
class Gemma2Adapter(DecoderAdapter):
    """Gemma2: as Gemma, plus pre/post FFN norms; logit softcapping acts on q.k, which T preserves."""

    family = "gemma2"
    block_norms = GEMMA2_NORMS


@ARCHITECTURES.register("gemma3_text")
class Gemma3TextAdapter(DecoderAdapter):
    """Gemma3 (text): Gemma2's norms plus per-head q_norm/k_norm like Qwen3."""

    family = "gemma3_text"
    block_norms = GEMMA2_NORMS
    qk_norm = "per_head"


@ARCHITECTURES.register("olmo2")
class Olmo2Adapter(DecoderAdapter):
    """OLMo2: post-norms only, and q_norm/k_norm over the whole projection (H * d_h) before RoPE."""

    family = "olmo2"
    block_norms = ("post_attention_layernorm", "post_feedforward_layernorm")
    qk_norm = "full"
