"""The per-round key schedule: every random draw of a round follows from one secret.

Each draw (a block's reparameterisation, a tensor's zero-sum noise, its independent noise, a copy's
secret alpha) gets its own stream, seeded from

    sha256( len|secret, len|purpose, len|name, len|copy )        (each field 4-byte little-endian length-prefixed)

with the purposes ``reparam`` (name ``layer.<l>``), ``noise`` and ``independent-noise`` (name: the
tensor's checkpoint name) and ``alpha`` (empty name). Generation is then order-independent and
streamable, and Post-Process regenerates every transform from the secret instead of storing it.
These strings fix the bytes every existing round secret produces; changing one changes every copy.

Copy ids are 1-based (1..m), as in the manifests and folder names.
"""

from __future__ import annotations

import hashlib

import torch

TRANSFORM = "reparam"
NOISE = "noise"
INDEPENDENT_NOISE = "independent-noise"
ALPHA = "alpha"


def derive(secret: bytes, purpose: str, name: str, copy: int) -> bytes:
    """The 32-byte sha256 key of one (purpose, name, copy) under ``secret``.

    The fields are length-prefixed so that ("ab", "c") and ("a", "bc") stay apart.
    """
    digest = hashlib.sha256()
    for part in (secret, purpose.encode(), name.encode(), str(copy).encode()):
        digest.update(len(part).to_bytes(4, "little") + part)
    return digest.digest()


def generator(secret: bytes, purpose: str, name: str, copy: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with the first 8 bytes (little-endian) of :func:`derive`.

    The same inputs on the same device give the same stream.
    """
    seed = int.from_bytes(derive(secret, purpose, name, copy)[:8], "little")
    return torch.Generator(device=device).manual_seed(seed)


def uniform(secret: bytes, purpose: str, copy: int) -> float:
    """A uniform number in [0, 1) from the key of (purpose, empty name, copy): 53 bits, as a float holds."""
    return (int.from_bytes(derive(secret, purpose, "", copy)[:8], "little") >> 11) / float(1 << 53)


class RoundKeys:
    """What copy k of block l receives in one round, derived from the round's secret.

    ``secret``: the round's secret bytes (16 from a CSPRNG, or derived from a fixed seed). Every method
    takes a 1-based copy id and raises ValueError for an id below 1. Transforms always come from a CPU
    generator, because Post-Process must regenerate them exactly; noise may be drawn on the GPU, since
    nothing needs to regenerate it.
    """

    def __init__(self, secret: bytes):
        if not isinstance(secret, (bytes, bytearray)) or not secret:
            raise ValueError("a round secret is a non-empty bytes value")
        self.secret = bytes(secret)

    def __repr__(self) -> str:  # never print the secret
        return "RoundKeys(<secret>)"

    def transform(self, copy: int, layer: int) -> torch.Generator:
        """The CPU generator the reparameterisation T_copy of transformer block ``layer`` (0-based) is
        sampled from (``Adapter.sample(layer, generator)``)."""
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"block indices are integers from 0, got {layer!r}")
        return generator(self.secret, TRANSFORM, f"layer.{layer}", _copy(copy))

    def noise(self, copy: int, tensor: str, device: str | torch.device = "cpu") -> torch.Generator:
        """The generator of z_copy, the standard normal draw behind the zero-sum noise of tensor
        ``tensor`` (its checkpoint name), on ``device``."""
        return generator(self.secret, NOISE, tensor, _copy(copy), device)

    def noise_generators(self, copies: int, tensor: str, device: str | torch.device = "cpu") -> list[torch.Generator]:
        """:meth:`noise` for copies 1..``copies``, in copy order (what the zero-sum draw needs)."""
        return [self.noise(copy, tensor, device) for copy in range(1, copies + 1)]

    def independent_noise(self, copy: int, tensor: str, device: str | torch.device = "cpu") -> torch.Generator:
        """The generator of copy ``copy``'s own noise on tensor ``tensor``, which no combination of
        copies cancels, on ``device``."""
        return generator(self.secret, INDEPENDENT_NOISE, tensor, _copy(copy), device)

    def alpha_fraction(self, copy: int) -> float:
        """The uniform number u in [0, 1) behind copy ``copy``'s secret alpha."""
        return uniform(self.secret, ALPHA, _copy(copy))

    def alpha(self, copy: int, alpha_max: float) -> float:
        """Copy ``copy``'s secret noise multiplier alpha = 1 + (alpha_max - 1) u, uniform on [1, alpha_max)."""
        return 1.0 + (alpha_max - 1.0) * self.alpha_fraction(copy)


def _copy(copy: int) -> int:
    if not isinstance(copy, int) or isinstance(copy, bool) or copy < 1:
        raise ValueError(f"copy ids are integers from 1, got {copy!r}")
    return copy
