"""GPT-NeoX (Pythia): fused QKV interleaved per head, partial rotary, parallel residual.

Layout (transformers ``GPTNeoXLayer``), per block ``gpt_neox.layers.<l>.``:

- ``attention.query_key_value`` (3*H*d_h, hidden) + bias: the output is viewed as (H, 3*d_h) and
  chunked, so the stored rows are [q_0 k_0 v_0 q_1 k_1 v_1 ...], one d_h slice each. The rules
  gather them into [q | k | v], transform as for Llama, and scatter them back.
- Partial rotary: only the first ``rotary_ndims = int(d_h * partial_rotary_factor)`` dims of a head
  are rotated, with rotate_half pairing (i, i + rotary_ndims/2); the rest pass through and get a
  Haar orthogonal (as for Phi-3).
- ``attention.dense`` (O) and ``mlp.dense_4h_to_h`` (down): columns transformed, biases stay.
- ``mlp.dense_h_to_4h`` rows and bias: permuted with the units; GELU, so no FFN scaling.
- The parallel residual (x + attn(ln1 x) + mlp(ln2 x)) does not involve T.
Unchanged: both LayerNorms (weight and bias), ``gpt_neox.embed_in``, ``gpt_neox.final_layer_norm``,
and the head, saved as ``embed_out`` (loaded by transformers as ``lm_head``).
"""

from __future__ import annotations

import torch

from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter, Rule, interleaved_order


@ARCHITECTURES.register("gpt_neox")
class GPTNeoXAdapter(DecoderAdapter):
    family = "gpt_neox"
    activation_key = "hidden_act"
    block_prefix = "gpt_neox.layers."
    base_prefix = "gpt_neox."
    non_block_names = frozenset(
        {"gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias",
         "embed_out.weight", "lm_head.weight"}
    )
    block_norms = ("input_layernorm", "post_attention_layernorm")
    norm_bias = True
    partial_rotary = True

    def _linears(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        return {
            "attention.query_key_value": (("q", "k", "v"), None),
            "attention.dense": ((), "o"),
            "mlp.dense_h_to_4h": (("up",), None),
            "mlp.dense_4h_to_h": ((), "down"),
        }

    def _bias_modules(self) -> set[str]:
        mlp = {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}
        return set(self._linears()) if getattr(self.config, "attention_bias", True) else mlp

    def _row_orders(self) -> dict[str, torch.Tensor]:
        g = self.geometry
        return {"attention.query_key_value": interleaved_order(g.n_heads, g.head_dim, 3)}

    def _block_rules(self):
        rules = super()._block_rules()
        rules.pop("self_attn.rotary_emb.inv_freq", None)
        # Buffers some older checkpoints saved (causal mask, RoPE frequencies); transformers ignores them.
        for buffer in ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"):
            rules[buffer] = Rule()
        return rules
