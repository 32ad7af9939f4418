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


def test_each_process_takes_the_copy_made_on_its_own_node(monkeypatch):
    """Two nodes with the same host name (containers) and their local ranks: the copy each process
    gets is the one its own node's local rank 0 made, matched by torchrun's node rank."""
    import accelerate
    import torch

    from mpu.client import launch

    processes = [("0", 0, "/node0/copy"), ("0", 1, None), ("1", 0, "/node1/copy"), ("1", 1, None)]

    def all_gather_object(gathered, mine):
        gathered[:] = [(node, rank, path) for node, rank, path in processes]

    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: len(processes))
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    monkeypatch.setattr(launch, "machine_id", lambda: "same-host")
    monkeypatch.setattr(accelerate, "PartialState", lambda **settings: None)   # no process group to set up
    for node, rank, made in processes:
        monkeypatch.setenv("GROUP_RANK", node)
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        sharing = launch.LocalRanks()

        assert sharing.makes_copy == (rank == 0)
        assert str(sharing.share(made)) == f"/node{node}/copy"
