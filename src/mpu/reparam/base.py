"""The reparameterisation interface, the architecture registry and the identity adapter.

An adapter knows one architecture family's parameter layout. The server uses it tensor by tensor:

    adapter = get_adapter(config, options)
    adapter.check_names(all_names)                 # refuse anything it would leave half-transformed
    t = adapter.sample(layer, generator)           # one secret draw per (layer, copy)
    published = adapter.apply(t, name, tensor)     # T, one tensor at a time
    delta = adapter.apply(t, name, delta_published, inverse=True)   # T^-1 on an update

T is linear in the weights, so the same inverse call maps weight updates back.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import torch
import transformers

from mpu.errors import UnsupportedArchitectureError
from mpu.registry import Registry
from mpu.reparam.options import ReparamOptions

# model_type -> adapter class (called as cls(config, options)). Families register in llama.py, phi3.py.
ARCHITECTURES: Registry[type["Adapter"]] = Registry("architecture")

_BLOCK_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True, eq=False)
class LayerTransform:
    """What ``Adapter.sample`` drew for one layer of one copy. ``None`` means "not transformed".

    All tensors are on the CPU; matrices are float64 and orthogonal.
    """

    layer: int
    # (H_kv, d_h, d_h): rows of k_proj for KV head j, and of q_proj for each query head reading it,
    # are multiplied by qk[j].
    qk: torch.Tensor | None = None
    # (H_kv, d_h, d_h): rows of v_proj for KV head j are multiplied by vo[j]; the o_proj columns of
    # each query head in group j by vo[j]^T.
    vo: torch.Tensor | None = None
    # (H_kv,): new KV group j' is old KV group kv_perm[j'] (with its query heads and O columns).
    kv_perm: torch.Tensor | None = None
    # (intermediate,): new FFN unit i' is old unit ffn_perm[i'].
    ffn_perm: torch.Tensor | None = None
    # (intermediate,): old unit i has its up row scaled by ffn_scale[i] and its down column by 1/ffn_scale[i].
    ffn_scale: torch.Tensor | None = None

    def is_identity(self) -> bool:
        return all(getattr(self, f) is None for f in ("qk", "vo", "kv_perm", "ffn_perm", "ffn_scale"))


class Adapter(ABC):
    """One architecture family's secret, function-preserving reparameterisation."""

    def __init__(self, config: transformers.PretrainedConfig, options: ReparamOptions):
        self.config = config
        self.options = options
        self.num_layers = int(config.num_hidden_layers)

    @abstractmethod
    def describe(self) -> list[str]:
        """Human-readable list of the transforms applied with these options (for reports and logs)."""

    def layer_of(self, name: str) -> int | None:
        """Block index of a ``model.layers.<l>.<...>`` name, else None."""
        match = _BLOCK_NAME.match(name)
        return int(match.group(1)) if match else None

    @abstractmethod
    def check_names(self, names: Iterable[str]) -> None:
        """Raise UnsupportedArchitectureError listing every parameter name this adapter does not understand."""

    @abstractmethod
    def sample(self, layer: int, generator: torch.Generator) -> LayerTransform:
        """Draw one layer's transform using only ``generator`` (deterministic given its seed)."""

    @abstractmethod
    def apply(
        self, transform: LayerTransform, name: str, tensor: torch.Tensor, *, inverse: bool = False
    ) -> torch.Tensor:
        """T (or T^-1) on one tensor of the transform's layer; same shape, dtype and device."""

    @abstractmethod
    def apply_lora(
        self,
        transform: LayerTransform,
        name: str,
        lora_B: torch.Tensor,
        lora_A: torch.Tensor,
        *,
        inverse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B', A') with B' @ A' == apply(transform, name, B @ A, inverse=inverse)."""

    # Shared argument checks ------------------------------------------------------------------

    def _check_sample_args(self, layer: int, generator: torch.Generator) -> None:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("sample() needs a CPU torch.Generator, so that draws are reproducible anywhere")


class IdentityAdapter(Adapter):
    """``--no-reparam``: every tensor is published as it is. Works for any architecture."""

    def describe(self) -> list[str]:
        return ["none: reparameterisation disabled (--no-reparam); copies keep the model's own coordinates"]

    def check_names(self, names: Iterable[str]) -> None:
        # Nothing is transformed, so nothing can be left half-transformed: every name is acceptable.
        return None

    def sample(self, layer: int, generator: torch.Generator) -> LayerTransform:
        self._check_sample_args(layer, generator)
        return LayerTransform(layer=layer)

    def apply(
        self, transform: LayerTransform, name: str, tensor: torch.Tensor, *, inverse: bool = False
    ) -> torch.Tensor:
        return tensor

    def apply_lora(
        self,
        transform: LayerTransform,
        name: str,
        lora_B: torch.Tensor,
        lora_A: torch.Tensor,
        *,
        inverse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return lora_B, lora_A


def get_adapter(config: transformers.PretrainedConfig, options: ReparamOptions) -> Adapter:
    """The adapter for ``config.model_type``; IdentityAdapter when ``options.enabled`` is False."""
    if not isinstance(options, ReparamOptions):
        raise TypeError(f"options must be ReparamOptions, got {type(options).__name__}")
    if not options.enabled:
        return IdentityAdapter(config, options)
    model_type = getattr(config, "model_type", None) or "(none)"
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"no reparameterisation adapter for model_type {model_type!r}; supported: "
            f"{', '.join(ARCHITECTURES.names())}. Use --no-reparam to publish copies without one "
            f"(noise only, weaker privacy)."
        )
    return ARCHITECTURES.get(model_type)(config, options)
