"""A full CLI round trip (init, publish, unlearn two copies, aggregate, export) per non-Llama family.

The published copies are checked too: at kappa = 0 a copy must compute the private model's function
while its attention and FFN weights differ, i.e. the adapter really acted on the server's path.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import transformers

from mpu.reparam import ReparamConfig
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from test_families import FAMILIES, make_config, make_model, max_diff

torch.set_num_threads(1)

CONFIGS = {
    "gpt2": (transformers.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=48),
             "transformer.h.0.attn.c_attn.weight"),
    "gpt_neox": (transformers.GPTNeoXConfig, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                  num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.25),
                 "gpt_neox.layers.0.attention.query_key_value.weight"),
}


def mpu(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mpu.cli", *map(str, args)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"mpu {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build(family: str, tokenizer, path):
    cls, kwargs, probe = CONFIGS[family]
    config = cls(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id, **kwargs)
    make_model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return probe


def load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@torch.no_grad()
def max_logit_diff(a, b, vocab: int) -> float:
    ids = torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    return (a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max().item()


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_published_copy_is_reparameterised_and_preserves_the_function(family, tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "model"
    probe = build(family, tiny_tokenizer, model_dir)
    mpu("server", "init", "--model", model_dir, "--copies", 2, "--kappa", 0, "--rounds", 1, "--workdir", tmp_path / "server")
    mpu("server", "publish", "--workdir", tmp_path / "server", "--out", tmp_path / "outbox")
    original, copy = load(model_dir), load(tmp_path / "outbox" / "copy-1")
    assert max_logit_diff(original, copy, len(tiny_tokenizer)) < 1e-4
    assert not torch.equal(original.state_dict()[probe], copy.state_dict()[probe])


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_cli_round_trip(family, tmp_path, tiny_tokenizer, forget_file):
    model_dir, server, outbox, returns = tmp_path / "model", tmp_path / "server", tmp_path / "outbox", tmp_path / "returns"
    probe = build(family, tiny_tokenizer, model_dir)
    mpu("server", "init", "--model", model_dir, "--copies", 2, "--kappa", 0.05, "--rounds", 1, "--workdir", server)
    mpu("server", "publish", "--workdir", server, "--out", outbox)
    for copy in (1, 2):
        mpu("client", "unlearn", "--inbox", outbox, "--forget", forget_file, "--method", "GradAscent", "--epochs", 1,
            "--learning-rate", 1e-3, "--copy", copy, "--out", returns)
    mpu("server", "aggregate", "--workdir", server, "--returns", returns)
    mpu("server", "export", "--workdir", server, "--out", tmp_path / "final")

    exported, original = load(tmp_path / "final"), load(model_dir)
    assert not torch.equal(exported.state_dict()[probe], original.state_dict()[probe])
    # One small GradAscent step, mapped back by T^-1: the unlearned model stays close to the original.
    assert max_logit_diff(exported, original, len(tiny_tokenizer)) < 5.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_server_publishes_function_preserving_copies(family, tmp_path):
    """In process (fast): init + publish at kappa = 0 with every transform on; each copy computes the
    private model's function on a left-padded batch, and every block tensor with a rule has moved."""
    model_dir = tmp_path / "model"
    make_model(make_config(family)).save_pretrained(model_dir)
    options = ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True)
    init_server(tmp_path / "server", str(model_dir), None, ServerConfig(copies=2, kappa=0.0, reparam=options), progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    original = load(model_dir)
    for k in (1, 2):
        copy = load(tmp_path / "outbox" / f"copy-{k}")
        assert max_diff(original, copy) < 1e-4
    from safetensors.torch import load_file

    from mpu.reparam import get_adapter

    adapter = get_adapter(original.config, options)
    private = load_file(str(model_dir / "model.safetensors"))
    published = {}
    for shard in sorted((tmp_path / "outbox" / "copy-1").glob("*.safetensors")):
        published.update(load_file(str(shard)))
    moved = [n for n in private if adapter.layer_of(n) is not None and not adapter.rules[adapter.block_suffix(n)].is_identity]
    assert moved
    for name in moved:
        assert not torch.equal(published[name], private[name]), name


# Every other family: the server in process, both copies trained by one `mpu client unlearn` -------------

# MoE: transformers fuses the experts on load, so the client must diff under the checkpoint's names.
ROUND_TRIP = ["falcon-40b", "granite", "mixtral", "opt", "phi", "qwen2_moe", "qwen3_moe", "stablelm"]


@pytest.mark.parametrize("family", ROUND_TRIP)
def test_round_trip_per_family(family, tmp_path, tiny_tokenizer, forget_file):
    from mpu.server.aggregate import aggregate
    from mpu.server.export import export

    model_dir, server, outbox, returns = tmp_path / "model", tmp_path / "server", tmp_path / "outbox", tmp_path / "returns"
    tok = tiny_tokenizer
    config = make_config(family, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    make_model(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    options = ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True)
    init_server(server, str(model_dir), None, ServerConfig(copies=2, kappa=0.05, reparam=options), progress=False)
    publish(server, outbox, progress=False)
    mpu("client", "unlearn", "--inbox", outbox, "--forget", forget_file, "--method", "GradAscent", "--epochs", 1,
        "--learning-rate", 1e-3, "--out", returns)
    aggregate(server, returns, progress=False)
    export(server, tmp_path / "final", progress=False)

    exported, original = load(tmp_path / "final"), load(model_dir)
    changed = [n for n, p in exported.state_dict().items() if not torch.equal(p, original.state_dict()[n])]
    assert any(".0." in n for n in changed)  # block 0 was updated
    assert max_logit_diff(exported, original, len(tok)) < 5.0
