"""MPU over Flower in deployment: a SuperLink and a SuperNode as separate processes on 127.0.0.1,
the copies and updates carried as Flower messages, the server's work directory and exported model
the same files the CLI writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mpu.checkpoint import CheckpointReader
from mpu.flower.owners import OWNERS_FILE
from mpu.flower import APP_DIR
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.workdir import Workdir
from tests.conftest import FACTS, write_jsonl
from tests.flower.cluster import LoopbackFederation

TRAINING = {"epochs": 1, "learning_rate": 1e-3}


def write_run_config(path, **values) -> None:
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))


def test_one_owner_two_copies_over_flower_matches_the_cli(tmp_path, tiny_model_dir, forget_file):
    # arrange: an initialised server work directory, as `mpu server init` leaves it
    server, model_out, exchange = tmp_path / "server", tmp_path / "model", tmp_path / "exchange"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=1), progress=False)
    run_config = tmp_path / "run.toml"
    write_run_config(run_config, workdir=str(server), out=str(model_out), exchange=str(exchange), owners=1, timeout=120.0,
                     method="GradAscent", training=json.dumps(TRAINING))
    run_config.write_text(run_config.read_text() + "keep-exchange = true\n")

    # act: one SuperLink (TLS, node authentication on), one registered SuperNode whose node config
    # names its own forget file, and one SuperNode without a registered key that asks to join
    with LoopbackFederation(tmp_path / "flower", [f'forget="{forget_file}"']) as federation:
        stranger, _, stranger_log = federation.start_supernode("stranger", f'forget="{forget_file}"', keyed=False,
                                                               extra=("--max-retries", "1"))
        result = federation.run(APP_DIR, run_config, timeout=240)
        stranger_code = stranger.wait(timeout=60)
        logs = federation.logs()

    # assert: the SuperLink served TLS only and refused the unregistered node
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    link_log = (tmp_path / "flower" / "superlink.log").read_text()
    assert "running on https://127.0.0.1" in link_log and "running on http://127.0.0.1" not in link_log, link_log[-2000:]
    assert stranger_code != 0 and "must be registered" in stranger_log.read_text(), stranger_log.read_text()[-2000:]
    # the round is done and the model exported, as with the CLI
    print("\n".join(line for line in result.stdout.splitlines() if "mpu.flower" in line or "round 1" in line or "wall seconds" in line))
    state = Workdir(server).load()
    assert state.rounds_done == 1 and state.finished, f"{result.stdout}\n{logs}"
    exported, original = CheckpointReader(model_out), CheckpointReader(tiny_model_dir)
    assert sorted(exported.names()) == sorted(original.names())
    assert not torch.equal(exported.get("model.layers.0.mlp.down_proj.weight"), original.get("model.layers.0.mlp.down_proj.weight"))

    # an update made over Flower equals the CLI's on the same copy with the same seed
    outbox, over_flower = exchange / "round-1" / "outbox", exchange / "round-1" / "owner-1"
    cli_returns = tmp_path / "cli-returns"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cli = subprocess.run([sys.executable, "-m", "mpu.cli", "client", "unlearn", "--inbox", str(outbox), "--forget", str(forget_file),
                          "--method", "GradAscent", "--epochs", "1", "--learning-rate", "1e-3", "--copy", "1", "--out", str(cli_returns)],
                         capture_output=True, text=True, env=env, timeout=180)
    assert cli.returncode == 0, cli.stderr
    flower_update, cli_update = CheckpointReader(over_flower / "update-1"), CheckpointReader(cli_returns / "update-1")
    assert sorted(flower_update.names()) == sorted(cli_update.names())
    for name in cli_update.names():
        torch.testing.assert_close(flower_update.get(name), cli_update.get(name), rtol=0, atol=1e-6, msg=name)
    assert any(cli_update.get(name).abs().max() > 0 for name in cli_update.names())
    flower_manifest = json.loads((over_flower / "update-1" / "update.json").read_text())
    assert flower_manifest["copy_sha256"] == json.loads((outbox / "manifest.json").read_text())["copies"][0]["sha256"]


@pytest.mark.slow
def test_two_owners_three_copies_two_rounds_over_flower(tmp_path, tiny_model_dir, forget_file):
    # arrange: two data owners with forget sets of 3 and 2 rows, each named only in its own node config
    second_forget = write_jsonl(tmp_path / "forget-2.jsonl", [{"question": q, "answer": a} for q, a in FACTS[3:5]])
    server, model_out, exchange = tmp_path / "server", tmp_path / "model", tmp_path / "exchange"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=3, kappa=0.05, rounds=2), progress=False)
    run_config = tmp_path / "run.toml"
    write_run_config(run_config, workdir=str(server), out=str(model_out), exchange=str(exchange), owners=2, timeout=300.0,
                     method="GradAscent", training=json.dumps(TRAINING))
    run_config.write_text(run_config.read_text() + "keep-exchange = true\n")

    # act
    with LoopbackFederation(tmp_path / "flower", [f'forget="{forget_file}"', f'forget="{second_forget}"']) as federation:
        result = federation.run(APP_DIR, run_config, timeout=600)
        logs = federation.logs()

    # assert: both rounds done, each round combined both owners' updates by forget-set size
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    state = Workdir(server).load()
    assert state.rounds_done == 2, f"{result.stdout}\n{logs}"
    for round_number in (1, 2):
        owners = json.loads((exchange / f"round-{round_number}" / "returns" / OWNERS_FILE).read_text())["owners"]
        assert sorted(owner["forget_rows"] for owner in owners) == [2, 3]
        assert sorted(owner["weight"] for owner in owners) == [0.4, 0.6]
        assert sorted(p.name for p in (exchange / f"round-{round_number}" / "returns").glob("update-*")) == ["update-1", "update-2", "update-3"]
    assert not torch.equal(CheckpointReader(model_out).get("lm_head.weight"), CheckpointReader(tiny_model_dir).get("lm_head.weight"))


@pytest.mark.slow
def test_an_owner_without_a_forget_file_fails_the_round_and_nothing_is_aggregated(tmp_path, tiny_model_dir):
    server = tmp_path / "server"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=1), progress=False)
    run_config = tmp_path / "run.toml"
    write_run_config(run_config, workdir=str(server), out=str(tmp_path / "model"), owners=1, timeout=120.0)

    with LoopbackFederation(tmp_path / "flower", ['retain="/nowhere"']) as federation:
        result = federation.run(APP_DIR, run_config, timeout=240)

    state = Workdir(server).load()
    assert state.rounds_done == 0
    assert not (tmp_path / "model").exists()
    assert "forget is required" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_round_goes_on_without_a_failing_owner_when_min_owners_allows(tmp_path, tiny_model_dir, forget_file):
    # arrange: two owners, one of them misconfigured (no forget file: its ClientApp replies with an error)
    server, exchange = tmp_path / "server", tmp_path / "exchange"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=1), progress=False)
    run_config = tmp_path / "run.toml"
    write_run_config(run_config, workdir=str(server), out=str(tmp_path / "model"), exchange=str(exchange), owners=2, timeout=240.0,
                     method="GradAscent", training=json.dumps(TRAINING), **{"min-owners": 1, "keep-exchange": True})

    # act
    with LoopbackFederation(tmp_path / "flower", [f'forget="{forget_file}"', 'retain="/nowhere"']) as federation:
        result = federation.run(APP_DIR, run_config, timeout=480)
        logs = federation.logs()

    # assert: the round was aggregated from the one owner that replied; the other is named in the log
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    assert Workdir(server).load().rounds_done == 1, f"{result.stdout}\n{logs}"
    assert "forget is required" in result.stdout + result.stderr
    assert len(list((exchange / "round-1").glob("owner-*"))) == 1 and not (exchange / "round-1" / "returns").exists()
    assert (tmp_path / "model").is_dir()
