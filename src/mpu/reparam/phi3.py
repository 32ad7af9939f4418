"""Phi-3: fused projections and partial rotary embeddings.

- ``qkv_proj`` rows are [q | k | v] (HF slices at H_q*d_h and H_q*d_h + H_kv*d_h);
- ``gate_up_proj`` rows are [gate | up] (HF ``chunk(2)``: gate first);
- with partial_rotary_factor < 1 only the first rotary_dim dims of a head are rotated, with
  rotate_half pairing (i, i + rotary_dim/2); the rest pass through and get a Haar orthogonal.
Each fused weight is transformed slice by slice with the unfused rules.
"""

from __future__ import annotations

from mpu.reparam.base import ARCHITECTURES
from mpu.reparam.decoder import DecoderAdapter


@ARCHITECTURES.register("phi3")
class Phi3Adapter(DecoderAdapter):
    family = "phi3"
    partial_rotary = True

    def _linears(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        return {
            "self_attn.qkv_proj": (("q", "k", "v"), None),
            "self_attn.o_proj": ((), "o"),
            "mlp.gate_up_proj": (("gate", "up"), None),
            "mlp.down_proj": ((), "down"),
        }
