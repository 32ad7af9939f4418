"""All of the server's randomness derives from one 128-bit secret per round.

Each tensor's noise and each layer's transform get their own generator, seeded from a hash of
(round secret, purpose, name, copy). Generation is then order-independent and streamable, and
aggregation regenerates every transform instead of storing it.
"""

from __future__ import annotations

import hashlib
import secrets

import torch

SECRET_BYTES = 16


def new_round_secret(fixed_seed: int | None, round_number: int) -> bytes:
    """A fresh CSPRNG secret, or (fixed-seed mode, for experiments) one derived from the seed."""
    if fixed_seed is None:
        return secrets.token_bytes(SECRET_BYTES)
    return hashlib.sha256(f"mpu-fixed-seed/{fixed_seed}/{round_number}".encode()).digest()[:SECRET_BYTES]


def derive(secret: bytes, purpose: str, name: str, copy: int) -> bytes:
    # Length-prefixing the fields keeps ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.sha256()
    for part in (secret, purpose.encode(), name.encode(), str(copy).encode()):
        digest.update(len(part).to_bytes(4, "little") + part)
    return digest.digest()


def generator(secret: bytes, purpose: str, name: str, copy: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator for one (purpose, name, copy); the same inputs on the same device give the same
    stream. Transforms always use the CPU (aggregation must regenerate them exactly); noise may be
    drawn on the GPU, since nothing needs to regenerate it."""
    seed = int.from_bytes(derive(secret, purpose, name, copy)[:8], "little")
    return torch.Generator(device=device).manual_seed(seed)


def uniform(secret: bytes, purpose: str, copy: int) -> float:
    """A uniform number in [0, 1) from the secret (53 bits, as a float holds)."""
    return (int.from_bytes(derive(secret, purpose, "", copy)[:8], "little") >> 11) / float(1 << 53)
