"""Falcon: fused QKV in three layouts, parallel attention, RoPE or ALiBi.

Layout (transformers ``FalconAttention``), per block ``transformer.h.<l>.``; the stored rows of
``self_attention.query_key_value`` (and its bias, with ``config.bias``) are:

- ``new_decoder_architecture`` (falcon-40b/180b, grouped KV): per KV group j, its query heads, then its
  key, then its value: [q_{j,0} .. q_{j,g-1} k_j v_j], each d_h rows. Query head j*g + i reads KV head j.
- ``multi_query`` (falcon-7b/rw): [q of all heads | k | v] with one KV head.
- otherwise (multi-head): interleaved per head [q_0 k_0 v_0 q_1 k_1 v_1 ...].
The rules gather the rows into [q | k | v], transform them as for Llama, and scatter them back.

- RoPE (``alibi=False``) over the whole head, rotate_half pairs (i, i + d_h/2): plane rotations on Q/K.
- ALiBi (``alibi=True``): no RoPE, so any orthogonal map per KV head on Q/K; but each head has its own
  ALiBi slope, so heads are never permuted (kv_permutation is ignored, and ``describe`` says so).
- ``self_attention.dense`` is O: columns transformed, bias stays.
- ``mlp.dense_h_to_4h`` rows (and bias) / ``mlp.dense_4h_to_h`` columns: a permutation of the units;
  GELU, so no FFN scaling.
- Parallel attention (x + attn(ln x) + mlp(ln x), with one or two LayerNorms) does not involve T.
Unchanged: ``input_layernorm``, ``post_attention_layernorm``, ``ln_attn``, ``ln_mlp`` (weight and bias),
``transformer.word_embeddings``, ``transformer.ln_f``, ``lm_head``.
"""

from __future__ import annotations

import dataclasses

import torch

from mpu.reparam.base import ARCHITECTURES, LayerTransform
from mpu.reparam.decoder import DecoderAdapter, Geometry, interleaved_order


def grouped_order(n_kv: int, group: int, head_dim: int) -> torch.Tensor:
    """row_order of Falcon's grouped layout: per KV group [its g queries, k, v] -> [q | k | v]."""
    stored = torch.arange(n_kv * (group + 2) * head_dim).reshape(n_kv, group + 2, head_dim)
    q = stored[:, :group].reshape(-1)
    return torch.cat([q, stored[:, group].reshape(-1), stored[:, group + 1].reshape(-1)])


@ARCHITECTURES.register("falcon")
class FalconAdapter(DecoderAdapter):
    family = "falcon"
    activation_key = "activation"
    block_prefix = "transformer.h."
    base_prefix = "transformer."
    non_block_names = frozenset(
        {"transformer.word_embeddings.weight", "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"}
    )
    block_norms = ("input_layernorm", "post_attention_layernorm", "ln_attn", "ln_mlp")
    norm_bias = True

    def __init__(self, config, options):
        self.rope = not getattr(config, "alibi", False)
        super().__init__(config, options)

    def _geometry(self) -> Geometry:
        c = self.config
        n_kv = c.num_kv_heads if (c.new_decoder_architecture or not c.multi_query) else 1
        intermediate = getattr(c, "ffn_hidden_size", None) or 4 * int(c.hidden_size)
        return Geometry.from_config(c, False, rope=self.rope, n_kv=n_kv, intermediate=intermediate)

    def _linears(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        return {
            "self_attention.query_key_value": (("q", "k", "v"), None),
            "self_attention.dense": ((), "o"),
            "mlp.dense_h_to_4h": (("up",), None),
            "mlp.dense_4h_to_h": ((), "down"),
        }

    def _bias_modules(self) -> set[str]:
        return set(self._linears()) if getattr(self.config, "bias", False) else set()

    def _row_orders(self) -> dict[str, torch.Tensor]:
        g, c = self.geometry, self.config
        if c.new_decoder_architecture:
            order = grouped_order(g.n_kv, g.group, g.head_dim)
        elif c.multi_query:
            return {}  # already [q | k | v]
        else:
            order = interleaved_order(g.n_heads, g.head_dim, 3)
        return {"self_attention.query_key_value": order}

    def sample(self, layer: int, generator: torch.Generator) -> LayerTransform:
        """As :meth:`DecoderAdapter.sample`, without the KV-group permutation for ALiBi models (a head's
        slope belongs to its position)."""
        transform = super().sample(layer, generator)
        if not self.rope and transform.kv_perm is not None:
            # ALiBi slopes belong to head positions: moving a head would give it another slope.
            transform = dataclasses.replace(transform, kv_perm=None)
        return transform

    def describe(self) -> list[str]:
        """As :meth:`DecoderAdapter.describe`; ALiBi models say why heads are not permuted."""
        lines = super().describe()
        if not self.rope:
            lines = [line for line in lines if not line.startswith("heads:")]
            lines.append("heads: not permuted (ALiBi gives each head its own slope)")
        return lines
