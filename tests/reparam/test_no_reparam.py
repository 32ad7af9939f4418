"""``--no-reparam`` end to end for one tiny model per decoder family, through the CLI (``mpu.cli.main``):
server init -> publish -> client unlearn (one step per copy) -> aggregate -> export.

The client must return its update under the copy's on-disk names and shapes, even where
transformers renames (Pythia ``embed_out`` -> ``lm_head``) or fuses (MoE experts) tensors on load.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from mpu.checkpoint import CheckpointReader
from mpu.cli import main
from mpu.client.update import checkpoint_tensors, write_dense_update
from mpu.errors import MPUError
from test_blocks import FAMILIES, save_family_model

@pytest.fixture()
def model_dir(tmp_path, tiny_tokenizer):
    def make(family: str):
        path = tmp_path / f"{family}-model"
        save_family_model(family, path, vocab_size=len(tiny_tokenizer), pad=tiny_tokenizer.pad_token_id,
                          bos=tiny_tokenizer.bos_token_id, eos=tiny_tokenizer.eos_token_id)
        tiny_tokenizer.save_pretrained(path)
        return path

    return make


def _mpu(*args) -> None:
    code = main([str(arg) for arg in args])
    assert code == 0, f"mpu {' '.join(map(str, args))} exited {code}"


@pytest.mark.parametrize("family", sorted(FAMILIES))  # about 2 s each on one CPU thread
def test_no_reparam_round_trip(family, tmp_path, model_dir, forget_file):
    source = model_dir(family)
    server, outbox, returns, final = (tmp_path / name for name in ("server", "outbox", "returns", "final"))

    _mpu("server", "init", "--model", source, "--no-reparam", "--copies", 2, "--kappa", 0.05, "--rounds", 1,
         "--workdir", server)
    _mpu("server", "publish", "--workdir", server, "--out", outbox)
    _mpu("client", "unlearn", "--inbox", outbox, "--forget", forget_file, "--method", "GradAscent", "--max-steps", 1,
         "--batch-size", 2, "--learning-rate", 1e-3, "--out", returns)
    _mpu("server", "aggregate", "--workdir", server, "--returns", returns)
    _mpu("server", "export", "--workdir", server, "--out", final)

    original, copy = CheckpointReader(source), CheckpointReader(outbox / "copy-1")
    for k in (1, 2):  # the update carries exactly the copy's on-disk names and shapes
        update = CheckpointReader(returns / f"update-{k}")
        assert update.names() == copy.names()
        assert all(update.shape(name) == copy.shape(name) for name in copy.names())
    exported = CheckpointReader(final)
    assert exported.names() == original.names()
    changed = [name for name in original.names() if not torch.equal(exported.get(name), original.get(name))]
    assert changed, "the round trip left the model as it was"
    transformers.AutoModelForCausalLM.from_pretrained(final)  # loads


def _copy_and_model(tmp_path, family: str):
    """A 'copy' folder (the checkpoint as saved) and the model loaded from it, as the client has them."""
    path = save_family_model(family, tmp_path / family)
    return path, transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.mark.parametrize("family", ["gpt_neox", "mixtral", "qwen2_moe"])
def test_update_is_written_under_the_copys_on_disk_names(family, tmp_path):
    copy_dir, model = _copy_and_model(tmp_path, family)
    on_disk = CheckpointReader(copy_dir).names()
    assert not set(on_disk) <= set(model.state_dict())  # transformers renamed or fused something on load
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    write_dense_update(model, copy_dir, tmp_path / "update", {"round": 1})
    update = CheckpointReader(tmp_path / "update")
    assert update.names() == on_disk
    for name in on_disk:  # every tensor moved by exactly the +1 (tied tensors count once per tie)
        assert torch.allclose(update.get(name), torch.ones(update.shape(name)), atol=1e-5), name


def test_checkpoint_tensors_reverses_the_expert_fusion(tmp_path):
    copy_dir, model = _copy_and_model(tmp_path, "mixtral")
    tensors = checkpoint_tensors(model)
    copy = CheckpointReader(copy_dir)
    for name in copy.names():
        assert torch.equal(tensors[name], copy.get(name)), name


def test_a_trained_model_of_another_shape_is_refused(tmp_path):
    copy_dir, _ = _copy_and_model(tmp_path, "llama")
    other = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(
        **{**FAMILIES["llama"][1], "intermediate_size": 40}, vocab_size=97))
    with pytest.raises(MPUError, match="differ in shape.*mlp"):
        write_dense_update(other, copy_dir, tmp_path / "update", {"round": 1})
    assert not (tmp_path / "update").exists()


def test_lora_factors_take_the_on_disk_name(tmp_path):
    from mpu.client.update import write_lora_update

    _, model = _copy_and_model(tmp_path, "gpt_neox")
    factors = {"lm_head.weight": (torch.ones(97, 1), torch.ones(1, 32)),
               "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": (torch.ones(48, 1), torch.ones(1, 32))}
    write_lora_update(factors,
                      tmp_path / "update", {"round": 1}, model)
    assert CheckpointReader(tmp_path / "update").names() == [
        "embed_out.weight.lora_A", "embed_out.weight.lora_B",
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight.lora_A", "gpt_neox.layers.0.mlp.dense_h_to_4h.weight.lora_B"]


def test_lora_factor_of_a_fused_expert_tensor_is_refused(tmp_path):
    from mpu.client.update import checkpoint_names

    _, model = _copy_and_model(tmp_path, "mixtral")
    assert checkpoint_names(model, ["model.layers.0.self_attn.q_proj.weight"]) == {
        "model.layers.0.self_attn.q_proj.weight": "model.layers.0.self_attn.q_proj.weight"}
    with pytest.raises(MPUError, match="experts"):
        checkpoint_names(model, ["model.layers.0.mlp.experts.down_proj"])
