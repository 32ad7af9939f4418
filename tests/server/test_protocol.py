"""Pre-Process and Post-Process together, with a stand-in client (no training)."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import torch
from transformers import AutoModelForCausalLM

from mpu.checkpoint import CheckpointReader
from mpu.errors import InputError
from mpu.reparam import ReparamConfig
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.export import export
from mpu.server.init import init_server
from mpu.server.noise import alphas_for_round
from mpu.server.publish import publish
from mpu.server.workdir import Workdir
from tests.server.stand_in_client import write_returns

HARDENED = ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True)


def load_tensors(model_dir):
    reader = CheckpointReader(model_dir)
    return {name: reader.get(name).to(torch.float32) for name in reader.names()}


@pytest.mark.parametrize("reparam", [ReparamConfig(), HARDENED, ReparamConfig(enabled=False)], ids=["paper", "hardened", "no-reparam"])
def test_linear_client_update_is_recovered_exactly(tmp_path, tiny_model_dir, reparam):
    # Delta' = -c * w' is linear in the weights, so T^-1 maps it to -c (theta + eps_k); the
    # harmonic combination cancels eps exactly: the aggregate equals the clean-model update.
    c = 0.1
    config = ServerConfig(copies=3, kappa=0.1, fixed_seed=3, reparam=reparam, eta=1.0, independent_noise=0.0)
    init_server(tmp_path / "server", str(tiny_model_dir), None, config, progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    write_returns(tmp_path / "outbox", tmp_path / "returns", lambda name, w: -c * w)

    report = aggregate(tmp_path / "server", tmp_path / "returns", progress=False)

    theta = load_tensors(tiny_model_dir)
    after = load_tensors(report.model_dir)
    worst = max(float((after[name] - (1 - c) * theta[name]).abs().max()) for name in theta)
    assert worst < 1e-5


def test_plain_average_does_not_cancel_the_noise(tmp_path, tiny_model_dir):
    # The linear client again, without reparameterisation so that the returns are in theta's coordinates
    # and their plain average can be formed here. With the alphas 1, 1.5, 2 the alpha-scaled zero-sum
    # noise survives the plain average (about kappa * 0.7 / m of the update); only the harmonic weights
    # cancel it, and the server must use them.
    c = 0.1
    config = ServerConfig(copies=3, kappa=0.1, alpha_mode="public", independent_noise=0.0, fixed_seed=3,
                          reparam=ReparamConfig(enabled=False))
    init_server(tmp_path / "server", str(tiny_model_dir), None, config, progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    write_returns(tmp_path / "outbox", tmp_path / "returns", lambda name, w: -c * w)

    report = aggregate(tmp_path / "server", tmp_path / "returns", progress=False)

    theta = load_tensors(tiny_model_dir)
    returns = [load_tensors(tmp_path / "returns" / f"update-{k}") for k in (1, 2, 3)]
    plain = {name: theta[name] + sum(update[name] for update in returns) / 3 for name in theta}
    after = load_tensors(report.model_dir)

    def error(model):  # distance from the clean update (1 - c) theta, as a fraction of that update's norm
        squared = sum(float((model[name] - (1 - c) * theta[name]).square().sum()) for name in theta)
        return math.sqrt(squared) / (c * math.sqrt(sum(float(theta[name].square().sum()) for name in theta)))

    assert error(after) < 1e-4  # the server's harmonic combination: the noise cancels
    assert error(plain) > 1e-2  # equal weights: it does not


def test_noise_scale_follows_the_task_vector(tmp_path, tiny_model_dir, tiny_base_dir):
    config = ServerConfig(copies=2, kappa=0.5, fixed_seed=1)
    init_server(tmp_path / "server", str(tiny_model_dir), str(tiny_base_dir), config, progress=False)
    report = publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    theta, base = load_tensors(tiny_model_dir), load_tensors(tiny_base_dir)
    for block in report.blocks:
        names = [name for name in theta if name.startswith(f"model.layers.{block.group.split('.')[1]}.")]
        diff = torch.cat([(theta[n] - base[n]).flatten() for n in names])
        assert math.isclose(block.sigma, 0.5 * float(diff.square().mean().sqrt()), rel_tol=1e-4)
        # float32 publishing keeps the whole perturbation
        assert math.isclose(block.effective, block.intended, rel_tol=1e-3)
        assert block.changed > 0.99
    assert not report.warnings


def test_bfloat16_publishing_reports_the_noise_lost_to_rounding(tmp_path, tiny_model_dir):
    config = ServerConfig(copies=2, kappa=1e-4, publish_dtype="bfloat16", fixed_seed=1)
    init_server(tmp_path / "server", str(tiny_model_dir), None, config, progress=False)
    report = publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    assert report.blocks and all(block.changed < 0.5 for block in report.blocks)
    assert report.warnings and "bfloat16" in report.warnings[0]
    copy = CheckpointReader(tmp_path / "outbox" / "copy-1")
    assert copy.dtype(copy.names()[0]) == torch.bfloat16


def test_copies_without_noise_generate_like_the_original(tmp_path, tiny_model_dir, tiny_tokenizer):
    config = ServerConfig(copies=2, kappa=0.0, reparam=HARDENED)
    init_server(tmp_path / "server", str(tiny_model_dir), None, config, progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt = tiny_tokenizer(["Where was Ana Lind born?"], return_tensors="pt")
    expected = original.generate(**prompt, max_new_tokens=12, do_sample=False)
    for k in (1, 2):
        copy = AutoModelForCausalLM.from_pretrained(tmp_path / "outbox" / f"copy-{k}", dtype=torch.float32)
        assert not torch.equal(copy.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)
        assert torch.equal(copy.generate(**prompt, max_new_tokens=12, do_sample=False), expected)


def test_two_rounds_then_export_gives_a_plain_checkpoint(tmp_path, tiny_model_dir):
    config = ServerConfig(copies=2, kappa=0.01, rounds=2, fixed_seed=9, independent_noise=0.0)
    server = tmp_path / "server"
    init_server(server, str(tiny_model_dir), None, config, progress=False)
    for round_number in (1, 2):
        publish(server, tmp_path / f"out{round_number}", progress=False)
        write_returns(tmp_path / f"out{round_number}", tmp_path / f"ret{round_number}", lambda name, w: -0.01 * w)
        aggregate(server, tmp_path / f"ret{round_number}", progress=False)
    state = Workdir(server).load()
    assert state.rounds_done == 2 and state.finished
    assert sorted(p.name for p in (server / "models").iterdir()) == ["round-2"]  # old rounds cleaned up

    export(server, tmp_path / "final", progress=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    w_final = model.model.layers[1].self_attn.q_proj.weight
    w_orig = original.model.layers[1].self_attn.q_proj.weight
    assert torch.allclose(w_final, 0.99**2 * w_orig, atol=1e-5)
    with pytest.raises(Exception, match="rounds are done"):
        publish(server, tmp_path / "out3", progress=False)


def test_secrets_stay_private_and_never_reach_the_outbox(tmp_path, tiny_model_dir):
    config = ServerConfig(copies=3, kappa=0.05, fixed_seed=424242, reparam=HARDENED)
    server = tmp_path / "server"
    init_server(server, str(tiny_model_dir), None, config, progress=False)
    report = publish(server, tmp_path / "outbox", progress=False)

    secrets_file = server / "secrets.json"
    assert stat.S_IMODE(os.stat(secrets_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server / "state.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server).st_mode) == 0o700
    secret_hex = json.loads(secrets_file.read_text())["rounds"]["1"]
    alphas = alphas_for_round(config, bytes.fromhex(secret_hex))
    sigmas = [block.sigma for block in report.blocks]

    forbidden = [secret_hex, bytes.fromhex(secret_hex).hex().upper(), "424242", "kappa", "alpha", "sigma", "seed"]
    for value in alphas + sigmas:
        forbidden += [repr(value), f"{value:.6f}", f"{value:.4g}"]
    everything = b""
    for path in (tmp_path / "outbox").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            everything += data if not path.name.endswith(".safetensors") else data[8 : 8 + int.from_bytes(data[:8], "little")]
    assert bytes.fromhex(secret_hex) not in b"".join(p.read_bytes() for p in (tmp_path / "outbox").rglob("*") if p.is_file())
    text = everything.decode("utf-8", errors="replace")
    leaked = [value for value in forbidden if value in text]
    assert not leaked, f"outbox mentions {leaked}"
    # safetensors headers carry only the standard format tag
    for copy in (tmp_path / "outbox").glob("copy-*"):
        reader = CheckpointReader(copy)
        assert all(reader.metadata(name) == {"format": "pt"} for name in reader.names())
    # nor do the transforms: no permutation of this round appears as text anywhere
    from mpu.protocol import RoundKeys
    from mpu.reparam import get_adapter
    from transformers import AutoConfig

    adapter = get_adapter(AutoConfig.from_pretrained(tiny_model_dir), config.reparam)
    for k in (1, 2, 3):
        drawn = adapter.sample(0, RoundKeys(bytes.fromhex(secret_hex)).transform(k, 0))
        for perm in (drawn.ffn_perm, drawn.kv_perm):
            assert json.dumps(perm.tolist()) not in text and str(perm.tolist()) not in text


def snapshot(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("change", ["theta-in-its-place", "removed"])
def test_a_base_changed_or_gone_since_init_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, tiny_base_dir, change):
    # arrange: σ follows θ − θ_base; the model itself put where the base was gave σ = 0 on every block,
    # published with a warning only
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_base_dir, base)
    init_server(tmp_path / "server", str(tiny_model_dir), str(base), ServerConfig(copies=2, kappa=0.1, fixed_seed=1), progress=False)
    shutil.rmtree(base)
    if change == "theta-in-its-place":
        shutil.copytree(tiny_model_dir, base)
    before = snapshot(tmp_path / "server")

    # act
    with pytest.raises(InputError) as refused:
        publish(tmp_path / "server", tmp_path / "outbox", progress=False)

    # assert: refused naming the base; no secret drawn, no outbox
    assert str(refused.value).startswith(f"{base.resolve()}: the base model")
    assert snapshot(tmp_path / "server") == before and not (tmp_path / "outbox").exists()
