"""Secret, function-preserving reparameterisation T_k of a causal LM.

One adapter per architecture family, looked up by ``config.model_type``:
``get_adapter(config, ReparamConfig())``. See ``base.py`` for how the server uses it.

``ReparamConfig`` (the user-facing switches) is imported at once and needs neither torch nor
transformers, so the command line builds its flags from it and still answers ``--help`` fast. The
adapters need torch: they are imported, and the architecture families registered, on the first use of
any other name of this package (``get_adapter``, ``ARCHITECTURES``, ``Adapter``, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

from mpu.reparam.options import VO_MODES, ReparamConfig, ReparamOptions

_BASE_NAMES = ("ARCHITECTURES", "Adapter", "IdentityAdapter", "LayerTransform", "get_adapter")
# Importing a family module registers its adapter.
_FAMILIES = ("llama", "phi3", "gpt2", "gpt_neox", "phi", "opt", "falcon", "stablelm", "granite", "moe")

__all__ = [
    "ARCHITECTURES",
    "Adapter",
    "IdentityAdapter",
    "LayerTransform",
    "ReparamConfig",
    "ReparamOptions",
    "VO_MODES",
    "get_adapter",
]


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported (with every family registered) on first use."""
    if name not in _BASE_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    base = importlib.import_module("mpu.reparam.base")
    for family in _FAMILIES:
        importlib.import_module(f"mpu.reparam.{family}")
    for public in _BASE_NAMES:
        globals()[public] = getattr(base, public)
    return globals()[name]
