"""Phi (phi-1, phi-1_5, phi-2): parallel attention and MLP, partial rotary, biases everywhere.

Layout (transformers ``PhiDecoderLayer``), per block ``model.layers.<l>.``:
``x + attn(ln(x)) + mlp(ln(x))`` with one LayerNorm (weight and bias) shared by both branches.

- ``self_attn.q_proj``/``k_proj``/``v_proj`` (+ biases): rows transformed per KV head as for Llama;
  only the first ``int(d_h * partial_rotary_factor)`` dims of a head are rotated (rotate_half pairs
  (i, i + rotary_dim/2)); the pass-through dims get a Haar orthogonal.
- ``self_attn.dense`` is O: columns transformed, bias stays.
- ``mlp.fc1`` rows and bias / ``mlp.fc2`` columns: one permutation of the units. The activation
  (``gelu_new``) is not positively homogeneous, so no FFN scaling.
Unchanged: ``input_layernorm``, ``model.embed_tokens``, ``model.final_layernorm``, ``lm_head``
(weight and bias).

Refused: ``qk_layernorm=True``. Its LayerNorm over each head's d_h dims subtracts the mean over those
dims and applies one weight and bias per dim, before RoPE; no non-trivial orthogonal map on the head
commutes with the mean subtraction and an arbitrary per-dim affine map (not even a sign flip: it
changes the mean), so Q/K could not be transformed.
"""

from __future__ import annotations

from mpu.errors import UnsupportedArchitectureError
from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter


@ARCHITECTURES.register("phi")
class PhiAdapter(DecoderAdapter):
    family = "phi"
    activation_key = "hidden_act"
    non_block_names = frozenset(
        {"model.embed_tokens.weight", "model.final_layernorm.weight", "model.final_layernorm.bias",
         "lm_head.weight", "lm_head.bias"}
    )
    block_norms = ("input_layernorm",)
    norm_bias = True
    partial_rotary = True

    def __init__(self, config, options):
        if getattr(config, "qk_layernorm", False):
            raise UnsupportedArchitectureError(
                "phi with qk_layernorm=True: its per-head LayerNorm (mean subtraction plus a per-dim weight and "
                "bias, before RoPE) commutes with no rotation of the head, so Q/K cannot be reparameterised; "
                "use --no-reparam to publish without reparameterisation"
            )
        super().__init__(config, options)

    def _linears(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        return {
            "self_attn.q_proj": (("q",), None),
            "self_attn.k_proj": (("k",), None),
            "self_attn.v_proj": (("v",), None),
            "self_attn.dense": ((), "o"),
            "mlp.fc1": (("up",), None),
            "mlp.fc2": ((), "down"),
        }

    def _bias_modules(self) -> set[str]:
        return set(self._linears())
