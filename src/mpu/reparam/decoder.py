"""The shared adapter for Llama-style RoPE decoders (gated FFN, q/k/v/o attention, RMSNorms).

The maths, per layer and per copy:

- QK: for KV head j an orthogonal A_j that commutes with RoPE (rotations inside rotate_half
  planes; a Haar block on partial-rotary pass-through dims). k rows of head j -> A_j @ rows; q rows of
  every query head reading j -> A_j @ rows. Then q.k = q^T A_j^T A_j k is unchanged.
- V/O: V rows of KV head j -> M_j @ rows, O columns of each query head in group j -> cols @ M_j^T.
  The attention output of that head is M_j times the old one, and O undoes it.
- KV groups may be permuted together with their query heads and O column blocks.
- FFN: a permutation of intermediate units; optionally up row i * s_i and down column i / s_i.

Each parameter name maps to a ``Rule`` (``layout.py``): a row transform (segments, several for fused projections)
and/or a column transform. A column transform is the row transform of the transpose, so every
operation is one of the two row operations in ``maths.py``.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
import transformers

from mpu.errors import MPUError, UnsupportedArchitectureError
from mpu.reparam import maths
from mpu.reparam.base import Adapter, LayerTransform
# The layout vocabulary lives in layout.py; re-exported here, where the family adapters import it from.
from mpu.reparam.layout import Geometry, HeadRole, Role, Rule, UnitRole, interleaved_order  # noqa: F401
from mpu.reparam.options import ReparamConfig

F64 = torch.float64
# Activations f with f(s x) = s f(x) for s > 0: only these allow FFN scaling without a gate.
HOMOGENEOUS_ACTIVATIONS = frozenset({"relu"})

# Block-external tensors that T leaves alone (published as they are).
# rotary_emb.inv_freq appears in some older checkpoints; HF recomputes it and ignores the stored copy.
NON_BLOCK_NAMES = frozenset(
    {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.rotary_emb.inv_freq"}
)


class DecoderAdapter(Adapter):
    """Llama-style decoders. Families differ through the class attributes below."""

    family = "llama"
    # Per-block norms on the hidden state: they act before/after the projections, so T leaves them alone.
    block_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # "per_head": q_norm/k_norm weight of size d_h shared by all heads (Qwen3, Gemma3).
    # "full": a weight over the whole projection, H*d_h (OLMo2). Either way the weight is arbitrary and
    # acts before RoPE, so only plane rotations by 0 or pi (sign flips) commute with it.
    qk_norm: str | None = None
    # Only models whose apply_rotary_pos_emb splits q into q_rot / q_pass honour partial_rotary_factor
    # (Phi-3); the others rotate the whole head whatever the config says.
    partial_rotary: bool = False
    # Families with other layouts (GPT-2, GPT-NeoX, OPT, Falcon, ...) set these:
    # the prefix of block names, "<prefix><l>.<suffix>"; "model.layers." defers to Adapter.layer_of.
    block_prefix: str = "model.layers."
    # Checkpoints saved from the bare base model (the hub's gpt2: "h.0.attn.c_attn.weight", "wte.weight")
    # lack the base model's prefix ("transformer."); such names are read with it, as transformers loads them.
    base_prefix: str = ""
    # Block-external tensors T leaves alone (embeddings, final norm, head).
    non_block_names: frozenset[str] = NON_BLOCK_NAMES
    # Block norms with a bias (LayerNorm): the bias, like the weight, acts on the hidden state.
    norm_bias: bool = False
    # Whether the FFN commutes with a positive per-unit scale: True for gated FFNs (linear in up) and
    # ReLU (relu(s x) = s relu(x), s > 0); False for GELU, where ffn_scaling is skipped.
    ffn_scalable: bool = True
    # The config key naming the FFN activation (families without a gated FFN); FFN scaling is allowed
    # only for a positively homogeneous one (HOMOGENEOUS_ACTIVATIONS). None: keep ffn_scalable as set.
    activation_key: str | None = None
    # Whether the model rotates q/k by RoPE; without it (learned positions, ALiBi) any orthogonal map
    # per KV head preserves q.k.
    rope: bool = True

    def __init__(self, config: transformers.PretrainedConfig, options: ReparamConfig):
        super().__init__(config, options)
        if self.activation_key is not None:
            self.ffn_scalable = getattr(config, self.activation_key, None) in HOMOGENEOUS_ACTIVATIONS
        self.geometry = self._geometry()
        self.roles = self._roles()
        self.rules = self._block_rules()
        self._block_re = re.compile(r"^" + re.escape(self.block_prefix) + r"(\d+)\.(.+)$")

    def _geometry(self) -> Geometry:
        return Geometry.from_config(self.config, self.partial_rotary, rope=self.rope)

    def layer_of(self, name: str) -> int | None:
        """Block index of a ``<block_prefix><l>.<...>`` name, else None."""
        if self.block_prefix == "model.layers.":
            return super().layer_of(name)
        match = self._block_re.fullmatch(self._canonical(name))
        return int(match.group(1)) if match else None

    def block_suffix(self, name: str) -> str:
        """The part of a block name after ``<block_prefix><l>.``."""
        if self.block_prefix == "model.layers.":
            return name.split(".", 3)[3]
        match = self._block_re.fullmatch(self._canonical(name))
        return match.group(2) if match else name

    def _canonical(self, name: str) -> str:
        """``name`` with the base-model prefix when it lacks it and only the prefixed name is known."""
        if not self.base_prefix or name.startswith(self.base_prefix):
            return name
        prefixed = self.base_prefix + name
        known = self._block_re.fullmatch(prefixed) is not None or prefixed in self.non_block_names
        return prefixed if known else name

    # Layout ----------------------------------------------------------------------------------

    def _roles(self) -> dict[str, Role]:
        g = self.geometry
        q_rows, kv_rows = g.n_heads * g.head_dim, g.n_kv * g.head_dim
        return {
            "q": HeadRole("q", g.group, "qk", q_rows),
            "k": HeadRole("k", 1, "qk", kv_rows),
            "v": HeadRole("v", 1, "vo", kv_rows),
            "o": HeadRole("o", g.group, "vo", q_rows),
            "q_norm": HeadRole("q_norm", g.group, None, q_rows),
            "k_norm": HeadRole("k_norm", 1, None, kv_rows),
            "gate": UnitRole("gate", 0, g.intermediate),
            "up": UnitRole("up", 1, g.intermediate),
            "down": UnitRole("down", -1, g.intermediate),
        }

    def _linears(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        """Linear module -> (row role labels, column role label)."""
        return {
            "self_attn.q_proj": (("q",), None),
            "self_attn.k_proj": (("k",), None),
            "self_attn.v_proj": (("v",), None),
            "self_attn.o_proj": ((), "o"),
            "mlp.gate_proj": (("gate",), None),
            "mlp.up_proj": (("up",), None),
            "mlp.down_proj": ((), "down"),
        }

    def _bias_modules(self) -> set[str]:
        """Linear modules that carry a bias under this config (HF's attention_bias / mlp_bias)."""
        modules = set()
        if getattr(self.config, "attention_bias", False):
            modules |= {m for m in self._linears() if m.startswith("self_attn.")}
        if getattr(self.config, "mlp_bias", False):
            modules |= {m for m in self._linears() if m.startswith("mlp.")}
        return modules

    def _transposed_modules(self) -> set[str]:
        """Linear modules stored as (in, out), like GPT-2's Conv1D."""
        return set()

    def _row_orders(self) -> dict[str, torch.Tensor]:
        """Fused modules whose stored rows interleave their segments: module -> row_order (see Rule)."""
        return {}

    def _block_rules(self) -> dict[str, Rule]:
        """Every name inside a block that this adapter understands (the suffix after model.layers.<l>.)."""
        rules: dict[str, Rule] = {}
        biased = self._bias_modules()
        transposed, orders = self._transposed_modules(), self._row_orders()
        for module, (row_labels, col_label) in self._linears().items():
            rows = tuple(self.roles[label] for label in row_labels)
            order = orders.get(module)
            rules[f"{module}.weight"] = Rule(
                rows, self.roles[col_label] if col_label else None, module in transposed, order
            )
            if module in biased:
                # A bias lives in the output space: it follows the rows, and a column transform
                # (o_proj, down_proj) leaves it alone.
                rules[f"{module}.bias"] = Rule(rows, row_order=order)
        for norm in self.block_norms:
            rules[f"{norm}.weight"] = Rule()
            if self.norm_bias:
                rules[f"{norm}.bias"] = Rule()
        if self.qk_norm == "per_head":
            # Shared by all heads, so head permutations leave it alone; sign flips commute with it.
            rules["self_attn.q_norm.weight"] = Rule()
            rules["self_attn.k_norm.weight"] = Rule()
        elif self.qk_norm == "full":
            # One weight per element of the projection: it must follow the head permutation.
            rules["self_attn.q_norm.weight"] = Rule((self.roles["q_norm"],))
            rules["self_attn.k_norm.weight"] = Rule((self.roles["k_norm"],))
        rules["self_attn.rotary_emb.inv_freq"] = Rule()  # stale buffer in old checkpoints; ignored by HF
        return rules

    # Public API ------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        """One line per part (QK, V/O, heads, FFN, biases, what stays unchanged) for these options and this
        model's geometry (head_dim, rotary dims, KV groups, intermediate size), as ``mpu server init`` prints."""
        g, o = self.geometry, self.options
        half, n_pass = g.rotary_dim // 2, g.head_dim - g.rotary_dim
        heads = f"shared by its {g.group} query head(s)"
        if not o.qk_rotation:
            qk = "QK: not transformed (qk_rotation off)"
        elif not self.rope:
            qk = f"QK: a Haar-random orthogonal {g.head_dim}x{g.head_dim} per KV head (no RoPE), {heads}"
        elif self.qk_norm:
            where = "per-head q_norm/k_norm" if self.qk_norm == "per_head" else "q_norm/k_norm over the projection"
            qk = f"QK: plane sign flips only ({where}): each of the {half} RoPE planes of a KV head is rotated by 0 or pi"
            qk += f", each of the {n_pass} pass-through dims flipped or not" if n_pass else ""
            qk += f", {heads}"
        else:
            qk = f"QK: a random rotation in each of the {half} RoPE planes (dims i, i+{half}) of a KV head, {heads}"
            qk += f"; a Haar orthogonal on its {n_pass} pass-through dims (partial rotary)" if n_pass else ""
        lines = [qk, self._describe_vo()]
        lines.append(
            "heads: KV groups permuted with their query heads and O column blocks"
            if o.kv_permutation else "heads: not permuted"
        )
        if o.ffn_permutation:
            lines.append(f"FFN: permutation of the {g.intermediate} intermediate units (gate/up rows, down columns)")
        if o.ffn_scaling and not self.ffn_scalable:
            lines.append("FFN: no scaling (the activation is not positively homogeneous)")
        elif o.ffn_scaling:
            lines.append(f"FFN: up row i scaled by s_i, down column i by 1/s_i, s_i = exp(U(-ln r, ln r)), r = {o.ffn_scale_range:g}")
        if not (o.ffn_permutation or o.ffn_scaling):
            lines.append("FFN: not transformed")
        biased = sorted({m.split(".")[-1] for m in self._bias_modules()})
        if biased:
            lines.append(f"biases of {', '.join(biased)}: transformed with their rows (column transforms leave them alone)")
        if self.qk_norm == "full":
            lines.append("q_norm/k_norm weights: permuted with the KV groups")
        lines.append("unchanged: block norms, embeddings, final norm, lm_head (published as they are)")
        return lines

    def _describe_vo(self) -> str:
        g, o = self.geometry, self.options
        if o.vo == "none":
            return "V/O: not transformed"
        if o.vo == "haar":
            return f"V/O: an independent Haar-random orthogonal {g.head_dim}x{g.head_dim} per KV head (V rows, O columns)"
        if o.qk_rotation and not self.qk_norm:
            what = "orthogonal" if not self.rope else "plane rotation"
            return f"V/O: the same {what} as that KV group's QK (V rows, O columns)"
        return "V/O: an independent random plane rotation per KV head (V rows, O columns)"

    def check_names(self, names: Iterable[str]) -> None:
        """Raise UnsupportedArchitectureError listing every parameter in ``names`` that no rule covers (a
        block tensor with an unknown suffix or layer, or an unknown tensor outside the blocks), so that
        no copy is published half-transformed. TypeError for a single string instead of an iterable."""
        if isinstance(names, str):
            raise TypeError("check_names() takes an iterable of names, not one string")
        unknown = [name for name in names if not self._understands(name)]
        if unknown:
            raise UnsupportedArchitectureError(
                f"the {self.family} reparameterisation adapter ({self.config.model_type}) does not understand "
                f"{len(unknown)} parameter(s): {', '.join(unknown)}. Refusing to publish a partly "
                f"reparameterised copy; use --no-reparam to publish without reparameterisation."
            )

    def _understands(self, name: str) -> bool:
        layer = self.layer_of(name)
        if layer is None:
            return self._canonical(name) in self.non_block_names
        return layer < self.num_layers and self.block_suffix(name) in self.rules

    def sample(self, layer: int, generator: torch.Generator) -> LayerTransform:
        """Draw layer ``layer``'s transform from ``generator`` in a fixed order, only for the enabled parts:
        QK (per KV head an orthogonal ``[head_dim, head_dim]`` that commutes with RoPE, stored
        ``[H_kv, head_dim, head_dim]``: uniform rotations of the rotary_dim/2 planes, sign flips only with
        QK-norm, Haar without RoPE or on pass-through dims), V/O (the QK draw, a fresh plane rotation, or
        Haar), the KV group permutation ``[H_kv]``, the FFN permutation and scales ``[intermediate]``. The same seed and
        options give the same transform. Raises ValueError for a layer outside [0, num_layers) or a
        generator that is not a CPU ``torch.Generator``."""
        self._check_sample_args(layer, generator)
        g, o = self.geometry, self.options
        # Draws happen in a fixed order, and only for enabled parts: same seed + options -> same T.
        qk = self._draw_rope_block(generator, signs_only=self.qk_norm is not None) if o.qk_rotation else None
        if o.vo == "plane":
            free_qk = qk is not None and not self.qk_norm
            vo = qk if free_qk else self._draw_rope_block(generator, signs_only=False)
        elif o.vo == "haar":
            vo = maths.haar_orthogonal(g.n_kv, g.head_dim, generator)
        else:
            vo = None
        kv_perm = torch.randperm(g.n_kv, generator=generator) if o.kv_permutation else None
        ffn_perm = torch.randperm(g.intermediate, generator=generator) if o.ffn_permutation else None
        ffn_scale = (
            maths.log_uniform_scales(g.intermediate, o.ffn_scale_range, generator)
            if o.ffn_scaling and self.ffn_scalable else None
        )
        return LayerTransform(layer, qk=qk, vo=vo, kv_perm=kv_perm, ffn_perm=ffn_perm, ffn_scale=ffn_scale)

    def _draw_rope_block(self, generator: torch.Generator, signs_only: bool) -> torch.Tensor:
        """Per KV head, an orthogonal d_h x d_h that commutes with RoPE (and, if signs_only, with qk norms)."""
        g = self.geometry
        half, n_pass = g.rotary_dim // 2, g.head_dim - g.rotary_dim
        if signs_only:
            plane_signs = maths.random_signs((g.n_kv, half), generator)
            pass_signs = maths.random_signs((g.n_kv, n_pass), generator) if n_pass else None
            return maths.rope_plane_signs(plane_signs, g.head_dim, pass_signs)
        block = maths.rope_plane_rotation(maths.uniform_angles((g.n_kv, half), generator), g.head_dim)
        if n_pass:
            # RoPE is the identity on pass-through dims, so any orthogonal map there commutes with it.
            block[:, g.rotary_dim :, g.rotary_dim :] = maths.haar_orthogonal(g.n_kv, n_pass, generator)
        return block

    def apply(
        self, transform: LayerTransform, name: str, tensor: torch.Tensor, *, inverse: bool = False
    ) -> torch.Tensor:
        """T (or T^-1) on one tensor. Tensors T leaves alone are returned as they are, not copied."""
        rule = self._rule_for(transform, name)
        if rule is None or rule.is_identity:
            return tensor
        x = tensor.to(_compute_dtype(tensor))
        if rule.transposed:
            if x.dim() != 2:
                raise MPUError(f"{name}: a transposed (Conv1D) weight must be a matrix, got shape {tuple(x.shape)}")
            x = x.T
        x = self._ordered_rows(transform, rule, x, inverse, name)
        x = self._col_transform(transform, rule.cols, x, inverse, name)
        if rule.transposed:
            x = x.T.contiguous()
        return x.to(tensor.dtype)

    def apply_lora(
        self,
        transform: LayerTransform,
        name: str,
        lora_B: torch.Tensor,
        lora_A: torch.Tensor,
        *,
        inverse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row transforms act on B (out x r), column transforms on A (r x in)."""
        if lora_B.dim() != 2 or lora_A.dim() != 2 or lora_B.shape[1] != lora_A.shape[0]:
            raise ValueError(f"{name}: LoRA factors must be B (out x r) and A (r x in), got "
                             f"{tuple(lora_B.shape)} and {tuple(lora_A.shape)}")
        rule = self._rule_for(transform, name)
        if rule is None or rule.is_identity:
            return lora_B, lora_A
        if rule.transposed:
            # Stored M = B @ A is (in, out); its transpose A^T @ B^T is the (out, in) matrix the rule
            # describes, with factors (A^T, B^T). Transform those, then transpose back.
            new_b, new_a = self._lora_factors(transform, rule, lora_A.T, lora_B.T, inverse, name)
            return new_a.T.contiguous(), new_b.T.contiguous()
        return self._lora_factors(transform, rule, lora_B, lora_A, inverse, name)

    def _lora_factors(self, transform, rule: Rule, lora_B, lora_A, inverse: bool, name: str):
        new_B = self._ordered_rows(transform, rule, lora_B.to(_compute_dtype(lora_B)), inverse, name).to(lora_B.dtype)
        new_A = self._col_transform(transform, rule.cols, lora_A.to(_compute_dtype(lora_A)), inverse, name).to(lora_A.dtype)
        return new_B, new_A

    # Internals -------------------------------------------------------------------------------

    def _rule_for(self, transform: LayerTransform, name: str) -> Rule | None:
        """The rule for a block tensor of the transform's layer; None for block-external names."""
        layer = self.layer_of(name)
        if layer is None:
            return None
        if layer != transform.layer:
            raise ValueError(f"{name} belongs to layer {layer}, but the transform was drawn for layer {transform.layer}")
        rule = self.rules.get(self.block_suffix(name)) if layer < self.num_layers else None
        if rule is None:
            raise UnsupportedArchitectureError(
                f"the {self.family} reparameterisation adapter does not understand parameter {name}"
            )
        return rule

    def _ordered_rows(self, t: LayerTransform, rule: Rule, x, inverse: bool, name: str):
        """The rule's row transform, with interleaved fused rows gathered into segments and back."""
        if rule.row_order is None or not rule.rows:
            return self._row_transform(t, rule.rows, x, inverse, name)
        order = rule.row_order.to(x.device)
        if x.dim() == 0 or x.shape[0] != order.numel():
            raise MPUError(f"{name}: has {tuple(x.shape)}, but the config implies {order.numel()} fused rows")
        x = self._row_transform(t, rule.rows, x.index_select(0, order), inverse, name)
        return x.index_select(0, torch.argsort(order))

    def _unit_params(self, t: LayerTransform, role: UnitRole):
        """(permutation, scales) of the FFN a unit role belongs to."""
        if role.key == "ffn":
            return t.ffn_perm, t.ffn_scale
        return t.units[role.key]

    def _row_transform(self, t: LayerTransform, roles: tuple[Role, ...], x, inverse: bool, name: str):
        """Apply the row roles to consecutive row slices of x (one slice unless the projection is fused)."""
        if not roles:
            return x
        expected = sum(role.size for role in roles)
        if x.dim() == 0 or x.shape[0] != expected:
            labels = "+".join(role.label for role in roles)
            raise MPUError(f"{name}: has {tuple(x.shape)}, but the config implies {expected} rows ({labels})")
        if len(roles) == 1:
            return self._role_rows(t, roles[0], x, inverse)
        pieces = torch.split(x, [role.size for role in roles], dim=0)
        return torch.cat([self._role_rows(t, role, piece, inverse) for role, piece in zip(roles, pieces)], dim=0)

    def _col_transform(self, t: LayerTransform, role: Role | None, x, inverse: bool, name: str):
        """A column transform W -> W C: the row transform C^T W^T of the transpose, computed on the
        columns directly (see maths.head_transform)."""
        if role is None:
            return x
        if x.dim() != 2:
            raise MPUError(f"{name}: a column transform needs a matrix, got shape {tuple(x.shape)}")
        if x.shape[1] != role.size:
            raise MPUError(f"{name}: has {tuple(x.shape)}, but the config implies {role.size} columns ({role.label})")
        if isinstance(role, UnitRole):
            perm, scale = self._unit_params(t, role)
            return maths.unit_transform(x, perm, scale, role.power, inverse, columns=True)
        g = self.geometry
        mats = {"qk": t.qk, "vo": t.vo, None: None}[role.matrix]
        return maths.head_transform(x, g.n_kv, role.group, g.head_dim, mats, t.kv_perm, inverse, columns=True)

    def _role_rows(self, t: LayerTransform, role: Role, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        if isinstance(role, UnitRole):
            perm, scale = self._unit_params(t, role)
            return maths.unit_transform(x, perm, scale, role.power, inverse)
        g = self.geometry
        mats = {"qk": t.qk, "vo": t.vo, None: None}[role.matrix]
        # O columns take vo[j]^T; as a row transform of O^T that is vo[j] again, the same as V rows.
        return maths.head_transform(x, g.n_kv, role.group, g.head_dim, mats, t.kv_perm, inverse)


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for float32 and lower precisions (orthogonal maps and permutations keep float32
    round-off near 1e-7 relative, and the server streams whole models through here), float64 for
    float64 inputs."""
    return F64 if tensor.dtype == F64 else torch.float32
