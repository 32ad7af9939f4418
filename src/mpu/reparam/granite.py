"""Granite (granite-3.x): Llama's layout plus four scalar multipliers.

``embedding_multiplier`` scales the embeddings, ``residual_multiplier`` each branch before it joins the
residual stream, ``attention_multiplier`` replaces d_h^-0.5 in the softmax, ``logits_scaling``
divides the logits. All four are scalars on whole vectors: they commute with the per-head orthogonal
maps and the FFN permutation/scaling, so Llama's transforms apply unchanged (optional attention_bias
and mlp_bias included, following their rows).
"""

from __future__ import annotations

from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter


@ARCHITECTURES.register("granite")
class GraniteAdapter(DecoderAdapter):
    family = "granite"
