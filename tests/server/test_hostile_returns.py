"""The server treats the client's returns as hostile: no link followed out of the returns folder, no
FIFO or device read, every manifest field checked by type, range and length, headers counted before
parsing, LoRA factors checked by rank; every refusal exits 2 naming the file, and the work directory
is byte-identical (hashes and modes of every file) afterwards. The tests build the hostile files."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import tracemalloc

import pytest
import torch
from safetensors.torch import save_file

from mpu.checkpoint import CheckpointReader
from mpu.cli import main
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from mpu.server.validate import find_returns
from mpu.server.workdir import Workdir
from tests.server.hostile import edit_manifest, refused, workdir_hashes
from tests.server.stand_in_client import write_returns

NAME = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("hostile-returns")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=3), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    write_returns(root / "outbox", root / "good", lambda name, w: -0.01 * w)
    return root


def move_outside_and_link(path, tmp_path):
    outside = tmp_path / f"outside-{path.name}"
    shutil.move(path, outside)
    path.symlink_to(outside)


def shard(returns, copy_id=1):
    return returns / f"update-{copy_id}" / "model.safetensors"


def make_fifo(path):
    path.unlink()
    os.mkfifo(path)


def sharded(update_dir):
    """Split a single-file update into an index and two shards (the layout large models use)."""
    from safetensors.torch import load_file

    tensors = load_file(str(update_dir / "model.safetensors"))
    names = sorted(tensors)
    (update_dir / "model.safetensors").unlink()
    halves = {"model-00001.safetensors": names[: len(names) // 2], "model-00002.safetensors": names[len(names) // 2:]}
    for file, part in halves.items():
        save_file({name: tensors[name] for name in part}, str(update_dir / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {name: file for file, part in halves.items() for name in part}}
    (update_dir / "model.safetensors.index.json").write_text(json.dumps(index))


NOT_A_SHARD = "which is not the name of a .safetensors file of this folder"


def index_naming(returns, file):
    """Split update-1 into an index and two shards, then make the index map one tensor to ``file``."""
    sharded(returns / "update-1")
    path = returns / "update-1" / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"][sorted(index["weight_map"])[0]] = file
    path.write_text(json.dumps(index))


PATHS = {
    "update folder is a link outside": (lambda r, t: move_outside_and_link(r / "update-1", t), "update folder is a symbolic link"),
    "update.json is a link outside": (lambda r, t: move_outside_and_link(r / "update-1" / "update.json", t), "is a symbolic link"),
    "shard is a link outside": (lambda r, t: move_outside_and_link(shard(r), t), "is a symbolic link"),
    "index is a link outside": (lambda r, t: (sharded(r / "update-2"), move_outside_and_link(r / "update-2" / "model.safetensors.index.json", t)), "is a symbolic link"),
    "index shard is a link": (lambda r, t: (sharded(r / "update-1"), move_outside_and_link(r / "update-1" / "model-00002.safetensors", t)), "is a symbolic link"),
    "index names a shard of another folder": (lambda r, t: index_naming(r, "../update-2/model.safetensors"), NOT_A_SHARD),
    # names that become a path: each was an OSError or ValueError traceback (exit 1), or passed unchecked
    "index names a shard with a NUL": (lambda r, t: index_naming(r, "x\0.safetensors"), NOT_A_SHARD),
    "index names a shard of 400 bytes in 212 characters": (lambda r, t: index_naming(r, "\u00e9" * 200 + ".safetensors"), NOT_A_SHARD),
    "index names a shard by an absolute path": (lambda r, t: index_naming(r, str(r / "update-1" / "model-00001.safetensors")), NOT_A_SHARD),
    "index names a shard as ./name": (lambda r, t: index_naming(r, "./model-00001.safetensors"), NOT_A_SHARD),
    "index names a shard with a trailing newline": (lambda r, t: index_naming(r, "model-00001.safetensors\n"), NOT_A_SHARD),
    "index names a shard with a lone surrogate": (lambda r, t: index_naming(r, "\ud800.safetensors"), "lone UTF-16 surrogate"),
    "update.json is a FIFO": (lambda r, t: make_fifo(r / "update-1" / "update.json"), "is a FIFO"),
    "shard is a FIFO": (lambda r, t: make_fifo(shard(r, 2)), "is a FIFO"),
    "update folder is a file": (lambda r, t: (shutil.rmtree(r / "update-1"), (r / "update-1").write_text("x")), "not a folder"),
    "update folder is a FIFO": (lambda r, t: (shutil.rmtree(r / "update-1"), os.mkfifo(r / "update-1")), "not a folder"),
    "sub-folder in an update": (lambda r, t: (r / "update-1" / "extra").mkdir(), "is a folder"),
    "code in an update": (lambda r, t: (r / "update-1" / "hook.py").write_text("import os"), "code file"),
    "pickle in an update": (lambda r, t: torch.save({}, r / "update-2" / "extra.pt"), "pickles are never loaded"),
    "unknown file in an update": (lambda r, t: (r / "update-2" / "notes.txt").write_text("hi"), "not a data file"),
    "odd update folder name": (lambda r, t: shutil.copytree(r / "update-1", r / "update-one"), "not an update folder name"),
    "folder named for another copy": (lambda r, t: (r / "update-2").rename(r / "update-3"), "folder update-3 holds the update of copy 2"),
    "hard link to a file outside": (lambda r, t: ((t / "server-file").write_text("x"), os.link(t / "server-file", r / "update-1" / "extra.safetensors")), "is a hard link"),
    "shard the index does not name": (lambda r, t: save_file({NAME: torch.zeros(64, 64)}, str(r / "update-1" / "model-00009.safetensors")), "not named in the update's index"),
    "folder name in capitals": (lambda r, t: (r / "update-2").rename(r / "UPDATE-2"), "not an update folder name"),
    "folder name with a trailing newline": (lambda r, t: (r / "update-2").rename(r / "update-2\n"), "not an update folder name"),
    "20,000 files in an update": (lambda r, t: [(r / "update-1" / f"x{i}.safetensors").touch() for i in range(20_000)], "holds more than 10000 entries"),
}


@pytest.mark.parametrize("case", sorted(PATHS))
def test_returns_that_leave_the_folder_or_are_not_regular_files_are_refused(case, published, tmp_path, capsys):
    corrupt, reason = PATHS[case]
    assert reason in refused(published, tmp_path, corrupt, capsys)


MANIFESTS = {
    "method a list": ({"method": ["x"]}, "field 'method' must be a string, got list"),
    "method a number": ({"method": 5}, "field 'method' must be a string, got int"),
    "method 1000 characters": ({"method": "N" * 1000}, "must be 1..64 characters, got 1000"),
    "method 5 MB": ({"method": "N" * (5 << 20)}, "more than the 1048576 allowed"),
    "method with a path": ({"method": "../../etc"}, "characters outside"),
    "round a bool": ({"round": True}, "field 'round' must be an integer, got bool"),
    "copy id a string": ({"copy_id": "1"}, "field 'copy_id' must be an integer, got str"),
    "copy id a float": ({"copy_id": 1.0}, "field 'copy_id' must be an integer, got float"),
    "copy id a bool": ({"copy_id": True}, "field 'copy_id' must be an integer, got bool"),
    "copy id negative": ({"copy_id": -1}, "field 'copy_id' must be in [1,"),
    "steps negative": ({"steps": -3}, "field 'steps' must be in [0,"),
    "steps a bool": ({"steps": False}, "field 'steps' must be an integer, got bool"),
    "kind unknown": ({"kind": "dense"}, "field 'kind' must be 'full' or 'lora'"),
    "kind a list": ({"kind": ["full"]}, "field 'kind' must be 'full' or 'lora'"),
    "checksum a number": ({"copy_sha256": 5}, "field 'copy_sha256' must be a string"),
    "checksum not hex": ({"copy_sha256": "z" * 64}, "characters outside"),
    "hparams a list": ({"hparams": [1]}, "field 'hparams' must be an object"),
    "hparams nested": ({"hparams": {"beta": {"x": 1}}}, "setting hparams.beta must be a number"),
    "hparams too many": ({"hparams": {f"k{i}": i for i in range(100)}}, "has 100 entries"),
    "hparams long text": ({"hparams": {"retain_loss": "x" * 5000}}, "5000 characters"),
    "encoding a list": ({"encoding": [1]}, "field 'encoding' must be an object"),
    "encoding unknown key": ({"encoding": {"payload": 1}}, "field 'encoding' has unknown keys ['payload']"),
    "encoding max_length a string": ({"encoding": {"max_length": "512"}}, "field 'encoding.max_length' must be an integer"),
    "encoding truncate a number": ({"encoding": {"truncate": 1}}, "field 'encoding.truncate' must be true or false"),
    "encoding template hash not hex": ({"encoding": {"chat_template_sha256": "z" * 64}}, "characters outside"),
    "encoding nested prompt format": ({"encoding": {"prompt_format": {"format": {"x": 1}}}}, "setting encoding.prompt_format.format must be"),
    "dp epsilon a string": ({"dp": {"epsilon": "small"}}, "field 'dp.epsilon' must be a finite number"),
    "dp epsilon negative": ({"dp": {"epsilon": -1.0}}, "field 'dp.epsilon' must be >= 0"),
    "dp delta one": ({"dp": {"delta": 1.0}}, "field 'dp.delta' must be in (0, 1)"),
    "dp steps a bool": ({"dp": {"steps": True}}, "field 'dp.steps' must be an integer"),
    "dp unknown key": ({"dp": {"clipped_examples": 3}}, "field 'dp' has unknown keys ['clipped_examples']"),
    "dp long accountant": ({"dp": {"accountant": "x" * 100}}, "field 'dp.accountant' must be a string of at most 64"),
    "hparams odd key": ({"hparams": {"a b": 1}}, "has a setting named"),
    "training NaN": ({"training": {"learning_rate": float("nan")}}, "holds NaN, which is not JSON"),
    "training long list": ({"training": {"lora_target_modules": ["q"] * 100}}, "100 items"),
    "loss not numbers": ({"loss": {"first": "low"}}, "field 'loss.first' must be a finite number"),
    "loss extra key": ({"loss": {"per_example": [1, 2]}}, "field 'loss' must be an object"),
    "seconds negative": ({"seconds": -1.0}, "field 'seconds' must be >= 0"),
    "reference round in the future": ({"reference_round": 2}, "field 'reference_round' must be in [1, 1]"),
    "other publication": ({"publication_id": "00" * 8}, "update is for publication"),
    "unknown field": ({"payload": "x"}, "unknown fields ['payload']"),
    "wrong format": ({"format": "mpu-update/9"}, "not an mpu update manifest"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_every_manifest_field_is_checked_by_type_range_and_length(case, published, tmp_path, capsys):
    changes, reason = MANIFESTS[case]
    message = refused(published, tmp_path, lambda r, t: edit_manifest(r / "update-2", **changes), capsys)
    assert reason in message
    assert "update-2/update.json" in message
    assert len(message) < 1000  # a 5 MB field is never echoed back


def raw_manifest(update_dir, old, new):
    path = update_dir / "update.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


RAW_MANIFESTS = {
    "repeated copy id": (lambda u: raw_manifest(u, '"copy_id": 2', '"copy_id": 1, "copy_id": 2'), "repeats the key 'copy_id'"),
    "nested 100k deep": (lambda u: raw_manifest(u, '"steps": 1', '"steps": 1, "hparams": ' + "[" * 100_000 + "]" * 100_000), "nests too deeply"),
    "integer of 5000 digits": (lambda u: raw_manifest(u, '"steps": 1', '"steps": 1' + "0" * 5000), "not usable JSON"),
    "Infinity": (lambda u: raw_manifest(u, '"steps": 1', '"steps": 1, "seconds": Infinity'), "holds Infinity"),
    "method with a trailing newline": (lambda u: edit_manifest(u, method="GradAscent\n"), "field 'method' has characters outside"),
    "setting name with a trailing newline": (lambda u: edit_manifest(u, hparams={"beta\n": 1}), "has a setting named"),
    "publication id with a trailing newline": (lambda u: edit_manifest(u, publication_id="ab\n"), "field 'publication_id' has characters outside"),
}


@pytest.mark.parametrize("case", sorted(RAW_MANIFESTS))
def test_a_manifest_parsers_would_read_differently_is_refused(case, published, tmp_path, capsys):
    corrupt, reason = RAW_MANIFESTS[case]
    message = refused(published, tmp_path, lambda r, t: corrupt(r / "update-2"), capsys)
    assert reason in message
    assert "update-2/update.json" in message
    assert "\n," not in message and len(message) < 1000  # the raw value is shown escaped, never echoed


def test_a_manifest_without_a_required_field_is_refused(published, tmp_path, capsys):
    def drop_steps(returns, _):
        path = returns / "update-1" / "update.json"
        manifest = json.loads(path.read_text())
        del manifest["steps"]
        path.write_text(json.dumps(manifest))

    assert "field 'steps' missing" in refused(published, tmp_path, drop_steps, capsys)


def test_a_manifest_that_is_not_an_object_is_refused(published, tmp_path, capsys):
    message = refused(published, tmp_path, lambda r, t: (r / "update-1" / "update.json").write_text("[1, 2]"), capsys)
    assert "not a JSON object" in message


def lora_return(returns, factors):
    """Replace update-1 by a LoRA return holding ``factors`` (name -> tensor)."""
    update = returns / "update-1"
    (update / "model.safetensors").unlink()
    save_file(factors, str(update / "model.safetensors"), metadata={"format": "pt"})
    edit_manifest(update, kind="lora")


LORA = {
    "0-d factors": ({NAME + ".lora_A": torch.tensor(1.0), NAME + ".lora_B": torch.tensor(1.0)}, "factors are 2-D"),
    "3-d factor": ({NAME + ".lora_A": torch.zeros(2, 64, 1), NAME + ".lora_B": torch.zeros(64, 2)}, "factors are 2-D"),
    "ranks differ": ({NAME + ".lora_A": torch.zeros(2, 64), NAME + ".lora_B": torch.zeros(64, 3)}, "expected (64, 2)"),
    "rank 0": ({NAME + ".lora_A": torch.zeros(0, 64), NAME + ".lora_B": torch.zeros(64, 0)}, "rank 0, expected 1..64"),
    "rank above the weight's": ({NAME + ".lora_A": torch.zeros(65, 64), NAME + ".lora_B": torch.zeros(64, 65)}, "rank 65"),
    "no partner": ({NAME + ".lora_A": torch.zeros(2, 64)}, "has no partner"),
    "factor of a 1-d weight": ({"model.norm.weight.lora_A": torch.zeros(1, 64), "model.norm.weight.lora_B": torch.zeros(64, 1)}, "unexpected tensor"),
    "no factors": ({}, "no factors"),
}


@pytest.mark.parametrize("case", sorted(LORA))
def test_malformed_lora_factors_are_refused(case, published, tmp_path, capsys):
    factors, reason = LORA[case]
    assert reason in refused(published, tmp_path, lambda r, t: lora_return(r, factors), capsys)


def test_well_formed_lora_factors_are_accepted(published, tmp_path):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    returns = tmp_path / "returns"
    shutil.copytree(published / "good", returns)
    lora_return(returns, {NAME + ".lora_A": 1e-3 * torch.ones(2, 64), NAME + ".lora_B": 1e-3 * torch.ones(64, 2)})

    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns), "--allow-mixed"]) == 0


def million_empty_entries(path):
    body = b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(1_000_000))
    header = b"{" + body + b"}"
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def few_extra_entries(path):
    """A small header that still declares more tensors than the model has."""
    entries = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(100)}
    header = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def overlapping_entries(path):
    """Two entries of the right sizes that read the same bytes (a valid layout gives each its own)."""
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    header_bytes = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + b"\0" * 16)


@pytest.mark.parametrize("build, reason", [
    (million_empty_entries, "is larger than the"),
    (overlapping_entries, "overlaps the tensor before it"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "header is not a JSON object"),
    (lambda p: p.write_bytes(struct.pack("<Q", 60) + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}'[:60]), "not valid JSON"),
    (few_extra_entries, "declares 100 tensors, more than the 21 expected"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2**62) + b"{}"), "exceeds the file size"),
    (lambda p: p.write_bytes(b"\x01\x02"), "shorter than its 8-byte header length"),
])
def test_a_crafted_header_is_refused_in_under_a_second_before_it_is_parsed(build, reason, published, tmp_path, capsys):
    returns = tmp_path / "returns"
    shutil.copytree(published / "good", returns)
    build(shard(returns, 2))
    state = Workdir(published / "server").load()
    model = CheckpointReader(Workdir(published / "server").model_path(state))

    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(Exception) as error:
        find_returns(returns, state.published, model)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert reason in str(error.value)
    assert seconds < 1.0
    assert peak < 8 << 20  # bytes: the header is never read whole
    assert reason in refused(published, tmp_path / "cli", lambda r, t: build(shard(r, 2)), capsys)


def test_the_good_returns_pass_every_check(published, tmp_path):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    before = workdir_hashes(server)
    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(published / "good")]) == 0
    assert workdir_hashes(server) != before
    assert Workdir(server).load().rounds_done == 1


def test_hidden_and_unrelated_entries_of_the_returns_folder_are_not_read(published, tmp_path):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    returns = tmp_path / "returns"
    shutil.copytree(published / "good", returns)
    os.mkfifo(returns / ".update-3.partial-1234")  # reading either would block
    os.mkfifo(returns / "README")
    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns)]) == 0


def retensor(returns, tensor):
    from safetensors.torch import load_file

    path = shard(returns)
    tensors = load_file(str(path))
    tensors[NAME] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("tensor", [torch.tensor(0.5), torch.zeros(64), torch.zeros(1, 64, 64), torch.zeros(64, 64, dtype=torch.float64)],
                         ids=["0-d", "1-d", "3-d", "float64"])
def test_a_full_update_tensor_of_the_wrong_rank_or_dtype_is_refused(tensor, published, tmp_path, capsys):
    message = refused(published, tmp_path, lambda r, t: retensor(r, tensor), capsys)
    assert f"tensor {NAME} has" in message and "update-1/model.safetensors" in message


def test_a_huge_tensor_name_is_shown_cut_not_echoed_whole(published, tmp_path, capsys):
    from safetensors.torch import load_file

    name = "y" * 30_000

    def corrupt(returns, tmp):   # one tensor renamed, an index naming the original ones: the shard holds one it does not assign
        update = returns / "update-1"
        shard = next(update.glob("*.safetensors"))
        tensors = load_file(shard)
        original = sorted(tensors)
        tensors[name] = tensors.pop(original[0])
        save_file(tensors, shard)
        index = {"metadata": {}, "weight_map": {key: shard.name for key in original}}
        (update / "model.safetensors.index.json").write_text(json.dumps(index))

    message = refused(published, tmp_path, corrupt, capsys)
    assert "y" * 100 in message and "30002 characters" in message and len(message) < 2_000
