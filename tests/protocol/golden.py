"""A fixed-seed round on a tiny model whose weights come from a formula (no torch RNG, no
transformers initialisation): the sha256 of each published copy's tensors and of the aggregated model.
The keys that drive the randomness must give these bytes forever (they were computed before the key
schedule moved into ``mpu.protocol``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mpu.checkpoint import CheckpointReader
from mpu.reparam import ReparamConfig

HARDENED = ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True)


def formula_llama(path: Path) -> Path:
    """A 2-block Llama (GQA 4/2 heads) whose every weight is a sine of its index, saved to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for i, (name, param) in enumerate(sorted(model.named_parameters())):
            index = torch.arange(param.numel(), dtype=torch.float64)
            values = (0.05 * torch.sin(0.37 * index + i)).reshape(param.shape).to(torch.float32)
            param.copy_(values + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(path)
    return path


def tensors_sha256(model_dir: Path) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    reader = CheckpointReader(model_dir)
    digest = hashlib.sha256()
    for name in sorted(reader.names()):
        tensor = reader.get(name).contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def run_round(tmp_path: Path, **settings) -> dict[str, str]:
    """init + publish + a linear stand-in client (Delta' = -0.1 w') + aggregate; the hashes."""
    from mpu.server.aggregate import aggregate
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server
    from mpu.server.publish import publish
    from tests.server.stand_in_client import write_returns

    model = formula_llama(tmp_path / "model")
    config = ServerConfig(**{"copies": 3, "kappa": 0.1, "fixed_seed": 11, "independent_noise": 0.5, "reparam": HARDENED, **settings})
    init_server(tmp_path / "server", str(model), None, config, progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    hashes = {f"copy-{k}": tensors_sha256(tmp_path / "outbox" / f"copy-{k}") for k in range(1, config.copies + 1)}
    write_returns(tmp_path / "outbox", tmp_path / "returns", lambda name, w: -0.1 * w)
    report = aggregate(tmp_path / "server", tmp_path / "returns", progress=False, device="cpu")
    hashes["aggregated"] = tensors_sha256(report.model_dir)
    return hashes
