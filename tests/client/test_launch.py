"""The client under a launcher: one private copy per machine only when several processes run."""

from __future__ import annotations

import pytest

from mpu.client.launch import copy_sharing, launched_processes


@pytest.mark.parametrize("environment", [{}, {"WORLD_SIZE": "1", "LOCAL_RANK": "0"}, {"WORLD_SIZE": "2"}])
def test_a_single_process_or_no_local_rank_shares_nothing(environment, monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert copy_sharing() is None


def test_the_launch_size_comes_from_the_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_processes() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_processes() == 4
