import json

import pytest
import torch
from safetensors.torch import save_file

from mpu.checkpoint import CheckpointReader, ShardedWriter, dir_sha256, layer_groups
from mpu.errors import InputError


def test_sharded_round_trip_keeps_every_tensor(tmp_path):
    tensors = {"model.layers.0.a": torch.randn(3, 4), "model.layers.1.b": torch.randn(5), "lm_head.weight": torch.randn(2, 2)}
    writer = ShardedWriter(tmp_path / "ckpt")
    for _, names in layer_groups(tensors):
        writer.write_shard({name: tensors[name] for name in names})
    writer.finish()

    reader = CheckpointReader(tmp_path / "ckpt")

    assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    assert reader.names() == sorted(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(reader.get(name), tensor)
        assert reader.shape(name) == tuple(tensor.shape)


def test_layer_groups_orders_blocks_then_external_tensors_alone():
    names = ["lm_head.weight", "model.layers.10.x", "model.layers.2.y", "model.layers.2.x", "model.embed_tokens.weight"]
    groups = layer_groups(names)
    assert groups == [(2, ["model.layers.2.x", "model.layers.2.y"]), (10, ["model.layers.10.x"]), (None, ["lm_head.weight"]), (None, ["model.embed_tokens.weight"])]


def test_reader_refuses_pickled_weights(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match="pickled weights are never loaded"):
        CheckpointReader(tmp_path)


def test_reader_refuses_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04\x95 definitely a pickle")
    with pytest.raises(InputError, match="not a valid safetensors file") as err:
        CheckpointReader(tmp_path)
    assert "model.safetensors" in str(err.value)


def test_reader_refuses_an_index_pointing_outside_its_folder(tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    save_file({"w": torch.zeros(2)}, str(outside))
    folder = tmp_path / "update"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}))
    with pytest.raises(InputError, match="which is not the name of a .safetensors file of this folder"):
        CheckpointReader(folder)


def test_reader_refuses_a_symlinked_shard_leaving_the_folder(tmp_path):
    outside = tmp_path / "secret.safetensors"
    save_file({"w": torch.zeros(2)}, str(outside))
    folder = tmp_path / "update"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(InputError, match="symbolic link"):
        CheckpointReader(folder)


def test_reader_refuses_a_truncated_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-0')
    with pytest.raises(InputError, match="truncated"):
        CheckpointReader(tmp_path)


def test_dir_checksum_changes_with_one_byte(tmp_path):
    save_file({"w": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    before = dir_sha256(tmp_path)
    (tmp_path / "config.json").write_text("{ }")
    assert dir_sha256(tmp_path) != before
