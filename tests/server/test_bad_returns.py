"""Every malformed return is refused with the file and the reason, and the server's work
directory is byte-identical afterwards."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpu.cli import main
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from mpu.server.workdir import Workdir
from tests.conftest import tree_snapshot
from tests.server.stand_in_client import write_returns

NAME = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    """One server, published once, with a valid set of returns to corrupt per test."""
    root = tmp_path_factory.mktemp("bad-returns")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=2), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    write_returns(root / "outbox", root / "good", lambda name, w: -0.01 * w)
    return root


def edit_tensors(update_dir, edit):
    path = update_dir / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def edit_manifest(update_dir, **changes):
    path = update_dir / "update.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def point_index_outside(update_dir):
    (update_dir / "model.safetensors").rename(update_dir.parent / "stolen.safetensors")
    index = {"weight_map": {name: "../stolen.safetensors" for name in load_file(str(update_dir.parent / "stolen.safetensors"))}}
    (update_dir / "model.safetensors.index.json").write_text(json.dumps(index))


def replace_with_pickle(update_dir):
    (update_dir / "model.safetensors").unlink()
    torch.save({NAME: torch.zeros(1)}, update_dir / "pytorch_model.bin")


def duplicate_copy(returns):
    shutil.copytree(returns / "update-1", returns / "update-9")


CASES = {
    "missing tensor": (lambda r: edit_tensors(r / "update-1", lambda t: t.pop(NAME)), "tensors missing"),
    "extra tensor": (lambda r: edit_tensors(r / "update-1", lambda t: t.__setitem__("model.layers.0.extra", torch.zeros(2))), "tensors, more than the 21 expected"),
    "wrong shape": (lambda r: edit_tensors(r / "update-1", lambda t: t.__setitem__(NAME, torch.zeros(3, 3))), "has shape"),
    "wrong dtype": (lambda r: edit_tensors(r / "update-1", lambda t: t.__setitem__(NAME, t[NAME].to(torch.float16))), "has dtype"),
    "NaN": (lambda r: edit_tensors(r / "update-2", lambda t: t[NAME].__setitem__((0, 0), float("nan"))), "NaN or Inf"),
    "Inf": (lambda r: edit_tensors(r / "update-2", lambda t: t["lm_head.weight"].__setitem__((1, 1), float("inf"))), "NaN or Inf"),
    "unknown copy id": (lambda r: edit_manifest(r / "update-2", copy_id=7), "unknown copy id 7"),
    "repeated copy id": (duplicate_copy, "folder update-9 holds the update of copy 1"),
    "checksum mismatch": (lambda r: edit_manifest(r / "update-1", copy_sha256="0" * 64), "checksum"),
    "wrong round": (lambda r: edit_manifest(r / "update-1", round=5), "round 5"),
    "norm above bound": (lambda r: edit_tensors(r / "update-2", lambda t: t[NAME].mul_(1e6)), "by more than the bound"),
    "not safetensors": (lambda r: (r / "update-1" / "model.safetensors").write_bytes(b"\x80\x04\x95pickle bytes"), "not a valid safetensors file"),
    "pickled weights": (lambda r: replace_with_pickle(r / "update-1"), "pickles are never loaded"),
    "index outside folder": (lambda r: point_index_outside(r / "update-1"), "which is not the name of a .safetensors file of this folder"),
    "truncated manifest": (lambda r: (r / "update-1" / "update.json").write_text('{"format": "mpu-update/1", "round'), "truncated or not valid JSON"),
    "manifest not JSON": (lambda r: (r / "update-2" / "update.json").write_bytes(b"\xff\xfe garbage"), "not UTF-8"),
    "missing copy": (lambda r: shutil.rmtree(r / "update-2"), "no update for copies [2]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_return_is_refused_and_the_server_is_untouched(case, published, tmp_path, capsys):
    corrupt, reason = CASES[case]
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    returns = tmp_path / "returns"
    shutil.copytree(published / "good", returns)
    corrupt(returns)
    before = tree_snapshot(server)

    code = main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns)])

    message = capsys.readouterr().err
    assert code == 2
    assert reason in message
    assert str(returns) in message  # names the file
    assert tree_snapshot(server) == before


def test_the_same_returns_uncorrupted_are_accepted(published, tmp_path):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(published / "good")]) == 0
    assert Workdir(server).load().rounds_done == 1


def test_an_interrupted_aggregate_can_be_run_again(published, tmp_path, monkeypatch):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    before = tree_snapshot(server)
    from mpu.checkpoint import safetensors_io

    real_write = safetensors_io.ShardedWriter.write_shard
    calls = {"n": 0}

    def crash_on_third_shard(self, tensors):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("power cut")
        return real_write(self, tensors)

    monkeypatch.setattr(safetensors_io.ShardedWriter, "write_shard", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        aggregate(server, published / "good", progress=False)
    assert tree_snapshot(server) == before
    monkeypatch.setattr(safetensors_io.ShardedWriter, "write_shard", real_write)

    report = aggregate(server, published / "good", progress=False)

    untouched = tmp_path / "untouched"  # the server state as published, aggregated without the failure
    shutil.copytree(published / "server", untouched)
    expected = aggregate(untouched, published / "good", progress=False)
    assert report.step_norm == expected.step_norm
    assert tree_snapshot(report.model_dir) == tree_snapshot(expected.model_dir)


def test_aggregate_before_publish_is_refused(tmp_path, tiny_model_dir, capsys):
    init_server(tmp_path / "server", str(tiny_model_dir), None, ServerConfig(copies=2), progress=False)
    code = main(["server", "aggregate", "--workdir", str(tmp_path / "server"), "--returns", str(tmp_path)])
    assert code == 2
    assert "has not been published" in capsys.readouterr().err


def test_a_world_readable_secrets_file_is_refused(published, tmp_path, capsys):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    (server / "secrets.json").chmod(0o644)
    code = main(["server", "aggregate", "--workdir", str(server), "--returns", str(published / "good")])
    assert code == 2
    assert "readable by others" in capsys.readouterr().err


def test_ctrl_c_after_the_commit_reports_the_round_as_aggregated(published, tmp_path, monkeypatch, capsys, caplog):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)

    def interrupted(self, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(Workdir, "clean_stale", interrupted)
    code = main(["server", "aggregate", "--workdir", str(server), "--returns", str(published / "good")])

    assert code == 0 and Workdir(server).load().rounds_done == 1
    assert "round 1 aggregated" in capsys.readouterr().out
    assert "the round is aggregated" in caplog.text and "interrupted" not in caplog.text


def test_ctrl_c_while_the_report_prints_still_says_the_round_is_aggregated(published, tmp_path, monkeypatch, capsys):
    import mpu.cli.server as server_cli

    server = tmp_path / "server"
    shutil.copytree(published / "server", server)

    def interrupted(report):
        raise KeyboardInterrupt

    monkeypatch.setattr(server_cli, "_print_aggregate", interrupted)
    code = main(["server", "aggregate", "--workdir", str(server), "--returns", str(published / "good")])

    assert code == 0 and Workdir(server).load().rounds_done == 1
    err = capsys.readouterr().err
    assert "round 1 is aggregated" in err and "interrupted" not in err
