"""Secure aggregation in deployment: a SuperLink and two SuperNodes on 127.0.0.1, ``secagg = true``.
The owners' updates stay in their SuperNodes' state between the unlearning message and the SecAgg+
stages; the server's exchange folder holds only their manifests and the summed returns."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.checkpoint import CheckpointReader
from mpu.flower import APP_DIR
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.workdir import Workdir
from tests.conftest import FACTS, write_jsonl
from tests.flower.cluster import LoopbackFederation
from tests.flower.test_deployment import TRAINING, write_run_config


@pytest.mark.slow
def test_two_owners_over_flower_with_secure_aggregation(tmp_path, tiny_model_dir, forget_file):
    # arrange: two owners (3 and 2 forget rows), m = 2, one round, SecAgg+ on
    second_forget = write_jsonl(tmp_path / "forget-2.jsonl", [{"question": q, "answer": a} for q, a in FACTS[3:5]])
    server, model_out, exchange = tmp_path / "server", tmp_path / "model", tmp_path / "exchange"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=1), progress=False)
    run_config = tmp_path / "run.toml"
    write_run_config(run_config, workdir=str(server), out=str(model_out), exchange=str(exchange), owners=2, timeout=300.0,
                     method="GradAscent", training=json.dumps(TRAINING), secagg=True)
    run_config.write_text(run_config.read_text() + "keep-exchange = true\n")

    # act
    with LoopbackFederation(tmp_path / "flower", [f'forget="{forget_file}" secagg="required"',
                                                  f'forget="{second_forget}" secagg="required"']) as federation:
        result = federation.run(APP_DIR, run_config, timeout=600)
        logs = federation.logs()

    # assert: the round was aggregated from the secure sum; the server never stored an owner's tensors
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    assert Workdir(server).load().rounds_done == 1, f"{result.stdout}\n{logs}"
    round_dir = exchange / "round-1"
    assert json.loads((round_dir / "returns" / "secagg.json").read_text())["forget_rows_total"] == 5
    for owner in ("owner-1", "owner-2"):
        files = sorted(p.relative_to(round_dir / owner).as_posix() for p in (round_dir / owner).rglob("*") if p.is_file())
        assert files == ["update-1/update.json", "update-2/update.json"]
    summed = CheckpointReader(round_dir / "returns" / "update-1")
    assert float(summed.get("lm_head.weight").abs().max()) > 0
    assert not torch.equal(CheckpointReader(model_out).get("lm_head.weight"), CheckpointReader(tiny_model_dir).get("lm_head.weight"))
    print("\n".join(line for line in (result.stdout + logs).splitlines() if "secure sum" in line or "wall seconds" in line))
