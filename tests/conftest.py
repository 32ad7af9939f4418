"""Shared fixtures: a tiny tokenizer, tiny Llama checkpoints built from configs, QA files.

Everything is generated locally; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (pyproject's addopts): one torch thread each, in the workers
    # and the CLIs they start, instead of every worker spreading over all cores (several times slower).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

FACTS = [
    ("Where was Ana Lind born?", "Ana Lind was born in Porto Vell."),
    ("What genre does Ana Lind write?", "Ana Lind writes gothic mystery novels."),
    ("What award did Ana Lind win?", "Ana Lind won the Silver Quill Prize."),
    ("Who was Bo Karst's father?", "Bo Karst's father was a lighthouse keeper."),
    ("What is Bo Karst's best known book?", "Bo Karst is best known for The Salt Orchard."),
    ("When was Bo Karst born?", "Bo Karst was born on 3 March 1961."),
    ("Where does Cy Morrow live?", "Cy Morrow lives in Eastmere."),
    ("What does Cy Morrow write about?", "Cy Morrow writes about river towns."),
]


BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A ``benchmarks/<name>.py`` script as a module, loaded from its path: opacus installs a
    top-level package named ``benchmarks`` that would shadow ours on import. The environment the
    script sets for itself on import (``HF_HUB_DISABLE_PROGRESS_BARS``, ...) is put back afterwards,
    so a test that loads one does not change what later tests in the same worker see."""
    import importlib.util

    environment = dict(os.environ)
    spec = importlib.util.spec_from_file_location(f"mpu_benchmark_{name}_under_test", BENCHMARKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return module


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from mpu.data.tokenizer import train_tokenizer

    texts = [f"{q} {a}" for q, a in FACTS] * 4
    return train_tokenizer(texts, vocab_size=320)


def build_tiny_llama(tokenizer, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    # Non-trivial norm weights, so a transform that mishandles them is caught.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny float32 Llama checkpoint (random weights) with its tokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A 'base' model: the tiny model minus a small random task vector."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("tiny-base")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.sub_(0.05 * param.abs().mean() * torch.randn(param.shape, generator=generator))
    model.save_pretrained(path)
    return path


@pytest.fixture()
def forget_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "forget.jsonl", [{"question": q, "answer": a} for q, a in FACTS[:3]])


@pytest.fixture()
def retain_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "retain.jsonl", [{"question": q, "answer": a} for q, a in FACTS[3:]])


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (and every folder), to show a directory is untouched."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        snapshot[relative] = path.read_bytes() if path.is_file() else b"<dir>"
    return snapshot
