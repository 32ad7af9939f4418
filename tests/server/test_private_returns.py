"""The server validates and combines a private copy of the returns: what the client writes to the returns
folder after the checks (an update a million times larger, a link) never reaches the combination, and
the copy is gone after the aggregate, or after a refusal."""

from __future__ import annotations

import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from mpu.checkpoint import CheckpointReader
from mpu.checkpoint.received import _HOST, leftover_copies
from mpu.errors import InputError
from mpu.server import round as round_module
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from mpu.server.workdir import RECEIVED_RETURNS, Workdir
from tests.conftest import tree_snapshot
from tests.server.stand_in_client import write_returns


def published(root, tiny_model_dir):
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=2), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    write_returns(root / "outbox", root / "returns", lambda name, w: -0.01 * w)
    return root


def enlarge(update_dir):
    """What a client that can still write its returns does once the server has checked them."""
    path = update_dir / "model.safetensors"
    tensors = load_file(str(path))
    save_file({name: tensor * 1e6 for name, tensor in tensors.items()}, str(path), metadata={"format": "pt"})


def model_after(root):
    reader = CheckpointReader(Workdir(root / "server").model_path(Workdir(root / "server").load()))
    return {name: reader.get(name) for name in reader.names()}


def test_returns_changed_after_the_checks_never_reach_the_combination(tmp_path, tiny_model_dir, monkeypatch):
    clean = published(tmp_path / "clean", tiny_model_dir)
    aggregate(clean / "server", clean / "returns", progress=False)
    swapped = published(tmp_path / "swapped", tiny_model_dir)
    find_returns = round_module.find_returns
    checked = []

    def find_then_enlarge(returns_dir, *args):
        updates = find_returns(returns_dir, *args)
        checked.append(returns_dir)
        enlarge(swapped / "returns" / "update-1")
        return updates

    monkeypatch.setattr(round_module, "find_returns", find_then_enlarge)
    aggregate(swapped / "server", swapped / "returns", progress=False)   # the poisoning bound would refuse the enlarged one

    assert checked and checked[0] != swapped / "returns" and checked[0].parent == swapped / "server"
    expected, combined = model_after(clean), model_after(swapped)
    assert all((combined[name] == expected[name]).all() for name in expected)
    assert leftover_copies(swapped / "server", RECEIVED_RETURNS) == []


def test_a_refused_return_names_the_returns_file_and_leaves_the_work_directory_as_it_was(tmp_path, tiny_model_dir):
    root = published(tmp_path, tiny_model_dir)
    enlarge(root / "returns" / "update-2")
    before = tree_snapshot(root / "server")
    with pytest.raises(InputError, match="by more than the bound") as err:
        aggregate(root / "server", root / "returns", progress=False)
    assert err.value.path == str(root / "returns" / "update-2")
    assert ".received-" not in str(err.value)
    assert tree_snapshot(root / "server") == before


def _ended_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_copy_left_by_a_killed_aggregate_is_removed_by_the_next_even_a_refused_one(tmp_path, tiny_model_dir):
    root = published(tmp_path, tiny_model_dir)
    left = root / "server" / f".{RECEIVED_RETURNS}.received-{_HOST}-{_ended_pid()}-0123abcd"
    running = root / "server" / f".{RECEIVED_RETURNS}.received-{_HOST}-{os.getppid()}-4567abcd"   # another aggregate, still running
    shutil.copytree(root / "returns", left)
    shutil.copytree(root / "returns", running)
    assert leftover_copies(root / "server", RECEIVED_RETURNS) == [left]
    shutil.rmtree(root / "returns" / "update-2")
    with pytest.raises(InputError, match="no update for copies"):   # refused before anything is copied
        aggregate(root / "server", root / "returns", progress=False)
    assert not left.exists() and running.exists()


def test_a_sparse_shard_the_index_does_not_name_is_refused_before_anything_is_copied(tmp_path, tiny_model_dir):
    root = published(tmp_path, tiny_model_dir)
    with open(root / "returns" / "update-1" / "model-00002-of-00002.safetensors", "wb") as sparse:
        sparse.truncate(1 << 40)   # a terabyte that takes no disk: a copy would write every byte
    before = tree_snapshot(root / "server")
    with pytest.raises(InputError, match="not named in the update's index") as err:
        aggregate(root / "server", root / "returns", progress=False)
    assert err.value.path == str(root / "returns" / "update-1" / "model-00002-of-00002.safetensors")
    assert tree_snapshot(root / "server") == before


def test_unpublished_update_folders_are_refused_before_anything_is_copied(tmp_path, tiny_model_dir, monkeypatch):
    import mpu.checkpoint.received as received

    root = published(tmp_path, tiny_model_dir)
    (root / "returns" / "update-100").mkdir()
    with open(root / "returns" / "update-100" / "model.safetensors", "wb") as sparse:
        sparse.truncate(60 << 20)
    copies = []
    monkeypatch.setattr(received, "_copy_folder", lambda *args: copies.append(args))
    with pytest.raises(InputError, match="update manifest not found|unknown copy id"):
        aggregate(root / "server", root / "returns", progress=False)
    assert copies == []


def test_returns_larger_than_the_free_space_are_refused_before_anything_is_copied(tmp_path, tiny_model_dir, monkeypatch):
    import mpu.checkpoint.received as received

    root = published(tmp_path, tiny_model_dir)
    monkeypatch.setattr(received.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    before = tree_snapshot(root / "server")
    with pytest.raises(InputError, match=r"take [\d,.]+ (bytes|GB) \(and [\d,.]+ (bytes|GB) for what this command writes there\), "
                                         r"and .* has 1,000 bytes free") as err:
        aggregate(root / "server", root / "returns", progress=False)
    assert err.value.path == str(root / "returns")
    assert tree_snapshot(root / "server") == before
