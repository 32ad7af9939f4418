"""The per-block poisoning bound: ||Delta_k,l|| / ||theta_l|| <= max_update_ratio for every block l
and every tensor outside the blocks. A genuine unlearning update passes; -0.95 x copy (which the
former whole-model bound of 1.0 x ||theta|| accepted) and a small update concentrated in one block are
refused, with every offending group reported."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from mpu.cli import main
from mpu.client.unlearn import unlearn_copies
from mpu.data.qa import load_qa_rows
from mpu.methods import training_options
from mpu.server.aggregate import block_ratio
from mpu.server.config import DEFAULT_MAX_UPDATE_RATIO, ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from mpu.server.workdir import Workdir
from mpu.checkpoint import CheckpointReader
from tests.server.hostile import refused
from tests.server.stand_in_client import write_returns

Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("poisoning")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=4), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    write_returns(root / "outbox", root / "good", lambda name, w: -0.01 * w)
    return root


def model_norm(published) -> float:
    work = Workdir(published / "server")
    reader = CheckpointReader(work.model_path(work.load()))
    return math.sqrt(sum(float(reader.get(name).pow(2).sum()) for name in reader.names()))


def poison_returns(published, returns, update):
    shutil.rmtree(returns)
    write_returns(published / "outbox", returns, update)


def test_minus_095_times_the_copy_is_refused_in_every_group(published, tmp_path, capsys):
    message = refused(published, tmp_path, lambda r, t: poison_returns(published, r, lambda name, w: -0.95 * w), capsys)
    assert "by more than the bound ||Delta_block|| / ||theta_block|| <= 0.5" in message
    for group in ("layer.0 0.95", "layer.1 0.95", "model.embed_tokens.weight 0.95", "model.norm.weight 0.95", "lm_head.weight 0.95"):
        assert group in message
    assert "copies [2] too" in message


def test_a_small_update_concentrated_in_one_block_is_refused_naming_it(published, tmp_path, capsys):
    # 0.5 x ||theta|| in total, all in one weight: the former whole-model bound (1.0 x ||theta||) accepted it.
    size = 0.5 * model_norm(published)
    update = lambda name, w: w / w.norm() * size if name == Q else torch.zeros_like(w)
    message = refused(published, tmp_path, lambda r, t: poison_returns(published, r, update), capsys)
    assert "1 group(s)" in message and "layer.0 " in message
    assert "layer.1" not in message


def test_a_tensor_outside_the_blocks_is_its_own_group(published, tmp_path, capsys):
    update = lambda name, w: -0.95 * w if name == "model.norm.weight" else torch.zeros_like(w)
    message = refused(published, tmp_path, lambda r, t: poison_returns(published, r, update), capsys)
    assert "model.norm.weight 0.95" in message
    assert "layer." not in message.split("max_update_ratio")[1]


def test_the_bound_is_configurable(tmp_path, tiny_model_dir, capsys):
    server = tmp_path / "server"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(server), "--copies", "2", "--seed", "1",
                 "--max-update-ratio", "2"]) == 0
    assert Workdir(server).load().config.max_update_ratio == 2.0
    publish(server, tmp_path / "outbox", progress=False)
    write_returns(tmp_path / "outbox", tmp_path / "returns", lambda name, w: -0.95 * w)
    capsys.readouterr()

    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(tmp_path / "returns")]) == 0
    assert "bound 2" in capsys.readouterr().out


def test_a_genuine_unlearning_update_passes_and_its_ratios_are_reported(published, tmp_path, forget_file, capsys):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    training = training_options({"epochs": 5, "learning_rate": 1e-3, "batch_size": 2})
    unlearn_copies(published / "outbox", load_qa_rows(forget_file), None, "NPO", {}, training, tmp_path / "returns")
    capsys.readouterr()

    code = main(["server", "aggregate", "--workdir", str(server), "--returns", str(tmp_path / "returns")])

    out = capsys.readouterr().out
    assert code == 0
    assert "largest per-block ratio ||Delta_block|| / ||theta_block|| = " in out and f"bound {DEFAULT_MAX_UPDATE_RATIO:g}" in out
    ratios = Workdir(server).load().history[-1]["max_block_ratio"]
    assert [entry["copy"] for entry in ratios] == [1, 2]
    assert all(0 < entry["ratio"] < DEFAULT_MAX_UPDATE_RATIO for entry in ratios)


def test_block_ratio():
    assert block_ratio(0.0, 0.0) == 0.0
    assert block_ratio(4.0, 16.0) == 0.5
    assert block_ratio(1.0, 0.0) == math.inf


def test_the_hydra_default_matches_the_server_default():
    from mpu.experiments import compose_config, settings_from_config

    cfg, _ = compose_config(["trainer=NPO"])
    assert cfg.mpu.max_update_ratio == ServerConfig().max_update_ratio == DEFAULT_MAX_UPDATE_RATIO
    assert settings_from_config(cfg).server.max_update_ratio == DEFAULT_MAX_UPDATE_RATIO
    assert json.loads(json.dumps(ServerConfig().to_dict()))["max_update_ratio"] == 0.5


MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """A round on a model of realistic proportions (hidden 512, weights of std 0.02, RMSNorm weights of
    0.3 as in trained LLMs): the norm weights are a small part of each block's norm."""
    from mpu.data.tokenizer import train_tokenizer
    from tests.conftest import FACTS, build_tiny_llama

    root = tmp_path_factory.mktemp("realistic")
    tokenizer = train_tokenizer([f"{q} {a}" for q, a in FACTS] * 4, vocab_size=320)
    model = build_tiny_llama(tokenizer, hidden_size=512, intermediate_size=1376, num_attention_heads=8, num_key_value_heads=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.mul_(0.3)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    init_server(root / "server", str(root / "model"), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=3), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    write_returns(root / "outbox", root / "good", lambda name, w: -0.01 * w)
    return root


@pytest.mark.parametrize("model, erased, named", [
    # every attention and MLP matrix of every block negated: 0.2 of a tiny block whose norm weights dominate it
    ("tiny", lambda name: any(f"{matrix}.weight" in name for matrix in MATRICES), "layers.0.self_attn.q_proj.weight 1"),
    # both RMSNorm weights of every block zeroed (the blocks then add nothing to the residual stream): 0.27 of a
    # realistic block
    ("realistic", lambda name: name.endswith("layernorm.weight"), "layers.0.input_layernorm.weight 1"),
], ids=["matrices-negated", "norms-zeroed"])
def test_an_update_erasing_one_kind_of_tensor_in_every_block_is_refused_per_tensor(request, tmp_path, capsys, model, erased,
                                                                                   named):
    root = request.getfixturevalue("published" if model == "tiny" else "realistic")
    update = lambda name, w: -w if erased(name) else torch.zeros_like(w)
    message = refused(root, tmp_path, lambda r, t: poison_returns(root, r, update), capsys)
    assert named in message and "for a tensor of a block ||Delta_t|| / ||theta_t|| <= 0.9" in message
    assert "layer.0 " not in message   # under the block's bound: the tensor's own bound refuses it


def test_a_tensor_is_measured_against_itself_unless_it_is_negligible_in_its_block():
    from mpu.server.aggregate import tensors_above

    # a zero bias next to a matrix is left to the block's bound (against its own norm, 0, any change would be an
    # infinite ratio); zeroing a norm weight is 1.0 of itself; half of the matrix is at the bound
    group = [("weight", 100.0, 100, [25.0]), ("bias", 0.0, 10, [0.01]), ("norm", 10.0, 10, [0.0])]
    assert tensors_above(group, 0, 110.0, 0.5) == []
    group[2] = ("norm", 10.0, 10, [10.0])
    assert tensors_above(group, 0, 110.0, 0.5) == [("norm", 1.0)]
    group[1] = ("bias", 0.05, 10, [0.01])   # RMS 0.07 of the block's 1.0: still negligible
    group[0] = ("weight", 100.0, 100, [26.0])
    assert tensors_above(group, 0, 110.0, 0.5) == [("weight", pytest.approx(0.51, rel=1e-3)), ("norm", 1.0)]
    group[1] = ("bias", 0.2, 10, [0.01])    # RMS 0.14: measured against itself (0.22)
    assert tensors_above(group, 0, 110.0, 0.2) == [("weight", pytest.approx(0.51, rel=1e-3)), ("bias", pytest.approx(0.2236, rel=1e-3)),
                                                   ("norm", 1.0)]
