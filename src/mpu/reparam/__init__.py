"""Secret, function-preserving reparameterisation T_k of a causal LM.

One adapter per architecture family, looked up by ``config.model_type``:
``get_adapter(config, ReparamOptions())``. See ``base.py`` for how the server uses it.
"""

from mpu.reparam.base import ARCHITECTURES, Adapter, IdentityAdapter, LayerTransform, get_adapter
from mpu.reparam.options import VO_MODES, ReparamOptions

# Importing the family modules registers their adapters.
from mpu.reparam import llama as _llama  # noqa: E402,F401
from mpu.reparam import phi3 as _phi3  # noqa: E402,F401
from mpu.reparam import gpt2 as _gpt2  # noqa: E402,F401
from mpu.reparam import gpt_neox as _gpt_neox  # noqa: E402,F401
from mpu.reparam import phi as _phi  # noqa: E402,F401
from mpu.reparam import opt as _opt  # noqa: E402,F401
from mpu.reparam import falcon as _falcon  # noqa: E402,F401
from mpu.reparam import stablelm as _stablelm  # noqa: E402,F401
from mpu.reparam import granite as _granite  # noqa: E402,F401
from mpu.reparam import moe as _moe  # noqa: E402,F401

__all__ = [
    "ARCHITECTURES",
    "Adapter",
    "IdentityAdapter",
    "LayerTransform",
    "ReparamOptions",
    "VO_MODES",
    "get_adapter",
]
