"""Fixtures for the method tests: one tiny Llama, fine-tuned for a moment on 24 synthetic QA pairs, built
once per session; each test gets its own copy.

The tests pin torch to one thread: on a shared 2-core machine two OpenMP threads fighting other jobs made
these models ~50x slower.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from tests.methods import helpers

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer, forget rows, retain rows); the model must not be modified: use ``model``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = helpers.build_tokenizer()
        model = helpers.build_model(tokenizer)
        forget, retain = helpers.split_rows()
        helpers.finetune(model, tokenizer, forget + retain, steps=45, lr=3e-3)
    finally:
        torch.set_num_threads(before)
    return model, tokenizer, forget, retain


@pytest.fixture()
def model(tiny):
    return copy.deepcopy(tiny[0])


@pytest.fixture()
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture()
def forget_rows(tiny):
    return [dict(row) for row in tiny[2]]


@pytest.fixture()
def retain_rows(tiny):
    return [dict(row) for row in tiny[3]]


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory) -> Path:
    """The tiny model saved as a Hugging Face directory, with forget.jsonl and retain.jsonl beside it."""
    root = tmp_path_factory.mktemp("methods-tiny")
    model, tokenizer, forget, retain = tiny
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for name, rows in (("forget", forget), ("retain", retain)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def options(**overrides):
    """Training options for the tiny model: a learning rate that moves it in a few steps."""
    from mpu.methods import TrainingConfig

    settings = dict(epochs=2, learning_rate=1e-3, batch_size=4, logging_steps=1)
    settings.update(overrides)
    return TrainingConfig(**settings)
