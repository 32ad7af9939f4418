"""The server's round secrets: one 128-bit secret per round, from a CSPRNG.

Everything random in a round derives from it through :class:`mpu.protocol.RoundKeys`.
"""

from __future__ import annotations

import hashlib
import secrets

SECRET_BYTES = 16


def new_round_secret(fixed_seed: int | None, round_number: int) -> bytes:
    """A fresh CSPRNG secret of ``SECRET_BYTES`` bytes, or (fixed-seed mode, for experiments; NOT
    secret) the first ``SECRET_BYTES`` of sha256("mpu-fixed-seed/<seed>/<round>")."""
    if fixed_seed is None:
        return secrets.token_bytes(SECRET_BYTES)
    return hashlib.sha256(f"mpu-fixed-seed/{fixed_seed}/{round_number}".encode()).digest()[:SECRET_BYTES]
