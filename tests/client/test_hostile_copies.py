"""The client treats the server's publication as hostile: nothing executed, no link followed, every
manifest field checked, headers counted before parsing, and every refusal is an InputError naming the
file (exit code 2), raised before anything is loaded or written. The tests build the hostile files."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpu.checkpoint import dir_sha256
from mpu.cli import main
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from tests.conftest import tree_snapshot


@pytest.fixture(scope="module")
def outbox(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("hostile-copies")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=5), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    return root / "outbox"


def rechecksum(inbox):
    """What a hostile server does: publish its tampered copies with matching checksums."""
    manifest = json.loads((inbox / "manifest.json").read_text())
    for copy in manifest["copies"]:
        if (inbox / copy["path"]).is_dir() and not (inbox / copy["path"]).is_symlink():
            copy["sha256"] = dir_sha256(inbox / copy["path"])
    (inbox / "manifest.json").write_text(json.dumps(manifest))


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_manifest(inbox, **changes):
    edit_json(inbox / "manifest.json", **changes)


def replace_copy_with_link(inbox, tmp_path):
    outside = tmp_path / "outside-copy"
    shutil.copytree(inbox / "copy-1", outside)
    shutil.rmtree(inbox / "copy-1")
    (inbox / "copy-1").symlink_to(outside)


def link_file(inbox, tmp_path, name):
    outside = tmp_path / f"outside-{name}"
    (inbox / "copy-1" / name).rename(outside)
    (inbox / "copy-1" / name).symlink_to(outside)


def shard(inbox):
    """copy-1's first weight file (copies are sharded per block)."""
    return sorted((inbox / "copy-1").glob("*.safetensors"))[0]


