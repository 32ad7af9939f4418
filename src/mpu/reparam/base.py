"""The reparameterisation interface, the architecture registry, the block layout and the identity adapter.

An adapter knows one architecture family's parameter layout. The server uses it tensor by tensor:

    adapter = get_adapter(config, options)
    adapter.check_names(all_names)                 # refuse anything it would leave half-transformed
    groups = adapter.block_groups(all_names)       # [(block l or None, names)]; refuses unplaceable names
    t = adapter.sample(layer, generator)           # one secret draw per (layer, copy)
    published = adapter.apply(t, name, tensor)     # T, one tensor at a time
    delta = adapter.apply(t, name, delta_published, inverse=True)   # T^-1 on an update

T is linear in the weights, so the same inverse call maps weight updates back.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import torch
import transformers
from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

from mpu.errors import UnsupportedArchitectureError
from mpu.registry import Registry
from mpu.reparam.options import ReparamConfig

# model_type -> adapter class (called as cls(config, options)). Families register in llama.py, phi3.py.
ARCHITECTURES: Registry[type["Adapter"]] = Registry("architecture")



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
        """True when no part is drawn (every field None): T is the identity on this layer."""
        return all(getattr(self, f) is None for f in ("qk", "vo", "kv_perm", "ffn_perm", "ffn_scale"))


class BlockLayout:
    """Which transformer block each checkpoint tensor belongs to, read from the model, not from its names.

    The model is built from ``config`` on the meta device (no memory, no weights); its blocks are
    the ModuleList of decoder layers: ``num_hidden_layers`` long, its members of a class in
    ``_no_split_modules`` (GPT-2 and Falcon ``transformer.h``, GPT-NeoX ``gpt_neox.layers``, OPT
    ``model.decoder.layers``, Llama-style ``model.layers``, nested ``model.language_model.layers``).
    A checkpoint name is first mapped to the loaded model's name through transformers' own
    checkpoint conversion (``get_model_conversion_mapping``: Pythia's ``embed_out`` is ``lm_head``,
    MoE experts ``...experts.3.w1.weight`` are fused into ``...experts.gate_up_proj``), then placed:
    inside block l when that name starts with ``<blocks>.<l>.``; outside the blocks when it is one of
    the model's own parameters or buffers (embeddings, positions, final norm, head); otherwise
    nowhere, and ``check_placed`` refuses it.

    Raises UnsupportedArchitectureError (naming ``config.model_type``) when transformers cannot
    build the model from the config or no unique block list is found.
    """

    def __init__(self, config: transformers.PretrainedConfig):
        self.model_type = getattr(config, "model_type", None) or "(none)"
        model = _meta_model(config)
        self.prefix, self.num_blocks = _find_blocks(model, config, self.model_type)
        self._block = re.compile(rf"^{re.escape(self.prefix)}\.(\d+)\.")
        try:
            self._renamings, self._converters, self._base_prefix = checkpoint_conversion(model)
        except Exception as err:  # a conversion table transformers itself cannot build for this model
            raise UnsupportedArchitectureError(
                f"{self.model_type}: transformers cannot give the checkpoint-name conversion of this model "
                f"({type(err).__name__}: {err})"
            ) from None
        self._own = {name: True for name in model.state_dict()}
        self._own.update({name: True for name, _ in model.named_buffers()})
        self._model_names: dict[str, str] = {}

    def model_name(self, name: str) -> str:
        """The name the loaded model gives checkpoint tensor ``name`` (itself when nothing renames it)."""
        if name not in self._model_names:
            renamed, _ = rename_source_key(name, self._renamings, self._converters, self._base_prefix, self._own)
            self._model_names[name] = renamed
        return self._model_names[name]

    def layer_of(self, name: str) -> int | None:
        """Block index of checkpoint tensor ``name``, None outside the blocks. A name without the
        base-model prefix (old GPT-2 files: ``h.0.attn.bias``) is read with it."""
        renamed = self.model_name(name)
        match = self._block.match(renamed)
        if match is None and self._base_prefix and renamed not in self._own:
            match = self._block.match(f"{self._base_prefix}.{renamed}")
        return int(match.group(1)) if match else None

    def is_placed(self, name: str) -> bool:
        """True inside a block (index below the block count) or for a known tensor outside them."""
        layer = self.layer_of(name)
        if layer is not None:
            return layer < self.num_blocks
        return self.model_name(name) in self._own

    def check_placed(self, names: Iterable[str]) -> None:
        """Raise UnsupportedArchitectureError naming every tensor that is in no block and not a known
        tensor of the model: publishing it could leak it without noise."""
        names = _name_list(names)
        for name in sorted(names, key=dot_natural_key):  # load order: some renamings are stateful
            self.model_name(name)
        unplaced = [name for name in names if not self.is_placed(name)]
        if unplaced:
            raise UnsupportedArchitectureError(
                f"{self.model_type}: cannot place {len(unplaced)} tensor(s) of the checkpoint in the model "
                f"(blocks are {self.prefix}.0..{self.num_blocks - 1}): {', '.join(unplaced[:20])}"
                f"{' ...' if len(unplaced) > 20 else ''}. Refusing to publish tensors whose noise scope is unknown."
            )

    def groups(self, names: Iterable[str]) -> list[tuple[int | None, list[str]]]:
        """Names grouped by block, in block order; tensors outside the blocks follow, one group each
        (the unit of streaming and of the noise scale). Refuses unplaceable names (``check_placed``)."""
        names = _name_list(names)
        self.check_placed(names)
        blocks: dict[int, list[str]] = {}
        outside: list[str] = []
        for name in names:
            layer = self.layer_of(name)
            if layer is None:
                outside.append(name)
            else:
                blocks.setdefault(layer, []).append(name)
        ordered: list[tuple[int | None, list[str]]] = [(layer, sorted(blocks[layer])) for layer in sorted(blocks)]
        ordered.extend((None, [name]) for name in sorted(outside))
        return ordered


def _name_list(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):
        raise TypeError("expected an iterable of tensor names, not one string")
    return list(names)


def checkpoint_conversion(model: torch.nn.Module) -> tuple[list, list, str | None]:
    """How transformers loads checkpoint names into ``model`` (``get_model_conversion_mapping``): its
    renamings (Pythia's ``embed_out`` is ``lm_head``), its converters (MoE per-expert tensors fused
    into one) and the base-model prefix, the arguments ``rename_source_key`` takes. Raises what
    transformers raises for a model it has no table for."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    conversions = get_model_conversion_mapping(model)
    return ([c for c in conversions if isinstance(c, WeightRenaming)], [c for c in conversions if isinstance(c, WeightConverter)],
            getattr(model, "base_model_prefix", None) or None)


