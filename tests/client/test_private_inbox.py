"""The client checks and trains a private copy of the inbox: what the server writes to the inbox after
the checks (NaN weights, a config swapped for a link) never reaches the training, and the copy is gone
after the run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpu.checkpoint import CheckpointReader
from mpu.checkpoint.received import leftover_copies
from mpu.client import inbox as inbox_module
from mpu.client.unlearn import unlearn_copies
from mpu.data.qa import load_qa_rows
from mpu.errors import InputError
from mpu.methods import training_options
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish

TRAINING = {"epochs": 1, "learning_rate": 1e-3, "seed": 3}


@pytest.fixture(scope="module")
def outbox(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("private-inbox")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, fixed_seed=6), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    return root / "outbox"


def poison(inbox, tmp_path):
    """What a server that can still write the inbox does once the client has checked it."""
    for copy in ("copy-1", "copy-2"):
        for shard in (inbox / copy).glob("*.safetensors"):
            tensors = load_file(str(shard))
            save_file({name: torch.full_like(tensor, float("nan")) for name, tensor in tensors.items()}, str(shard),
                      metadata={"format": "pt"})
        config = json.loads((inbox / copy / "config.json").read_text())
        (tmp_path / f"{copy}-elsewhere.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
        (inbox / copy / "config.json").unlink()
        (inbox / copy / "config.json").symlink_to(tmp_path / f"{copy}-elsewhere.json")


def updates(returns):
    return {copy: {name: CheckpointReader(returns / copy).get(name) for name in CheckpointReader(returns / copy).names()}
            for copy in ("update-1", "update-2")}


def test_files_changed_after_the_checks_never_reach_the_training(outbox, tmp_path, forget_file, monkeypatch):
    rows = load_qa_rows(forget_file)
    clean = tmp_path / "clean"
    unlearn_copies(outbox, rows, None, "GradAscent", {}, training_options(TRAINING), clean / "returns")
    inbox = tmp_path / "swapped" / "inbox"
    shutil.copytree(outbox, inbox)
    verify = inbox_module.Publication.verify
    checked = []

    def verify_then_poison(publication, copies):
        shapes = verify(publication, copies)
        checked.append(publication.inbox)
        poison(inbox, tmp_path)
        return shapes

    monkeypatch.setattr(inbox_module.Publication, "verify", verify_then_poison)
    results = unlearn_copies(inbox, rows, None, "GradAscent", {}, training_options(TRAINING), tmp_path / "swapped" / "returns")

    assert [result.copy_id for result in results] == [1, 2]
    assert checked and checked[0] != inbox and checked[0].parent == tmp_path / "swapped"   # the private copy was checked
    trained, expected = updates(tmp_path / "swapped" / "returns"), updates(clean / "returns")
    for copy in expected:
        assert all(torch.isfinite(tensor).all() for tensor in trained[copy].values())
        assert all(torch.allclose(trained[copy][name], expected[copy][name], atol=1e-6) for name in expected[copy])
    assert leftover_copies(tmp_path / "swapped", "mpu-inbox") == []
    assert sorted(path.name for path in (tmp_path / "swapped").iterdir()) == ["inbox", "returns"]


def test_a_refusal_names_the_inbox_file_and_leaves_no_copy(outbox, tmp_path, forget_file):
    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    (inbox / "copy-2" / "generation_config.json").write_text('{"max_length": 5, "max_length": 6}')
    with pytest.raises(InputError, match="repeats the key") as err:
        unlearn_copies(inbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(inbox / "copy-2" / "generation_config.json")
    assert ".received-" not in str(err.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forget.jsonl", "inbox"]


def test_a_tokenizer_kept_from_an_earlier_run_loads_from_the_current_copy(outbox, tmp_path, forget_file, retain_file):
    from mpu.data import isolated

    unlearn_copies(outbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "first", copy_ids=[1])
    isolated._CHILD.close()   # the child reloads the kept tokenizer for new rows: the first run's private copy is gone
    results = unlearn_copies(outbox, load_qa_rows(retain_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "second",
                             copy_ids=[1])
    assert [result.copy_id for result in results] == [1]


def test_a_publication_larger_than_the_free_space_is_refused_before_anything_is_copied(outbox, tmp_path, forget_file, monkeypatch):
    import mpu.checkpoint.received as received

    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    with open(sorted((inbox / "copy-2").glob("*.safetensors"))[0], "r+b") as sparse:
        sparse.truncate(1 << 40)   # a terabyte that takes no disk: the private copy would write every byte
    monkeypatch.setattr(received.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**11, 10**11))
    with pytest.raises(InputError, match=r"take 1,099.5\d+ GB, and .* has 100.000 GB free") as err:
        unlearn_copies(inbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(inbox)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forget.jsonl", "inbox"]


def test_a_model_larger_than_the_memory_is_refused_before_any_copy_loads(outbox, tmp_path, forget_file, monkeypatch):
    from mpu.client import unlearn

    monkeypatch.setattr(unlearn, "physical_memory_bytes", lambda: 10_000)
    with pytest.raises(InputError, match=r"has [\d,]+ parameters: its float32 weights alone take [\d,]+ bytes, more than this machine's 10,000 bytes") as err:
        unlearn_copies(outbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(outbox / "copy-1" / "config.json")
    assert not (tmp_path / "returns").exists()
