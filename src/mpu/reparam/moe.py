"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE (with a shared expert), Qwen3-MoE.

Attention is Llama's (Qwen2-MoE: q/k/v biases; Qwen3-MoE: per-head q_norm/k_norm, so QK gets plane
sign flips only, as for Qwen3). The sparse block is

    y = sum over the top-k experts e of  p_e(x) * down_e(act(gate_e(x)) * up_e(x))
        [+ sigmoid(shared_expert_gate(x)) * shared(x)]                      (Qwen2-MoE)

The router ``gate`` (and ``shared_expert_gate``) reads the hidden state, which T does not touch, so
routing is unchanged and the router is left alone. Each expert is a gated FFN of its own: its
intermediate units get their own permutation (and, with ffn_scaling, their own scales), drawn
independently per expert; the shared expert gets one more. Dense layers of Qwen MoE models
(``mlp_only_layers``, ``decoder_sparse_step``) use the ordinary FFN rules.

Names are the checkpoint's, as ``save_pretrained`` writes them (one tensor per expert:
``block_sparse_moe.experts.<e>.w1/w3/w2`` for Mixtral, ``mlp.experts.<e>.gate_proj/up_proj/down_proj``
for Qwen), not the fused 3-D ``experts.gate_up_proj`` that transformers 5 builds on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mpu.reparam import maths
from mpu.reparam.base import ARCHITECTURES, LayerTransform
from mpu.reparam.decoder import DecoderAdapter, Rule, UnitRole


@dataclass(frozen=True, eq=False)
class MoeLayerTransform(LayerTransform):
    """A LayerTransform plus one (permutation, scales) per expert FFN.

    ``units``: key (``"expert.<e>"``, ``"shared"``) -> (perm (n,) or None, scales (n,) float64 or None).
    """

    units: dict = field(default_factory=dict)

    def is_identity(self) -> bool:
        """True when neither the dense parts nor any expert's FFN permutation or scales are drawn."""
        return super().is_identity() and all(p is None and s is None for p, s in self.units.values())


class MoeAdapter(DecoderAdapter):
    """Shared code: experts named ``<moe>.experts.<e>.<gate|up|down>.weight``, a router ``<moe>.gate``."""

    moe_module = "mlp"
    expert_linears = ("gate_proj", "up_proj", "down_proj")  # (gate, up, down)
    shared_expert = False

    @property
    def num_experts(self) -> int:
        """Experts per MoE layer, from the HF config (``num_experts`` or ``num_local_experts``)."""
        return int(getattr(self.config, "num_experts", None) or self.config.num_local_experts)

    def _expert_size(self) -> int:
        return int(getattr(self.config, "moe_intermediate_size", None) or self.config.intermediate_size)

    def _ffns(self) -> dict[str, tuple[str, int]]:
        """key -> (module path inside the block, intermediate size) for every expert FFN."""
        ffns = {f"expert.{e}": (f"{self.moe_module}.experts.{e}", self._expert_size()) for e in range(self.num_experts)}
        if self.shared_expert:
            ffns["shared"] = (f"{self.moe_module}.shared_expert", int(self.config.shared_expert_intermediate_size))
        return ffns

    def _block_rules(self) -> dict[str, Rule]:
        rules = super()._block_rules()  # attention, norms, and the dense FFN of non-sparse layers
        gate, up, down = self.expert_linears
        for key, (module, size) in self._ffns().items():
            rules[f"{module}.{gate}.weight"] = Rule((UnitRole("gate", 0, size, key),))
            rules[f"{module}.{up}.weight"] = Rule((UnitRole("up", 1, size, key),))
            rules[f"{module}.{down}.weight"] = Rule((), UnitRole("down", -1, size, key))
        rules[f"{self.moe_module}.gate.weight"] = Rule()  # the router reads the untouched hidden state
        if self.shared_expert:
            rules[f"{self.moe_module}.shared_expert_gate.weight"] = Rule()
        return rules

    def sample(self, layer: int, generator: torch.Generator) -> MoeLayerTransform:
        """The dense draw of :meth:`DecoderAdapter.sample`, then for each expert FFN (and the shared expert)
        its own permutation and scales ``[expert intermediate size]``, drawn independently in expert order."""
        base = super().sample(layer, generator)
        o = self.options
        units = {}
        for key, (_, size) in self._ffns().items():
            perm = torch.randperm(size, generator=generator) if o.ffn_permutation else None
            scale = maths.log_uniform_scales(size, o.ffn_scale_range, generator) if o.ffn_scaling else None
            units[key] = (perm, scale)
        return MoeLayerTransform(
            layer, qk=base.qk, vo=base.vo, kv_perm=base.kv_perm, ffn_perm=base.ffn_perm, ffn_scale=base.ffn_scale,
            units=units,
        )

    def describe(self) -> list[str]:
        """:meth:`DecoderAdapter.describe` plus one line on the experts and the router."""
        shared = " and the shared expert" if self.shared_expert else ""
        return super().describe() + [
            f"experts: each of the {self.num_experts} experts{shared} has its own FFN permutation"
            f"{' and scales' if self.options.ffn_scaling else ''} (drawn independently); the router is unchanged"
        ]


@ARCHITECTURES.register("mixtral")
class MixtralAdapter(MoeAdapter):
    """Mixtral: ``block_sparse_moe.experts.<e>.w1`` (gate), ``w3`` (up), ``w2`` (down); no biases."""

    family = "mixtral"
    moe_module = "block_sparse_moe"
    expert_linears = ("w1", "w3", "w2")


@ARCHITECTURES.register("qwen2_moe")
class Qwen2MoeAdapter(MoeAdapter):
    """Qwen2-MoE: q/k/v biases (``qkv_bias``), a shared expert behind a sigmoid ``shared_expert_gate``."""

    family = "qwen2_moe"
    shared_expert = True

    def _bias_modules(self) -> set[str]:
        return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"} if getattr(self.config, "qkv_bias", True) else set()


@ARCHITECTURES.register("qwen3_moe")
class Qwen3MoeAdapter(MoeAdapter):
    """Qwen3-MoE: per-head q_norm/k_norm as Qwen3 (QK plane sign flips only); no shared expert."""

    family = "qwen3_moe"
    qk_norm = "per_head"
