"""MPU over Flower in simulation: `flwr run` against a SuperLink with Flower's simulation runtime (Ray),
two simulated data owners, m = 3, R = 2, on one machine. Slow (a minute or more: Ray's start and two
rounds of unlearning); run it with `pytest -m slow tests/flower/test_simulation.py`. Needs the
`simulation` extra (`pip install -e ".[simulation]"`: flwr[simulation], i.e. Ray)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from mpu.checkpoint import CheckpointReader
from mpu.flower import APP_DIR
from mpu.flower.owners import OWNERS_FILE
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.workdir import Workdir
from tests.conftest import FACTS, write_jsonl
from tests.flower.cluster import LoopbackFederation
from tests.flower.test_deployment import TRAINING, write_run_config

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray: pip install -e '.[simulation]'")]


def test_two_simulated_owners_three_copies_two_rounds(tmp_path, tiny_model_dir, forget_file):
    # arrange: the server's work directory as `mpu server init` leaves it; each simulated owner's
    # forget file named by its partition in the run config (simulated SuperNodes have no node config)
    second_forget = write_jsonl(tmp_path / "forget-2.jsonl", [{"question": q, "answer": a} for q, a in FACTS[3:5]])
    server, model_out, exchange = tmp_path / "server", tmp_path / "model", tmp_path / "exchange"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=3, kappa=0.05, rounds=2), progress=False)
    run_config = tmp_path / "run.toml"
    write_run_config(run_config, workdir=str(server), out=str(model_out), exchange=str(exchange), owners=2, timeout=600.0,
                     device="cpu", method="GradAscent", training=json.dumps(TRAINING),
                     **{"keep-exchange": True, "simulation-forget": f"{forget_file},{second_forget}"})

    # act: one simulation SuperLink; Flower simulates two SuperNodes with Ray
    with LoopbackFederation(tmp_path / "flower", [], simulation=True) as federation:
        result = federation.run(APP_DIR, run_config, timeout=900, federation_config="num-supernodes=2")
        logs = federation.logs()

    # assert: the same files as the CLI: the work directory's round state, and the exported model
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    assert "simulated SuperNodes" in result.stdout + result.stderr + logs
    state = Workdir(server).load()
    assert state.rounds_done == 2 and state.finished, f"{result.stdout}\n{logs}"
    assert [entry["round"] for entry in state.history] == [1, 2]
    assert all(entry["combine"]["rule"] == "harmonic" and len(entry["update_norms"]) == 3 for entry in state.history)
    for round_number in (1, 2):
        owners = json.loads((exchange / f"round-{round_number}" / "returns" / OWNERS_FILE).read_text())["owners"]
        assert sorted((owner["forget_rows"], owner["weight"]) for owner in owners) == [(2, 0.4), (3, 0.6)]
    exported, original = CheckpointReader(model_out), CheckpointReader(tiny_model_dir)
    assert sorted(exported.names()) == sorted(original.names())
    assert not torch.equal(exported.get("lm_head.weight"), original.get("lm_head.weight"))
    status = subprocess.run([sys.executable, "-m", "mpu.cli", "server", "status", "--workdir", str(server)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
