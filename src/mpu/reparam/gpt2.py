"""GPT-2: Conv1D weights, learned positions, LayerNorms with biases, a GELU FFN.

Layout (transformers ``GPT2Block``), per block ``transformer.h.<l>.``:

- ``attn.c_attn`` is a Conv1D: its weight is stored as (in, out) = (hidden, 3*hidden) and computes
  ``x @ W + b``; the output columns are [q | k | v], each H heads of d_h (heads split as in Llama).
  T acts on the columns of the stored weight (the rows of ``W.T``) and on the bias like those rows.
- ``attn.c_proj`` (hidden, hidden) is O: T acts on its stored rows (the input side); its bias is
  in the residual stream and stays.
- ``mlp.c_fc`` (hidden, inner) and ``mlp.c_proj`` (inner, hidden): FFN units are the columns of
  c_fc (and its bias) and the rows of c_proj.

Positions are learned embeddings added to the residual stream, so there is no RoPE: any orthogonal
A_j per head on Q and K (q.k = q^T A^T A k) and any orthogonal M_j per head on V and O preserve the
function. Every head is its own KV group (multi-head attention), so heads may be permuted.
The activation (``gelu_new`` by default) is not positively homogeneous, so FFN scaling is skipped
unless the config's activation is ReLU; the FFN permutation always applies.
Unchanged: ``ln_1``/``ln_2`` (weight and bias), ``wte``, ``wpe``, ``ln_f``, ``lm_head``.
Refused: cross-attention blocks (``add_cross_attention``), which ``check_names`` does not know.
"""

from __future__ import annotations

from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter, Geometry, Rule



@ARCHITECTURES.register("gpt2")
class GPT2Adapter(DecoderAdapter):
    family = "gpt2"
    block_prefix = "transformer.h."
    base_prefix = "transformer."
    non_block_names = frozenset(
        {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
         "lm_head.weight"}
    )
    block_norms = ("ln_1", "ln_2")
    norm_bias = True
    rope = False
    activation_key = "activation_function"

    def _geometry(self) -> Geometry:
        inner = getattr(self.config, "n_inner", None) or 4 * int(self.config.hidden_size)
        return Geometry.from_config(self.config, False, rope=False, intermediate=inner)

    def _linears(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        return {
            "attn.c_attn": (("q", "k", "v"), None),
            "attn.c_proj": ((), "o"),
            "mlp.c_fc": (("up",), None),
            "mlp.c_proj": ((), "down"),
        }

    def _bias_modules(self) -> set[str]:
        return set(self._linears())

    def _transposed_modules(self) -> set[str]:
        return set(self._linears())

    def _block_rules(self) -> dict[str, Rule]:
        rules = super()._block_rules()
        # Causal-mask buffers that older checkpoints saved; transformers rebuilds them and ignores these.
        rules["attn.bias"] = Rule()
        rules["attn.masked_bias"] = Rule()
        rules.pop("self_attn.rotary_emb.inv_freq", None)
        return rules

