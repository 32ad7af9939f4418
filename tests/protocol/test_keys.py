"""RoundKeys: one stream per (purpose, copy, block or tensor), reproducible from the secret, and the
very bytes the key schedule drew before it moved into ``mpu.protocol``."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


# The moments of each copy's tensors and of the aggregated model for a fixed-seed round (tests/protocol/golden.py).
# To rewrite the file after an intended change of the key schedule (say why in the commit):
# MPU_WRITE_KEYS_GOLDEN=1 pytest -n 0 tests/protocol/test_keys.py
GOLDEN = Path(__file__).parent / "golden_round.json"
SETTINGS = {
    "secret-hardened": {},  # secret alphas, tau = 0.5, Haar V/O, KV permutation, FFN scaling, blocks only
    "public-paper-all": {"alpha_mode": "public", "noise_scope": "all", "reparam": {"vo": "plane"}, "independent_noise": 0.0},
}


@pytest.mark.parametrize("label", sorted(SETTINGS))
def test_publish_and_aggregate_draw_the_same_numbers_as_before(tmp_path, label):
    got = run_round(tmp_path, **SETTINGS[label])
    if os.environ.get("MPU_WRITE_KEYS_GOLDEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[label] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())[label]
    assert sorted(got) == sorted(expected)
    for model, tensors in expected.items():
        assert sorted(got[model]) == sorted(tensors), model
        for name, moments in tensors.items():
            assert got[model][name] == pytest.approx(moments, rel=1e-5, abs=1e-9), (model, name)
