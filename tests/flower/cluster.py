"""A Flower deployment on the loopback interface for tests: one SuperLink, N SuperNodes, `flwr run`.

Every process is started here in its own session and stopped here by its process group; nothing
listens on anything but 127.0.0.1, and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mpu

BIN = Path(sys.executable).parent
SRC = Path(mpu.__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s:\n{log.read_text()[-3000:]}")


class LoopbackFederation:
    """``with LoopbackFederation(tmp, [node_config, ...]) as fed: fed.run(app_dir, run_config_toml)``."""

    def __init__(self, root: Path, node_configs: list[str], start_timeout: float = 60.0):
        self.root = root
        self.node_configs = node_configs
        self.start_timeout = start_timeout
        self.processes: list[subprocess.Popen] = []
        self.home = root / "flwr-home"
        self.port = free_port()
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false"}

    def _start(self, name: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=handle, stderr=subprocess.STDOUT, env=self.env,
                                       cwd=self.root, start_new_session=True)
        self.processes.append(process)
        return process, log

    def __enter__(self) -> "LoopbackFederation":
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        try:
            link, log = self._start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                                                  "--disable-runtime-dependency-installation"])
            wait_for_port(self.port, link, log, self.start_timeout)
            for index, node_config in enumerate(self.node_configs, start=1):
                node_port = free_port()
                node, log = self._start(f"supernode-{index}", [
                    "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                    "--port", str(node_port), "--node-config", node_config])
                wait_for_port(node_port, node, log, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, app_dir: Path, run_config: Path, timeout: float) -> subprocess.CompletedProcess:
        """``flwr run APP loopback --stream --run-config FILE``; waits for the run's end (bounded)."""
        return subprocess.run([str(BIN / "flwr"), "run", str(app_dir), "loopback", "--stream", "--run-config", str(run_config)],
                              capture_output=True, text=True, env=self.env, cwd=self.root, timeout=timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def __exit__(self, *exc) -> None:
        self.stop()
