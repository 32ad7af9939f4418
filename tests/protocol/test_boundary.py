"""The party boundary in the imports: the client never imports the server, and the protocol imports
only mpu.checkpoint and mpu.errors of the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def imported_after(*modules: str) -> set[str]:
    """The mpu modules loaded after importing ``modules`` in a fresh interpreter."""
    code = ";".join(f"import {module}" for module in modules) + ";import sys,json;print(json.dumps(sorted(m for m in sys.modules if m == 'mpu' or m.startswith('mpu.'))))"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=300)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_client_never_imports_the_server():
    loaded = imported_after("mpu.client", "mpu.client.inbox", "mpu.client.update", "mpu.client.unlearn")

    assert "mpu.client.unlearn" in loaded and "mpu.protocol" in loaded
    assert not {module for module in loaded if module == "mpu.server" or module.startswith("mpu.server.")}


def test_the_protocol_imports_only_checkpoint_and_errors():
    loaded = imported_after("mpu.protocol")

    allowed = {"mpu", "mpu.errors", "mpu.protocol", "mpu.checkpoint"}
    assert "mpu.protocol.keys" in loaded
    assert {module for module in loaded if module not in allowed and module.rsplit(".", 1)[0] not in allowed} == set()
