"""Audit tests: tiny models, one torch thread (the machine is shared; two threads on two busy cores
make small matrix products hundreds of times slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
