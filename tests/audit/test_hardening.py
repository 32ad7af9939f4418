"""Every hardening option keeps the function (kappa = 0: same logits) and the round trip
(publish -> stand-in client -> aggregate)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from mpu.checkpoint import CheckpointReader
from mpu.server.aggregate import aggregate
from mpu.server.config import PRESETS, ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from tests.server.stand_in_client import write_returns

OPTIONS = {
    "secret-alpha": {"alpha_mode": "secret"},
    "vo-haar": {"reparam": {"vo": "haar"}},
    "kv-permutation": {"reparam": {"kv_permutation": True}},
    "ffn-scaling": {"reparam": {"ffn_scaling": True}},
    "noise-scope-all": {"noise_scope": "all"},
    "independent-noise": {"independent_noise": 1.0},
    **{f"preset-{name}": preset for name, preset in PRESETS.items()},
}


def make_config(option: str, **settings) -> ServerConfig:
    return ServerConfig(**{**copy.deepcopy(OPTIONS[option]), **settings})


def load(model_dir):
    reader = CheckpointReader(model_dir)
    return {name: reader.get(name).to(torch.float32) for name in reader.names()}


@pytest.fixture(scope="module")
def tokens(tiny_tokenizer):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tiny_tokenizer), (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    ids[1, :4] = tiny_tokenizer.pad_token_id
    return ids, mask


@pytest.mark.parametrize("option", list(OPTIONS))
def test_option_preserves_the_function(tmp_path, tiny_model_dir, tokens, option):
    config = make_config(option, copies=2, kappa=0.0, fixed_seed=11)
    init_server(tmp_path / "server", str(tiny_model_dir), None, config, progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    ids, mask = tokens
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(input_ids=ids, attention_mask=mask).logits
        original = load(tiny_model_dir)
        for k in (1, 2):
            copy_dir = tmp_path / "outbox" / f"copy-{k}"
            got = AutoModelForCausalLM.from_pretrained(copy_dir, dtype=torch.float32)(input_ids=ids, attention_mask=mask).logits
            assert float((got - expected)[mask.bool()].abs().max()) < 1e-4
            if config.reparam.enabled:  # and the copy is really reparameterised
                assert not torch.equal(load(copy_dir)["model.layers.0.mlp.up_proj.weight"], original["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("option", list(OPTIONS))
def test_option_round_trip(tmp_path, tiny_model_dir, option):
    # Delta' = -c w' is linear, so the server's aggregate is -c (theta + sum_k w_k eps_k): exact for
    # zero-sum noise, and off by c * tau * sigma * (a combination of independent draws) with tau > 0.
    c, kappa = 0.1, 0.05
    config = make_config(option, copies=3, kappa=kappa, fixed_seed=13)
    init_server(tmp_path / "server", str(tiny_model_dir), None, config, progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    theta = load(tiny_model_dir)
    copy1 = load(tmp_path / "outbox" / "copy-1")
    if config.noise_scope == "all":
        assert not torch.equal(copy1["lm_head.weight"], theta["lm_head.weight"])
    write_returns(tmp_path / "outbox", tmp_path / "returns", lambda name, w: -c * w)

    report = aggregate(tmp_path / "server", tmp_path / "returns", progress=False)

    after = load(report.model_dir)
    error = sum(float((after[n] - (1 - c) * theta[n]).square().sum()) for n in theta) ** 0.5
    norm = sum(float(theta[n].square().sum()) for n in theta) ** 0.5
    if config.independent_noise == 0:
        assert error / norm < 1e-6
    else:
        # per element about c * tau * sigma * sqrt(sum w_k^2) <= c * tau * kappa * RMS(theta block)
        assert 0 < error / norm < c * config.independent_noise * kappa
