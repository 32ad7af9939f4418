"""The client checks and trains a private copy of the inbox: what the server writes to the inbox after
the checks (NaN weights, a config swapped for a link) never reaches the training, and the copy is gone
after the run."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpu.checkpoint import CheckpointReader
from mpu.client import inbox as inbox_module
from mpu.client.unlearn import private_folder, unlearn_copies
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


def updates(returns, folders=("update-1", "update-2")):
    return {copy: {name: CheckpointReader(returns / copy).get(name) for name in CheckpointReader(returns / copy).names()}
            for copy in folders}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_files_changed_after_the_checks_never_reach_the_training(outbox, tmp_path, forget_file, monkeypatch, cache):
    rows = load_qa_rows(forget_file)
    clean = tmp_path / "clean"
    unlearn_copies(outbox, rows, None, "GradAscent", {}, training_options(TRAINING), clean / "returns")
    inbox = tmp_path / "swapped" / "inbox"
    shutil.copytree(outbox, inbox)
    verify = inbox_module.Publication.verify
    checked = []

    def verify_then_poison(publication, copies, *limit):
        shapes = verify(publication, copies, *limit)
        checked.append(publication.inbox)
        if publication.inbox != inbox:   # the received files were checked first, then the private copy
            poison(inbox, tmp_path)
        return shapes

    monkeypatch.setattr(inbox_module.Publication, "verify", verify_then_poison)
    results = unlearn_copies(inbox, rows, None, "GradAscent", {}, training_options(TRAINING), tmp_path / "swapped" / "returns")

    assert [result.copy_id for result in results] == [1, 2]
    assert checked[0] == inbox and checked[1].parent == private_folder() == cache / "received"
    assert stat.S_IMODE(os.stat(private_folder()).st_mode) == 0o700
    trained, expected = updates(tmp_path / "swapped" / "returns"), updates(clean / "returns")
    for copy in expected:
        assert all(torch.isfinite(tensor).all() for tensor in trained[copy].values())
        assert all(torch.allclose(trained[copy][name], expected[copy][name], atol=1e-6) for name in expected[copy])
    assert list(private_folder().iterdir()) == []
    assert sorted(path.name for path in (tmp_path / "swapped").iterdir()) == ["inbox", "returns"]   # nothing beside --out


def test_the_private_copy_trains_as_the_received_folder_would(outbox, tmp_path, forget_file, cache):
    """The shipped prompt formats are matched on the tokenizer's folder name: a private copy is named
    after the inbox's folder, so a copy trains as `mpu run` (which reads its own folder in place) would."""
    from mpu.client.unlearn import _TOKENIZERS

    inbox = tmp_path / "Llama-2-7b-chat-round1"
    shutil.copytree(outbox, inbox)
    rows = load_qa_rows(forget_file)
    unlearn_copies(inbox, rows, None, "GradAscent", {}, training_options(TRAINING), tmp_path / "private", copy_ids=[1])
    (named,) = [tokenizer.name_or_path for tokenizer in _TOKENIZERS.values() if "Llama-2-7b-chat-round1" in tokenizer.name_or_path]
    assert named == str(inbox / "copy-1")
    unlearn_copies(inbox, rows, None, "GradAscent", {}, training_options(TRAINING), tmp_path / "in-place", copy_ids=[1], private=False)
    private, in_place = updates(tmp_path / "private", ["update-1"]), updates(tmp_path / "in-place", ["update-1"])
    assert all(torch.equal(private["update-1"][name], in_place["update-1"][name]) for name in in_place["update-1"])
    manifest = json.loads((tmp_path / "private" / "update-1" / "update.json").read_text())
    assert manifest["encoding"]["prompt_format"]["user_start"] == "[INST] "   # Llama-2-7b-chat's shipped format
    assert manifest["encoding"] == json.loads((tmp_path / "in-place" / "update-1" / "update.json").read_text())["encoding"]


