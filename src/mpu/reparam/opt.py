"""OPT: learned positions, biases, LayerNorms, a ReLU FFN (``fc1``/``fc2``).

Layout (transformers ``OPTDecoderLayer``), per block ``model.decoder.layers.<l>.``:

- ``self_attn.q_proj``/``k_proj``/``v_proj`` (+ biases): multi-head attention without RoPE (positions
  are learned embeddings added to the input), so any orthogonal A_j per head on Q/K rows and any
  orthogonal M_j per head on V rows / ``out_proj`` columns preserve the function; heads may be permuted.
  OPT scales q by d_h^-0.5 after the projection, which commutes with all of this.
- ``fc1`` rows and bias / ``fc2`` columns: a permutation of the units, and, with the default ReLU
  (relu(s x) = s relu(x) for s > 0), optionally a positive scale s_i on fc1 row i and 1/s_i on fc2
  column i. Other activations get no scaling.
Unchanged: ``self_attn_layer_norm`` and ``final_layer_norm`` of each block (weight and bias),
``embed_tokens``, ``embed_positions``, the decoder's ``final_layer_norm``, ``project_in``/``project_out``
(opt-350m: they act on the residual stream outside the blocks), ``lm_head``.
"""

from __future__ import annotations

from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter, Geometry


@ARCHITECTURES.register("opt")
class OPTAdapter(DecoderAdapter):
    family = "opt"
    activation_key = "activation_function"
    block_prefix = "model.decoder.layers."
    base_prefix = "model."
    non_block_names = frozenset(
        {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
         "model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias",
         "model.decoder.project_in.weight", "model.decoder.project_out.weight", "lm_head.weight"}
    )
    block_norms = ("self_attn_layer_norm", "final_layer_norm")
    norm_bias = True
    rope = False

    def _geometry(self) -> Geometry:
        return Geometry.from_config(self.config, False, rope=False, intermediate=int(self.config.ffn_dim))

    def _linears(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        return {
            "self_attn.q_proj": (("q",), None),
            "self_attn.k_proj": (("k",), None),
            "self_attn.v_proj": (("v",), None),
            "self_attn.out_proj": ((), "o"),
            "fc1": (("up",), None),
            "fc2": ((), "down"),
        }

    def _bias_modules(self) -> set[str]:
        return set(self._linears()) if getattr(self.config, "enable_bias", True) else set()
