"""RoundKeys: one stream per (purpose, copy, block or tensor), reproducible from the secret, and the
very bytes the key schedule drew before it moved into ``mpu.protocol``."""

from __future__ import annotations

import pytest
import torch

from mpu.protocol import RoundKeys
from mpu.protocol.keys import derive
from tests.protocol.golden import run_round

SECRET = bytes(range(16))


def draw(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(8, generator=generator)


def test_same_secret_same_draws():
    first, second = RoundKeys(SECRET), RoundKeys(bytes(SECRET))

    assert torch.equal(draw(first.transform(2, 1)), draw(second.transform(2, 1)))
    assert torch.equal(draw(first.noise(3, "w")), draw(second.noise(3, "w")))
    assert torch.equal(draw(first.independent_noise(1, "w")), draw(second.independent_noise(1, "w")))
    assert first.alpha(2, 2.0) == second.alpha(2, 2.0)


def test_every_copy_block_tensor_and_purpose_gets_its_own_stream():
    keys = RoundKeys(SECRET)
    streams = {
        ("transform", 1, 0): keys.transform(1, 0), ("transform", 2, 0): keys.transform(2, 0),
        ("transform", 1, 1): keys.transform(1, 1),
        ("noise", 1, "w"): keys.noise(1, "w"), ("noise", 2, "w"): keys.noise(2, "w"), ("noise", 1, "v"): keys.noise(1, "v"),
        ("independent", 1, "w"): keys.independent_noise(1, "w"), ("independent", 2, "w"): keys.independent_noise(2, "w"),
    }
    draws = {key: tuple(draw(generator).tolist()) for key, generator in streams.items()}

    assert len(set(draws.values())) == len(draws)
    assert RoundKeys(b"another secret!!").alpha_fraction(1) != keys.alpha_fraction(1)
    assert len({keys.alpha_fraction(copy) for copy in (1, 2, 3)}) == 3


def test_the_key_schedule_is_the_documented_hash():
    # sha256 over length-prefixed (secret, purpose, name, copy); the generator seed is its first 8 bytes.
    import hashlib

    digest = hashlib.sha256()
    for part in (SECRET, b"reparam", b"layer.3", b"2"):
        digest.update(len(part).to_bytes(4, "little") + part)
    seed = int.from_bytes(digest.digest()[:8], "little")

    assert derive(SECRET, "reparam", "layer.3", 2) == digest.digest()
    assert torch.equal(draw(RoundKeys(SECRET).transform(2, 3)), draw(torch.Generator().manual_seed(seed)))


def test_noise_generators_are_the_per_copy_noise_streams_in_copy_order():
    keys = RoundKeys(SECRET)

    together = [draw(g) for g in keys.noise_generators(3, "w")]

    assert all(torch.equal(a, draw(keys.noise(k, "w"))) for k, a in enumerate(together, start=1))


def test_alpha_lies_in_one_to_alpha_max():
    keys = RoundKeys(SECRET)

    alphas = [keys.alpha(copy, 3.0) for copy in range(1, 50)]

    assert all(1.0 <= alpha < 3.0 for alpha in alphas)
    assert keys.alpha(1, 1.0) == 1.0
    assert keys.alpha(1, 3.0) == 1.0 + 2.0 * keys.alpha_fraction(1)


@pytest.mark.parametrize("call", [lambda k: k.transform(0, 0), lambda k: k.noise(0, "w"), lambda k: k.independent_noise(-1, "w"),
                                  lambda k: k.alpha(0, 2.0), lambda k: k.transform(True, 0), lambda k: k.transform(1, -1)],
                         ids=["transform-copy-0", "noise-copy-0", "independent-copy-negative", "alpha-copy-0", "bool-copy", "negative-block"])
def test_copy_ids_are_one_based(call):
    with pytest.raises(ValueError, match="from"):
        call(RoundKeys(SECRET))


def test_a_secret_is_bytes_and_never_printed():
    with pytest.raises(ValueError):
        RoundKeys("not bytes")
    assert SECRET.hex() not in repr(RoundKeys(SECRET))


# sha256 of each copy's tensors and of the aggregated model for a fixed-seed round, computed on the
# code before the key schedule moved into mpu.protocol (commit 0c3312f): the bytes drawn are unchanged.
BEFORE = {
    "secret-hardened": {
        "copy-1": "38a23b6a621072bdeac52a9c4627209f0df26f650e933d0699d8247191920936",
        "copy-2": "7d07415566c4b96a7430249632cc5d0209065e81acf570629b05e33680f8dbda",
        "copy-3": "9c448a85d51281d1c86d398937a67684e3191bd76e3a1219042b975bdb948d12",
        "aggregated": "693fa41dd8e1be1cf270fdf011c0452aa98bf78ea84509ac3149861943f31197",
    },
    "public-paper-all": {
        "copy-1": "3f8edfc760fce9df1363726e2605028f99749ba18200cb8dab4c87202c6828ec",
        "copy-2": "aac6da7ffd6b2f66247f5efd8214a7a461f0da6aef70caf25148f7fd42126cde",
        "copy-3": "d38aa33e4fbe81784da344b819c3ce9925527fc0795a7796f710be82d0616c84",
        "aggregated": "b3e69d8392ab9aa25c86e7de6d87aef4897acc0e5482689a66cf01235f43d06f",
    },
}
SETTINGS = {
    "secret-hardened": {},  # secret alphas, tau = 0.5, Haar V/O, KV permutation, FFN scaling, blocks only
    "public-paper-all": {"alpha_mode": "public", "noise_scope": "all", "reparam": {"vo": "plane"}, "independent_noise": 0.0},
}


@pytest.mark.parametrize("label", sorted(BEFORE))
def test_publish_and_aggregate_are_bit_identical_to_before(tmp_path, label):
    assert run_round(tmp_path, **SETTINGS[label]) == BEFORE[label]
