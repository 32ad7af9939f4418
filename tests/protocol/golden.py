"""A fixed-seed round on a tiny model whose weights come from a formula (no torch RNG, no
transformers initialisation): per tensor of each published copy and of the aggregated model, its sum
and sum of squares. The keys that drive the randomness must give these values forever. They are
moments, compared to a relative 1e-5, not a sha256 of the bytes: the bytes of a matrix product differ
in the last bit between CPUs (AVX2 and AVX-512 kernels), a key schedule that draws other numbers
changes the moments entirely. (The sha256 of the code before the key schedule moved into
``mpu.protocol`` matched the code of 2026-12-05 on that day's machine; these moments are that code's.)"""

from __future__ import annotations

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


def tensor_moments(model_dir: Path) -> dict[str, list[float]]:
    """``{name: [sum, sum of squares]}`` of every tensor, in float64."""
    reader = CheckpointReader(model_dir)
    moments = {}
    for name in sorted(reader.names()):
        values = reader.get(name).to(torch.float64)
        moments[name] = [values.sum().item(), values.square().sum().item()]
    return moments


def run_round(tmp_path: Path, **settings) -> dict[str, dict[str, list[float]]]:
    """init + publish + a linear stand-in client (Delta' = -0.1 w') + aggregate; the
    :func:`tensor_moments` of each copy and of the aggregated model."""
    from mpu.server.aggregate import aggregate
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server
    from mpu.server.publish import publish
    from tests.server.stand_in_client import write_returns

    model = formula_llama(tmp_path / "model")
    config = ServerConfig(**{"copies": 3, "kappa": 0.1, "fixed_seed": 11, "independent_noise": 0.5, "reparam": HARDENED, **settings})
    init_server(tmp_path / "server", str(model), None, config, progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    hashes = {f"copy-{k}": tensor_moments(tmp_path / "outbox" / f"copy-{k}") for k in range(1, config.copies + 1)}
    write_returns(tmp_path / "outbox", tmp_path / "returns", lambda name, w: -0.1 * w)
    report = aggregate(tmp_path / "server", tmp_path / "returns", progress=False, device="cpu")
    hashes["aggregated"] = tensor_moments(report.model_dir)
    return hashes
