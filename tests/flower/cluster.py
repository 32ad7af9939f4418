"""A Flower deployment on the loopback interface for tests: one SuperLink, N SuperNodes, `flwr run`.

Every process is started here in its own session and stopped here by its process group; nothing
listens on anything but 127.0.0.1, and every wait is bounded. By default (``secure=True``) the
federation is set up as between organisations (docs/flower.md): the SuperLink serves TLS with a
throwaway CA's certificate for 127.0.0.1 and admits only registered SuperNodes
(``--enable-supernode-auth``); each SuperNode verifies the SuperLink against that CA
(``--root-certificates``) and signs its requests with its own EC key, whose public half was
registered with ``flwr supernode register``. ``secure=False`` runs everything ``--insecure``.
``simulation=True`` starts a SuperLink with Flower's simulation runtime (Ray) and no SuperNodes:
``run(..., federation_config="num-supernodes=2")`` then simulates them on this machine.

One federation runs at a time on a machine: pytest-xdist workers (and concurrent pytest sessions)
wait for a file lock, so federations never compete for the cores their start-up timeouts assume.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from filelock import FileLock

import mpu
from tests.flower.credentials import make_node_keys, make_server_certificates

BIN = Path(sys.executable).parent
SRC = Path(mpu.__file__).resolve().parents[1]
ONE_AT_A_TIME = Path(tempfile.gettempdir()) / "mpu-tests-flower-federation.lock"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(roots: set[int]) -> list[int]:
    """Every live process below ``roots`` (read from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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

    def __init__(self, root: Path, node_configs: list[str], start_timeout: float = 60.0, secure: bool = True,
                 simulation: bool = False):
        self.root = root
        self.node_configs = node_configs
        self.start_timeout = start_timeout
        self.secure = secure and not simulation
        self.simulation = simulation
        self.processes: list[subprocess.Popen] = []
        self.credentials = root / "credentials"  # fresh for each federation, under the test's tmp_path
        self.home = root / "flwr-home"
        self.port = free_port()
        self.lock = FileLock(str(ONE_AT_A_TIME))
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
        self.lock.acquire()
        try:
            return self._start_federation()
        except BaseException:
            self.lock.release()
            raise

    def _start_federation(self) -> "LoopbackFederation":
        self.home.mkdir(parents=True, exist_ok=True)
        connection = f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\n'
        link_args = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.simulation:
            link_args.append("--simulation")
        if self.secure:
            certificates = make_server_certificates(self.credentials / "superlink")
            connection += f'root-certificates = "{certificates.ca}"\n'
            link_args += ["--ssl-ca-certfile", str(certificates.ca), "--ssl-certfile", str(certificates.cert),
                          "--ssl-keyfile", str(certificates.key), "--enable-supernode-auth"]
        else:
            connection += "insecure = true\n"
            link_args.append("--insecure")
        (self.home / "config.toml").write_text(connection)
        try:
            link, log = self._start("superlink", link_args)
            wait_for_port(self.port, link, log, self.start_timeout)
            for index, node_config in enumerate(self.node_configs, start=1):
                node, node_port, log = self.start_supernode(f"supernode-{index}", node_config)
                wait_for_port(node_port, node, log, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_supernode(self, name: str, node_config: str = "", keyed: bool = True,
                        extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int, Path]:
        """Start one SuperNode. Secure: it trusts the test CA and, when ``keyed``, signs with its own
        key, registered first; unkeyed, it asks the SuperLink to register it (refused with node auth)."""
        node_port = free_port()
        args = ["flower-supernode", "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port", str(node_port), *extra]
        if node_config:
            args += ["--node-config", node_config]
        if self.secure:
            args += ["--root-certificates", str(self.credentials / "superlink" / "ca.crt")]
            if keyed:
                private, public = make_node_keys(self.credentials / "supernodes", name)
                self.flwr("supernode", "register", str(public), "loopback", timeout=self.start_timeout)
                args += ["--auth-supernode-private-key", str(private)]
        else:
            args.append("--insecure")
        node, log = self._start(name, args)
        return node, node_port, log

    def flwr(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """One ``flwr`` CLI command against this federation; RuntimeError when it fails."""
        result = subprocess.run([str(BIN / "flwr"), *args], capture_output=True, text=True, env=self.env, cwd=self.root, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def run(self, app_dir: Path, run_config: Path, timeout: float, federation_config: str = "") -> subprocess.CompletedProcess:
        """``flwr run APP loopback --stream --run-config FILE [--federation-config ...]``; waits for the run's end (bounded)."""
        extra = ["--federation-config", federation_config] if federation_config else []
        return subprocess.run([str(BIN / "flwr"), "run", str(app_dir), "loopback", "--stream", "--run-config", str(run_config), *extra],
                              capture_output=True, text=True, env=self.env, cwd=self.root, timeout=timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        # The SuperLink/SuperNode start their SuperExec (and, in simulation, Ray) in sessions of their
        # own: collect every descendant first, while the parent links still exist, and stop those too.
        started = {process.pid for process in self.processes}
        for pid in descendants(started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
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
        try:
            self.stop()
        finally:
            self.lock.release()
