"""User-facing switches for the secret reparameterisation T_k."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

VO_MODES = ("plane", "haar", "none")


def preset_default(value) -> str:
    """What leaving out the flag of a setting that a ``--privacy`` preset may fix means, shown as its
    help's "(default: ...)": the preset's value, else the field's own default ``value`` (on/off for a switch)."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return f"the --privacy preset's value; {value} unless the preset sets it"


def _setting(default, metadata: dict):
    """A field whose flag, left out, takes the --privacy preset's value (else ``default``)."""
    return field(default=default, metadata={**metadata, "flag_default": preset_default(default)})


@dataclass(frozen=True)
class ReparamConfig:
    """Which function-preserving transforms a copy gets. Every field has its help text in ``metadata``,
    and its ``mpu server init`` / ``mpu run`` flag is generated from the field (``mpu.flags``).

    The defaults match the paper (RoPE-plane rotations on Q/K, the same rotations on V/O, an FFN
    permutation); the other switches make a copy harder to align with the original at no cost in
    function.
    """

    enabled: bool = _setting(
        default=True,
        metadata={"help": "Reparameterise the copies; --no-reparam publishes them in the model's own coordinates "
                          "(init warns, and the privacy report says so).", "flag": "--reparam"},
    )
    qk_rotation: bool = _setting(
        default=True,
        metadata={"help": "Rotate the RoPE planes of the Q/K rows: one random rotation per KV head, shared "
                          "by the query heads that read it (GQA)."},
    )
    vo: str = _setting(
        default="plane",
        metadata={"help": "V rows / O columns: 'plane' = plane rotations (the same as that KV group's QK "
                          "rotation where QK is rotated freely); 'haar' = an independent Haar-random "
                          "orthogonal d_h x d_h per KV head; 'none' = leave V/O alone.", "choices": VO_MODES},
    )
    kv_permutation: bool = _setting(
        default=False,
        metadata={"help": "Permute whole KV groups together with their query heads and O column blocks."},
    )
    ffn_permutation: bool = _setting(
        default=True,
        metadata={"help": "Permute the FFN intermediate units: rows of gate and up (and their biases), "
                          "columns of down."},
    )
    ffn_scaling: bool = _setting(
        default=False,
        metadata={"help": "Also scale up-row i by s_i and down-column i by 1/s_i (the gated product is "
                          "linear in up)."},
    )
    ffn_scale_range: float = _setting(
        default=2.0,
        metadata={"help": "With ffn_scaling, s_i = exp(U(-ln r, ln r)) for this r; must be >= 1.", "metavar": "R"},
    )

    def __post_init__(self) -> None:
        for name in ("enabled", "qk_rotation", "kv_permutation", "ffn_permutation", "ffn_scaling"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"ReparamConfig.{name} must be True or False, got {value!r}")
        if self.vo not in VO_MODES:
            raise ValueError(f"ReparamConfig.vo must be one of {', '.join(VO_MODES)}; got {self.vo!r}")
        r = self.ffn_scale_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 1:
            raise ValueError(f"ReparamConfig.ffn_scale_range must be a finite number >= 1, got {r!r}")


# The name before settings dataclasses were all called *Config (one suffix for one concept).
ReparamOptions = ReparamConfig