def test_a_refusal_names_the_inbox_file_and_leaves_no_copy(outbox, tmp_path, forget_file, cache):
    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    (inbox / "copy-2" / "generation_config.json").write_text('{"max_length": 5, "max_length": 6}')
    with pytest.raises(InputError, match="repeats the key") as err:
        unlearn_copies(inbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(inbox / "copy-2" / "generation_config.json")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forget.jsonl", "inbox"]   # refused before any copy


def test_a_refusal_of_the_private_copy_names_the_inbox_file(outbox, tmp_path, forget_file, monkeypatch, cache):
    """What the copy's second check finds (the server changed a file between the first check and the
    copy) is named by the inbox's file, not the private copy's."""
    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    verify = inbox_module.Publication.verify

    def verify_then_change(publication, copies, *limit):
        shapes = verify(publication, copies, *limit)
        if publication.inbox == inbox:
            (inbox / "copy-2" / "generation_config.json").write_text('{"max_length": 5, "max_length": 6}')
        return shapes

    monkeypatch.setattr(inbox_module.Publication, "verify", verify_then_change)
    with pytest.raises(InputError, match="repeats the key") as err:
        unlearn_copies(inbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(inbox / "copy-2" / "generation_config.json")
    assert ".received-" not in str(err.value)
    assert list(private_folder().iterdir()) == [] and not (tmp_path / "returns").exists()


def test_a_tokenizer_kept_from_an_earlier_run_loads_from_the_current_copy(outbox, tmp_path, forget_file, retain_file):
    from mpu.data import isolated

    unlearn_copies(outbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "first", copy_ids=[1])
    isolated._CHILD.close()   # the child reloads the kept tokenizer for new rows: the first run's private copy is gone
    results = unlearn_copies(outbox, load_qa_rows(retain_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "second",
                             copy_ids=[1])
    assert [result.copy_id for result in results] == [1]


def test_a_publication_larger_than_the_free_space_is_refused_before_anything_is_copied(outbox, tmp_path, forget_file, monkeypatch, cache):
    import mpu.checkpoint.received as received

    monkeypatch.setattr(received.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(InputError, match=r"the files to check and use take [\d.,]+ (bytes|GB), and .* has 1,000 bytes free") as err:
        unlearn_copies(outbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(outbox)
    assert list(private_folder().iterdir()) == [] and not (tmp_path / "returns").exists()


def test_a_model_larger_than_the_memory_is_refused_before_its_weights_are_read(outbox, tmp_path, forget_file, monkeypatch):
    from mpu.client import inbox, unlearn

    monkeypatch.setattr(unlearn, "physical_memory_bytes", lambda: 10_000)
    monkeypatch.setattr(inbox, "dir_sha256", lambda path: pytest.fail("the weights were read in full"))
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match=r"the model has [\d,]+ parameters, more than the 2,500 this machine can load "
                                         r"\(its float32 weights take 4 bytes a parameter, and this machine has 10,000 bytes") as err:
        unlearn_copies(outbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(outbox / "copy-1" / "config.json")
    assert not (tmp_path / "returns").exists() and not (tmp_path / "cache" / "received").exists()   # before any copy


def test_a_sparse_weight_file_is_refused_before_it_is_read(outbox, tmp_path, forget_file, monkeypatch):
    """A weight file's size follows from its header, checked against the architecture before the
    checksum reads the files: a terabyte of zeros the index does not name is never read."""
    from mpu.client import inbox as module

    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    with open(inbox / "copy-1" / "model-00099-of-00099.safetensors", "wb") as sparse:
        sparse.truncate(1 << 40)
    monkeypatch.setattr(module, "dir_sha256", lambda path: pytest.fail("the files were read in full"))
    with pytest.raises(InputError, match="weight file not named in the copy's index") as err:
        unlearn_copies(inbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options(TRAINING), tmp_path / "returns")
    assert err.value.path == str(inbox / "copy-1" / "model-00099-of-00099.safetensors")


def test_a_private_copys_tokenizer_is_named_after_the_received_folder(outbox, tmp_path, monkeypatch, cache):
    from mpu.client import unlearn
    from mpu.client.inbox import read_publication

    monkeypatch.setattr(unlearn, "_TOKENIZERS", {})
    publication = read_publication(outbox)
    with publication.received(publication.copies, private_folder()) as private:
        first = unlearn._tokenizer(private.copies[0])          # loaded
        second = unlearn._tokenizer(private.copies[1])         # the same files: kept, re-pointed
        assert first is second
        assert private.copies[1].path != outbox / "copy-2" and second.name_or_path == str(outbox / "copy-2")
    monkeypatch.setattr(unlearn, "_TOKENIZERS", {})
    with publication.received(publication.copies[:1], private_folder()) as private:
        assert unlearn._tokenizer(private.copies[0]).name_or_path == str(outbox / "copy-1")


def test_the_processes_of_a_launch_share_the_bound_on_the_model_size(monkeypatch):
    from mpu.client import unlearn

    monkeypatch.setattr(unlearn, "physical_memory_bytes", lambda: 16_000)
    alone, why = unlearn.memory_limit(with_reference=True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    shared, why_shared = unlearn.memory_limit(with_reference=True)

    assert (alone, shared) == (2_000, 500)
    assert "shared by" not in why and "16,000 bytes of memory shared by 4 processes" in why_shared
