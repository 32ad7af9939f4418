"""`torchrun --nproc_per_node 2 -m mpu.cli client unlearn` on the CPU (gloo) gives valid updates."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_each_copy_and_the_server_accepts_the_updates(tmp_path, tiny_model_dir, forget_file):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    init_server(tmp_path / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.01), progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPU_CACHE": str(tmp_path / "cache")}
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "mpu.cli", "-v", "client", "unlearn",
               "--inbox", str(tmp_path / "outbox"), "--forget", str(forget_file), "--method", "GradAscent",
               "--epochs", "2", "--learning-rate", "1e-3", "--batch-size", "1", "--out", str(tmp_path / "returns")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the two processes share one private copy of the publication, removed at the end
    assert result.stderr.count("private copy of ") == 1, result.stderr[-3000:]
    assert list((tmp_path / "cache" / "received").iterdir()) == []

    manifest = json.loads((tmp_path / "returns" / "update-1" / "update.json").read_text())
    # 3 forget rows, batch 1, 2 epochs: one process takes 6 steps; two share the batches
    assert 0 < manifest["steps"] < 6
    aggregate(tmp_path / "server", tmp_path / "returns", progress=False)
