"""What a decoder parameter's rows and columns hold, as the reparameterisation sees them.

- ``Geometry``: the attention and FFN shapes read from a model config (heads, KV heads, head and
  rotary dims, FFN width), validated;
- ``HeadRole`` / ``UnitRole``: a run of rows laid out as attention heads or as FFN units;
- ``Rule``: how one parameter transforms (row segments, a column role, storage quirks such as
  GPT-2's transposed Conv1D weights or GPT-NeoX's per-head interleaved fused rows).

The adapters (``decoder.py`` and the families built on it) map every parameter name to a ``Rule``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
import transformers

from mpu.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Geometry:
    """Shapes read from the config, with HF's own defaults."""

    n_heads: int
    n_kv: int
    head_dim: int
    rotary_dim: int
    intermediate: int

    @property
    def group(self) -> int:
        """Query heads per KV head (HF repeat_kv: query head i reads KV head i // group)."""
        return self.n_heads // self.n_kv

    @classmethod
    def from_config(
        cls,
        config: transformers.PretrainedConfig,
        partial_rotary: bool,
        *,
        rope: bool = True,
        n_kv: int | None = None,
        intermediate: int | None = None,
    ) -> "Geometry":
        """``rope=False``: no rotary embedding (learned positions, ALiBi): rotary_dim is 0 and the whole
        head is free for any orthogonal map. ``n_kv``/``intermediate`` override the config's names
        (``num_key_value_heads``, ``intermediate_size``) for families that call them differently."""
        n_heads = int(config.num_attention_heads)
        n_kv = int(n_kv or getattr(config, "num_key_value_heads", None) or n_heads)
        # Always the explicit head_dim when there is one (Gemma: hidden / heads would be wrong).
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
        if not rope:
            rotary_dim = 0
        else:
            rotary_dim = _rotary_dim(config, head_dim) if partial_rotary else head_dim
        intermediate = int(intermediate if intermediate is not None else config.intermediate_size)
        geometry = cls(n_heads, n_kv, head_dim, rotary_dim, intermediate)
        geometry._validate(config, rope)
        return geometry

    def _validate(self, config, rope: bool = True) -> None:
        problems = []
        if self.n_kv < 1 or self.n_heads % self.n_kv:
            problems.append(f"num_attention_heads={self.n_heads} is not a multiple of num_key_value_heads={self.n_kv}")
        if self.rotary_dim % 2 or not (0 if not rope else 1) <= self.rotary_dim <= self.head_dim:
            problems.append(f"rotary dim {self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if problems:
            raise UnsupportedArchitectureError(f"{config.model_type}: cannot reparameterise: " + "; ".join(problems))


def interleaved_order(n_heads: int, head_dim: int, parts: int) -> torch.Tensor:
    """row_order for fused rows stored per head as [part 0, part 1, ...] (GPT-NeoX, Falcon MHA).

    Stored row ``(h * parts + p) * head_dim + a`` is row ``p * H * head_dim + h * head_dim + a`` of the
    segment-major layout [part 0 of all heads | part 1 of all heads | ...].
    """
    stored = torch.arange(n_heads * parts * head_dim).reshape(n_heads, parts, head_dim)
    return stored.permute(1, 0, 2).reshape(-1)


def _rotary_dim(config: transformers.PretrainedConfig, head_dim: int) -> int:
    """Dims rotated by RoPE, as HF computes them: cos.shape[-1] = 2 * len(arange(0, dim, 2))."""
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    dim = int(head_dim * (1.0 if factor is None else factor))
    return 2 * ((dim + 1) // 2)


@dataclass(frozen=True)
class HeadRole:
    """Rows laid out as attention heads, (KV group, query head in group, dim)."""

    label: str
    group: int  # heads per KV group in this tensor: H_q/H_kv for q and o, 1 for k and v
    matrix: str | None  # which LayerTransform matrix acts on the dims: "qk", "vo", or None (permute only)
    size: int


@dataclass(frozen=True)
class UnitRole:
    """Rows laid out as FFN intermediate units."""

    label: str
    power: int  # unit i is scaled by s_i ** power: gate 0, up +1, down (columns) -1
    size: int
    # Which FFN's permutation/scales act on these units: "ffn" (LayerTransform.ffn_perm/ffn_scale) or a
    # key of the transform's ``units`` dict (mixture-of-experts: one FFN per expert, see moe.py).
    key: str = "ffn"


Role = Union[HeadRole, UnitRole]


@dataclass(frozen=True)
class Rule:
    """How one parameter transforms: row segments (concatenated along dim 0) and a column role.

    ``transposed``: the tensor is stored as (in, out) (GPT-2's Conv1D): rows and columns above refer
    to the (out, in) matrix ``tensor.T``. ``row_order``: the stored rows are a permutation of the
    concatenated segments (fused projections interleaved per head, e.g. GPT-NeoX [q0 k0 v0 q1 ...]):
    segment-major row r is stored row ``row_order[r]``.
    """

    rows: tuple[Role, ...] = ()
    cols: Role | None = None
    transposed: bool = False
    row_order: torch.Tensor | None = field(default=None, compare=False)

    @property
    def is_identity(self) -> bool:
        """True when the rule transforms neither the rows nor the columns of its tensor."""
        return not self.rows and self.cols is None