def header_file(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def many_empty_entries(inbox, tmp_path):
    entries = {f"junk.{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(200_000)}
    header_file(shard(inbox), json.dumps(entries).encode())


def reshape_shard(path):
    tensors = load_file(str(path))
    save_file({name: torch.zeros(3, 3) for name in tensors}, str(path))


NORM0 = "model.layers.0.post_attention_layernorm.weight"


def shard_holding(inbox, name, copy="copy-1"):
    index = json.loads((inbox / copy / "model.safetensors.index.json").read_text())["weight_map"]
    return inbox / copy / index[name]


def edit_tensors(inbox, name, change, copy="copy-1"):
    """Rewrite the shard holding ``name``: ``change(tensors)`` edits the dict in place; the index follows."""
    path = shard_holding(inbox, name, copy)
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    index_path = inbox / copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {n: f for n, f in index["weight_map"].items() if f != path.name or n in tensors}
    index["weight_map"].update({n: path.name for n in tensors})
    index_path.write_text(json.dumps(index))


def overlapping_tensors(inbox):
    """Every tensor of a shard reads the same bytes from offset 0 (a valid layout gives each its own)."""
    path = shard_holding(inbox, "model.layers.0.mlp.up_proj.weight")
    tensors = load_file(str(path))
    assert len(tensors) > 1
    header = {n: {"dtype": "F32", "shape": list(t.shape), "data_offsets": [0, 4 * t.numel()]} for n, t in tensors.items()}
    header_file(path, json.dumps(header).encode(), b"\0" * max(4 * t.numel() for t in tensors.values()))


def another_architecture(inbox):
    """copy-2 is a consistent model of another FFN width: its own checks pass, but it is not copy-1's model."""
    edit_json(inbox / "copy-2" / "config.json", intermediate_size=128)
    for path in (inbox / "copy-2").glob("*.safetensors"):
        tensors = load_file(str(path))
        for name, tensor in tensors.items():
            if "mlp." in name:
                tensors[name] = torch.zeros(tensor.shape[0], 128) if "down_proj" in name else torch.zeros(128, tensor.shape[1])
        save_file(tensors, str(path), metadata={"format": "pt"})


def hard_link_outside(inbox, tmp_path):
    secret = tmp_path / "client-secret.txt"
    secret.write_text("the client's own file")
    os.link(secret, inbox / "copy-1" / "vocab.txt")


def sparse_file(path, size):
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)


def raw_config(inbox, old, new):
    path = inbox / "copy-1" / "config.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def garbage_tokenizer(inbox):
    (inbox / "copy-1" / "tokenizer.json").write_text(json.dumps({"model": {"type": "NoSuchModel"}, "version": "1.0"}))


CASES = {
    # 1. no code from the server runs
    "auto_map in config.json": (lambda i, t: (edit_json(i / "copy-1" / "config.json", auto_map={"AutoModelForCausalLM": "evil.EvilModel"}),
                                              (i / "copy-1" / "evil.py").write_text("import os\n")), "evil.py"),
    "auto_map in config.json alone": (lambda i, t: edit_json(i / "copy-1" / "config.json", auto_map={"AutoModelForCausalLM": "evil.M"}), "auto_map"),
    "auto_map in tokenizer_config.json": (lambda i, t: edit_json(i / "copy-1" / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.T", None]}), "auto_map"),
    "python file": (lambda i, t: (i / "copy-1" / "modeling_evil.py").write_text("raise SystemExit('ran')\n"), "code file"),
    "shell script": (lambda i, t: (i / "copy-1" / "setup.sh").write_text("rm -rf ~\n"), "code file"),
    "pickle weights beside": (lambda i, t: torch.save({"w": torch.zeros(1)}, i / "copy-1" / "pytorch_model.bin"), "pickles are never loaded"),
    "unknown file": (lambda i, t: (i / "copy-1" / "custom_generate.txt").write_text("x"), "not a data file"),
    "unknown model_type": (lambda i, t: edit_json(i / "copy-1" / "config.json", model_type="evil_arch"), "config.json"),
    # 2. no symlink followed, no FIFO read
    "copy folder is a symlink": (replace_copy_with_link, "symbolic link"),
    "tokenizer.json is a symlink": (lambda i, t: link_file(i, t, "tokenizer.json"), "symbolic link"),
    "weights are a symlink": (lambda i, t: link_file(i, t, shard(i).name), "symbolic link"),
    "index is a symlink": (lambda i, t: link_file(i, t, "model.safetensors.index.json"), "symbolic link"),
    "unindexed extra shard": (lambda i, t: save_file({"x": torch.zeros(1)}, str(i / "copy-1" / "extra.safetensors")), "not named in"),
    "FIFO as tokenizer.json": (lambda i, t: ((i / "copy-1" / "tokenizer.json").unlink(), os.mkfifo(i / "copy-1" / "tokenizer.json")), "FIFO"),
    "sub-folder in a copy": (lambda i, t: (i / "copy-1" / "extra").mkdir(), "folder"),
    # 5. resource exhaustion: refused from the header length, before parsing
    "200k empty header entries": (many_empty_entries, "larger than the"),
    "absurd header length": (lambda i, t: shard(i).write_bytes(struct.pack("<Q", 2**62) + b"{}"), "exceeds the file size"),
    # 6. malformed files: an mpu error, not a library traceback
    "pickle named model.safetensors": (lambda i, t: shard(i).write_bytes(b"\x80\x04\x95" + b"\0" * 64), "not a valid safetensors file"),
    "config not JSON": (lambda i, t: (i / "copy-1" / "config.json").write_text("{model_type: llama"), "not valid JSON"),
    "config with a wrong value": (lambda i, t: edit_json(i / "copy-1" / "config.json", num_attention_heads="four"), "config.json"),
    "malformed tokenizer": (lambda i, t: garbage_tokenizer(i), "cannot load the tokenizer"),
    "weights of the wrong shape": (lambda i, t: reshape_shard(shard(i)), "the config's architecture needs"),
    # 7. config keys that fetch or run code, or load the weights another way (at any depth)
    "attention kernel from the hub": (lambda i, t: edit_json(i / "copy-1" / "config.json", attn_implementation="kernels-community/flash-attn"), "carries attn_implementation"),
    "private attention key": (lambda i, t: edit_json(i / "copy-1" / "config.json", _attn_implementation="kernels-community/x"), "carries _attn_implementation"),
    "quantization config": (lambda i, t: edit_json(i / "copy-1" / "config.json", quantization_config={"quant_method": "gptq", "bits": 4}), "carries quantization_config"),
    "auto_map in a sub-config": (lambda i, t: edit_json(i / "copy-1" / "config.json", text_config={"auto_map": {"AutoModel": "evil.M"}}), "carries auto_map"),
    "custom pipelines": (lambda i, t: edit_json(i / "copy-1" / "config.json", custom_pipelines={"x": {"impl": "evil.P"}}), "carries custom_pipelines"),
    "custom generate in the generation config": (lambda i, t: edit_json(i / "copy-1" / "generation_config.json", custom_generate="evil/repo"), "carries custom_generate"),
    "trust_remote_code in the tokenizer config": (lambda i, t: edit_json(i / "copy-1" / "tokenizer_config.json", trust_remote_code=True), "carries trust_remote_code"),
    "unknown config key": (lambda i, t: edit_json(i / "copy-1" / "config.json", my_setting=1), "are not llama config keys"),
    "integer dtype in the config": (lambda i, t: edit_json(i / "copy-1" / "config.json", dtype="int8"), "dtype 'int8' is not one of"),
    "invalid generation config": (lambda i, t: edit_json(i / "copy-1" / "generation_config.json", max_new_tokens=-5), "generation_config.json: not a valid generation config"),
    # 8. sizes that would cost minutes or terabytes, refused before the model is built or allocated
    "a million blocks": (lambda i, t: edit_json(i / "copy-1" / "config.json", num_hidden_layers=10**6), "num_hidden_layers must be an integer in [1, 1024]"),
    "a block the weights lack": (lambda i, t: edit_json(i / "copy-1" / "config.json", num_hidden_layers=3), "weights lack 9 tensor(s)"),
    "a tensor the weights lack": (lambda i, t: edit_tensors(i, NORM0, lambda ts: ts.pop(NORM0)), f"weights lack 1 tensor(s) of the config's architecture: {NORM0}"),
    "a tensor swapped for one of no model tensor": (lambda i, t: edit_tensors(i, NORM0, lambda ts: (ts.pop(NORM0), ts.update(junk=torch.zeros(1)))),
                                                    "tensor junk is not a tensor of the llama architecture"),
    "tokenizer.json over 64 MiB": (lambda i, t: sparse_file(i / "copy-1" / "tokenizer.json", (64 << 20) + 1), "more than the 67108864"),
    "chat template over 64 MiB": (lambda i, t: sparse_file(i / "copy-1" / "chat_template.jinja", (64 << 20) + 1), "more than the 67108864"),
    # 9. JSON that parsers read differently or cannot read
    "repeated key in config.json": (lambda i, t: raw_config(i, '"vocab_size": 320', '"vocab_size": 320, "vocab_size": 10000000000'), "repeats the key 'vocab_size'"),
    "config nested 100k deep": (lambda i, t: (i / "copy-1" / "config.json").write_text('{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"), "nests too deeply"),
    "integer of 5000 digits": (lambda i, t: raw_config(i, '"vocab_size": 320', '"vocab_size": 1' + "0" * 5000), "not usable JSON"),
    "NaN in config.json": (lambda i, t: raw_config(i, '"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN'), "holds NaN"),
    "repeated key in generation_config.json": (lambda i, t: (i / "copy-1" / "generation_config.json").write_text('{"bos_token_id": 1, "bos_token_id": 2}'), "repeats the key"),
    # 10. weights: layout, dtype, values, and one architecture for all copies
    "overlapping tensors": (lambda i, t: overlapping_tensors(i), "overlaps the tensor before it"),
    "float16 tensor in a float32 copy": (lambda i, t: edit_tensors(i, "model.norm.weight", lambda ts: ts.update({"model.norm.weight": ts["model.norm.weight"].half()})), "is float16; the copy's weights are float32"),
    "integer weights": (lambda i, t: edit_tensors(i, "model.norm.weight", lambda ts: ts.update({"model.norm.weight": ts["model.norm.weight"].to(torch.int32)})), "is int32"),
    "NaN weights": (lambda i, t: edit_tensors(i, "model.norm.weight", lambda ts: ts.update({"model.norm.weight": ts["model.norm.weight"] * float("nan")})), "contains NaN or Inf"),
    "copies of two architectures": (lambda i, t: another_architecture(i), "copy 2 does not have the tensors (names, shapes) of copy 1"),
    "architecture other than the manifest's": (lambda i, t: edit_manifest(i, architecture="gpt2"), "the publication manifest says 'gpt2'"),
    "dtype other than the manifest's": (lambda i, t: edit_manifest(i, dtype="bfloat16"), "the copy's weights are bfloat16"),
    "hard link to a file outside": (hard_link_outside, "is a hard link"),
}

MANIFEST_CASES = {
    "manifest is a symlink": (lambda i, t: ((t / "m.json").write_bytes((i / "manifest.json").read_bytes()), (i / "manifest.json").unlink(),
                                            (i / "manifest.json").symlink_to(t / "m.json")), "symbolic link"),
    "manifest is a FIFO": (lambda i, t: ((i / "manifest.json").unlink(), os.mkfifo(i / "manifest.json")), "FIFO"),
    "duplicate copy ids": (lambda i, t: edit_manifest(i, copies=[{**c, "id": 1} for c in json.loads((i / "manifest.json").read_text())["copies"]]), "appears twice"),
    "duplicate copy folders": (lambda i, t: edit_manifest(i, copies=[{**c, "path": "copy-1"} for c in json.loads((i / "manifest.json").read_text())["copies"]]), "appears twice"),
    "round is a string": (lambda i, t: edit_manifest(i, round="1"), "round must be an integer"),
    "round is a bool": (lambda i, t: edit_manifest(i, round=True), "round must be an integer"),
    "copy id 0": (lambda i, t: edit_manifest(i, copies=[{"id": 0, "path": "copy-1", "sha256": "0" * 64}]), "copy id must be"),
    "copy path absolute": (lambda i, t: edit_manifest(i, copies=[{"id": 1, "path": "/etc", "sha256": "0" * 64}]), "leaves the inbox"),
    "sha256 not hex": (lambda i, t: edit_manifest(i, copies=[{"id": 1, "path": "copy-1", "sha256": ["x"]}]), "sha256"),
    "huge publication id": (lambda i, t: edit_manifest(i, publication_id="x" * 5_000_000), "more than the"),
    "long publication id": (lambda i, t: edit_manifest(i, publication_id="x" * 1000), "publication_id"),
    "unexpected field": (lambda i, t: edit_manifest(i, trust_remote_code=True), "unexpected fields"),
    "copies not a list": (lambda i, t: edit_manifest(i, copies={"1": "copy-1"}), "copies must be a list"),
    "repeated key in the manifest": (lambda i, t: (i / "manifest.json").write_text((i / "manifest.json").read_text().replace('"round": 1', '"round": 1, "round": 2', 1)), "repeats the key 'round'"),
    "manifest nested 100k deep": (lambda i, t: (i / "manifest.json").write_text('{"format": "mpu-publication/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"), "nests too deeply"),
    "manifest integer of 5000 digits": (lambda i, t: (i / "manifest.json").write_text((i / "manifest.json").read_text().replace('"round": 1', '"round": 1' + "0" * 5000, 1)), "not usable JSON"),
}


def refused(inbox, tmp_path, forget_file, capsys, monkeypatch, reason):
    """Run the client on ``inbox`` with training stubbed out; check that it exits 2 naming a file of
    the inbox and ``reason``, without a traceback, trained nothing and wrote nothing."""
    import mpu.client.unlearn as client_unlearn

    trained = []
    monkeypatch.setattr(client_unlearn.UnlearnJob, "run", lambda *a, **k: trained.append(1))
    code = run_client(inbox, tmp_path / "returns", forget_file)
    err = capsys.readouterr().err
    assert code == 2, err
    assert reason in err
    assert str(inbox) in err   # names the file
    assert "Traceback" not in err
    assert not trained   # refused before any copy is trained
    assert not (tmp_path / "returns").exists()


def run_client(inbox, out, forget_file, *extra):
    return main(["client", "unlearn", "--inbox", str(inbox), "--forget", str(forget_file), "--out", str(out),
                 "--method", "GradAscent", "--max-steps", "1", "--lr", "1e-4", *extra])


@pytest.mark.parametrize("case", sorted(CASES) + sorted(MANIFEST_CASES))
def test_a_hostile_publication_is_refused_before_anything_is_loaded(case, outbox, tmp_path, forget_file, capsys, monkeypatch):
    corrupt, reason = CASES.get(case) or MANIFEST_CASES[case]
    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    corrupt(inbox, tmp_path)
    if case in CASES:
        rechecksum(inbox)
    refused(inbox, tmp_path, forget_file, capsys, monkeypatch, reason)   # copy 2 is fine, copy 1 is checked first


def test_the_untampered_publication_passes_the_same_checks(outbox, tmp_path, forget_file):
    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    rechecksum(inbox)
    assert run_client(inbox, tmp_path / "returns", forget_file, "--copy", "1") == 0
    assert (tmp_path / "returns" / "update-1" / "update.json").is_file()


def test_copies_are_loaded_without_remote_code(outbox, tmp_path, forget_file, monkeypatch):
    import transformers

    calls = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            calls.append(kwargs.get("trust_remote_code"))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    assert run_client(outbox, tmp_path / "returns", forget_file, "--copy", "2") == 0
    assert calls and all(value is False for value in calls)


def test_returned_files_are_owner_only(outbox, tmp_path, forget_file):
    assert run_client(outbox, tmp_path / "returns", forget_file, "--copy", "1") == 0
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "returns" / "update-1").iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes


def test_an_existing_update_is_kept_unless_overwrite_and_resume_skips_finished_copies(outbox, tmp_path, forget_file, capsys):
    returns = tmp_path / "returns"
    assert run_client(outbox, returns, forget_file, "--copy", "1") == 0
    finished = tree_snapshot(returns / "update-1")

    refused = run_client(outbox, returns, forget_file, "--copy", "1", "--lr", "1e-2")
    assert refused == 2
    assert "--overwrite" in capsys.readouterr().err
    assert tree_snapshot(returns / "update-1") == finished

    # resume: copy 1 (same settings) is skipped, copy 2 is trained
    assert run_client(outbox, returns, forget_file, "--resume") == 0
    assert "copy 1: finished update" in capsys.readouterr().out
    assert tree_snapshot(returns / "update-1") == finished
    assert (returns / "update-2" / "update.json").is_file()

    # resume with other settings does not count the old update as finished
    assert run_client(outbox, returns, forget_file, "--resume", "--lr", "1e-2") == 2
    assert "another publication, copy or settings" in capsys.readouterr().err

    assert run_client(outbox, returns, forget_file, "--copy", "1", "--overwrite", "--lr", "1e-2") == 0
    assert tree_snapshot(returns / "update-1") != finished
    assert json.loads((returns / "update-1" / "update.json").read_text())["training"]["learning_rate"] == 1e-2
