"""StableLM (stablelm-2, stablelm-3b-4e1t): partial rotary, LayerNorms, optional q/k/v biases.

Layout (transformers ``StableLmDecoderLayer``), per block ``model.layers.<l>.``: Llama's projections
and gated FFN (``q/k/v/o_proj``, ``gate/up/down_proj``), LayerNorms with bias (``input_layernorm``,
and ``post_attention_layernorm`` unless ``use_parallel_residual``). Only the first
``int(d_h * partial_rotary_factor)`` dims of a head are rotated (rotate_half pairs inside them); the
pass-through dims get a Haar orthogonal. With ``use_qkv_bias`` the q/k/v biases follow their rows.
Unchanged: the LayerNorms (weight and bias), ``model.embed_tokens``, ``model.norm``, ``lm_head``.

Refused: ``qk_layernorm=True`` (stablelm-2-12b). Each head has its own LayerNorm over its d_h dims,
applied before RoPE: it subtracts the mean over the head and applies a per-dim weight, and no
non-trivial orthogonal map of the head (not even a sign flip, which changes the mean) commutes
with that, so Q/K could not be transformed.
"""

from __future__ import annotations

from mpu.errors import UnsupportedArchitectureError
from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter


@ARCHITECTURES.register("stablelm")
class StableLmAdapter(DecoderAdapter):
    family = "stablelm"
    non_block_names = frozenset({"model.embed_tokens.weight", "model.norm.weight", "model.norm.bias", "lm_head.weight"})
    norm_bias = True
    partial_rotary = True

    def __init__(self, config, options):
        if getattr(config, "qk_layernorm", False):
            raise UnsupportedArchitectureError(
                "stablelm with qk_layernorm=True: its per-head LayerNorms (mean subtraction plus a per-dim weight, "
                "before RoPE) commute with no rotation of a head, so Q/K cannot be reparameterised; "
                "use --no-reparam to publish without reparameterisation"
            )
        super().__init__(config, options)

    def _bias_modules(self) -> set[str]:
        if getattr(self.config, "use_qkv_bias", False):
            return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
        return set()
