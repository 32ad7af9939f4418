"""Built-in benchmarks and tiny models trained on them, shared by the evaluation tests.

``fast_*``: a minimal benchmark (10 authors) and 0.2M-parameter models trained for a few seconds.
``slow_*``: 30 authors and the default ~1M-parameter model, trained to full memorisation (minutes;
only for tests marked slow).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

FAST_SIZES = dict(authors=10, facts=10, news=20, topics=8, shape="small")
FAST_MODEL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=128)
FAST_EPOCHS = 60
SLOW_SIZES = dict(authors=30, facts=30, news=40, topics=10, shape="small")


@contextlib.contextmanager
def one_thread():
    """Training is steadier with one thread on a machine shared by several people."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def fast_bench(tmp_path_factory):
    from mpu.data.builtin import build_benchmark

    path = tmp_path_factory.mktemp("bench-fast") / "builtin"
    build_benchmark(path, **FAST_SIZES)
    return path


def _train(bench, benchmark, split, out, **kwargs):
    from mpu.experiments.finetune import finetune

    with one_thread():
        return finetune(bench, benchmark, split, out, progress=False, **kwargs)


@pytest.fixture(scope="session")
def fast_models(fast_bench, tmp_path_factory):
    """{"full": (dir, metrics), "retain90": (dir, metrics)} for TOFU on the fast benchmark."""
    root = tmp_path_factory.mktemp("models-fast")
    models = {}
    for split in ("full", "retain90"):
        metrics = _train(fast_bench, "tofu", split, root / split, epochs=FAST_EPOCHS, lr=5e-3, batch_size=16,
                         model_config=FAST_MODEL)
        models[split] = (root / split, metrics)
    return models


@pytest.fixture(scope="session")
def slow_bench(tmp_path_factory):
    from mpu.data.builtin import build_benchmark

    path = tmp_path_factory.mktemp("bench-slow") / "builtin"
    build_benchmark(path, **SLOW_SIZES)
    return path


@pytest.fixture(scope="session")
def slow_models(slow_bench, tmp_path_factory):
    """Default-size tiny Llamas: TOFU full/retain90, MUSE and WMDP full/retain."""
    root = tmp_path_factory.mktemp("models-slow")
    models = {}
    for benchmark, split in (("tofu", "full"), ("tofu", "retain90"), ("muse", "full"), ("muse", "retain"),
                             ("wmdp", "full"), ("wmdp", "retain")):
        out = root / f"{benchmark}_{split}"
        models[(benchmark, split)] = (out, _train(slow_bench, benchmark, split, out))
    return models