def _meta_model(config: transformers.PretrainedConfig) -> torch.nn.Module:
    """The causal LM of ``config`` on the meta device: its module tree and names, no weights."""
    model_type = getattr(config, "model_type", None) or "(none)"
    try:
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as err:  # transformers raises ValueError, KeyError, TypeError, ... for unknown configs
        raise UnsupportedArchitectureError(
            f"model family {model_type!r}: transformers {transformers.__version__} cannot build it from its "
            f"config ({type(err).__name__}: {str(err)[:200]}), so its transformer blocks are unknown"
        ) from None


def _find_blocks(model: torch.nn.Module, config: transformers.PretrainedConfig, model_type: str) -> tuple[str, int]:
    """(module path of the decoder's block list, its length)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    count = getattr(text_config, "num_hidden_layers", None)
    if not isinstance(count, int) or count < 1:
        raise UnsupportedArchitectureError(f"model family {model_type!r}: its config gives no num_hidden_layers")
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList)]
    candidates = [(name, module) for name, module in lists if len(module) == count]
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    decoder_blocks = [(name, m) for name, m in candidates if no_split and all(type(b).__name__ in no_split for b in m)]
    candidates = decoder_blocks or candidates
    # The outermost lists only (an expert list inside a block is not a block list).
    candidates = [(name, m) for name, m in candidates if not any(name.startswith(other + ".") for other, _ in candidates)]
    if len(candidates) > 1:
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        inside = [(name, m) for name, m in candidates if decoder is not None and any(m is sub for sub in decoder.modules())]
        candidates = inside or candidates
    if len(candidates) != 1:
        found = ", ".join(f"{name} ({len(module)})" for name, module in lists) or "none"
        raise UnsupportedArchitectureError(
            f"model family {model_type!r}: cannot tell its transformer blocks: "
            f"{len(candidates)} module lists of num_hidden_layers={count} entries (lists found: {found})"
        )
    return candidates[0][0], count


class Adapter(ABC):
    """One architecture family's secret, function-preserving reparameterisation."""

    def __init__(self, config: transformers.PretrainedConfig, options: ReparamConfig):
        self.config = config
        self.options = options
        # A nested language model (VLMs) keeps its depth in the text config.
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.num_layers = int(text_config.num_hidden_layers)

    @abstractmethod
    def describe(self) -> list[str]:
        """Human-readable list of the transforms applied with these options (for reports and logs)."""

    @cached_property
    def layout(self) -> BlockLayout:
        """Where each tensor sits in the model (built on first use from the config on the meta device)."""
        return BlockLayout(self.config)

    def layer_of(self, name: str) -> int | None:
        """Block index of checkpoint tensor ``name``, else None. Read from the model's module tree
        (``BlockLayout``); a family may override it, but ``block_groups`` refuses disagreements."""
        return self.layout.layer_of(name)

    def block_groups(self, names: Iterable[str]) -> list[tuple[int | None, list[str]]]:
        """The checkpoint's names grouped by block (``BlockLayout.groups``): the server draws one
        transform and one noise scale per block group, and noise reaches exactly these groups.

        Raises UnsupportedArchitectureError for a tensor that is in no block and no known tensor
        of the model, or that this adapter places in another block than the model does.
        """
        groups = self.layout.groups(names)
        wrong = [
            f"{name} (adapter: {self.layer_of(name)}, model: {layer})"
            for layer, group in groups
            for name in group
            if self.layer_of(name) is not None and self.layer_of(name) != layer
        ]
        if wrong:
            raise UnsupportedArchitectureError(
                f"{self.config.model_type}: the adapter and the model place tensors in different blocks: {', '.join(wrong[:10])}"
            )
        return groups

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
    """``--no-reparam``: every tensor is published as it is, for any supported architecture."""

    def describe(self) -> list[str]:
        """One line: nothing is transformed."""
        return ["none: reparameterisation disabled (--no-reparam); copies keep the model's own coordinates"]

    def check_names(self, names: Iterable[str]) -> None:
        """Nothing is transformed, so nothing can be left half-transformed; but every tensor must be
        placed in a block or be a known tensor outside them, so that the noise scope covers it."""
        self.layout.check_placed(names)

    def sample(self, layer: int, generator: torch.Generator) -> LayerTransform:
        """The identity transform of ``layer`` (draws nothing from ``generator``). Raises ValueError for a
        layer outside [0, num_layers) or a generator that is not a CPU ``torch.Generator``."""
        self._check_sample_args(layer, generator)
        return LayerTransform(layer=layer)

    def apply(
        self, transform: LayerTransform, name: str, tensor: torch.Tensor, *, inverse: bool = False
    ) -> torch.Tensor:
        """``tensor`` itself, unchanged (T = T⁻¹ = identity)."""
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
        """``(lora_B, lora_A)`` themselves, unchanged."""
        return lora_B, lora_A


def get_adapter(config: transformers.PretrainedConfig, options: ReparamConfig) -> Adapter:
    """The adapter for ``config.model_type``; IdentityAdapter when ``options.enabled`` is False. Raises
    UnsupportedArchitectureError for a model_type outside ``ARCHITECTURES`` either way (clients refuse it)."""
    if not isinstance(options, ReparamConfig):
        raise TypeError(f"options must be ReparamConfig, got {type(options).__name__}")
    model_type = getattr(config, "model_type", None) or "(none)"
    if model_type not in ARCHITECTURES:
        # --no-reparam included: a client refuses copies of any other architecture, because some build
        # memory from their config alone (GPT-J's position tables), which no weight check sees
        raise UnsupportedArchitectureError(
            f"no adapter for model_type {model_type!r}; supported: {', '.join(ARCHITECTURES.names())}. "
            "Clients refuse copies of other architectures, with or without --no-reparam."
        )
    if not options.enabled:
        return IdentityAdapter(config, options)
    return ARCHITECTURES.get(model_type)(config, options)
