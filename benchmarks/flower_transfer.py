"""Transfer time and peak memory of the Flower message path against the CLI's file exchange (not a test).

The payload imitates a publication's folder: ``manifest.json`` and ``copy-K/model.safetensors`` for
K = 1..m, each a valid safetensors file holding one float32 tensor of ``--model-params`` random
values (transfer is content-independent), so each copy is exactly one model's weight bytes plus a
~100-byte header.

Flower path: a ServerApp sends the folder's files to one SuperNode as one message
(:mod:`mpu.flower.files`, as the MPU ServerApp sends a publication); the ClientApp writes them as a
folder, reads them back and replies with them (as an owner replies with its returns); the ServerApp
writes the reply as a folder. One SuperLink, one SuperNode, TLS and SuperNode authentication, all on
127.0.0.1 (``tests/flower/cluster.py``). Each process's peak resident memory is sampled every 0.2 s.

File exchange, in the same run, in a fresh Python process of its own: what the two-party CLI does
between machines that share a file system. The outbox is copied as the owner's inbox
(``shutil.copytree``) and every byte read back with SHA-256 (:func:`mpu.checkpoint.dir_sha256`, the
check the client makes against the manifest); then the inbox is copied back as the server's returns
folder and hashed again. Its peak RSS is the process's ``ru_maxrss``.

    PYTHONPATH=src:. nice python benchmarks/flower_transfer.py --model-params 254e6 --copies 1

(run as a script: opacus installs a top-level package named ``benchmarks`` that hides this folder
from ``python -m``; the Flower apps load this file from a copy in the app folder, under
:data:`APP_MODULE`) prints one table row (markdown) and the full measurements as JSON. Before the federation starts,
the run is refused (exit 2) when the estimated peak memory of all four Flower processes
(``--multiple`` x payload) exceeds ``--memory-fraction`` of the memory available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from mpu.checkpoint import dir_sha256
from mpu.flower.files import folder_to_record, record_bytes, record_to_folder

REPO = Path(__file__).resolve().parents[1]
APP_MODULE = "mpu_transfer_benchmark"  # this file's name inside the app folder the Flower processes load
server_app = ServerApp()
client_app = ClientApp()
PROCESSES = {"flower-superlink": "SuperLink", "flower-supernode": "SuperNode", "flwr-serverapp": "ServerApp",
             "flwr-clientapp": "ClientApp"}
BLOCK = 64 << 20  # random bytes are written in blocks of 64 MiB, so the writer never holds a model


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_safetensors(path: Path, n_params: int) -> int:
    """A safetensors file with one float32 tensor ``weight`` of shape ``(n_params,)`` and random bytes.

    Written block by block (:data:`BLOCK`). Returns the file's size in bytes: 8 + header + 4 n_params.
    """
    header = json.dumps({"weight": {"dtype": "F32", "shape": [n_params], "data_offsets": [0, 4 * n_params]}}).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to a multiple of 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        left = 4 * n_params
        while left:
            block = min(left, BLOCK)
            handle.write(os.urandom(block))
            left -= block
    return 8 + len(header) + 4 * n_params


def write_payload(folder: Path, n_params: int, copies: int) -> int:
    """A publication-like folder of ``copies`` model-sized safetensors files; returns its total bytes."""
    folder.mkdir(parents=True)
    manifest = json.dumps({"copies": [f"copy-{k}" for k in range(1, copies + 1)], "model_params": n_params}).encode()
    (folder / "manifest.json").write_bytes(manifest)
    total = len(manifest)
    for k in range(1, copies + 1):
        (folder / f"copy-{k}").mkdir()
        total += write_safetensors(folder / f"copy-{k}" / "model.safetensors", n_params)
    return total


def file_exchange(outbox: Path, work: Path) -> dict:
    """The CLI's exchange on one file system: outbox -> inbox (copy, SHA-256), inbox -> returns (same).

    Returns seconds per direction, the SHA-256 of both sides (equal), this process's RSS before the
    first copy and its peak RSS, in MiB.
    Raises RuntimeError when a copy does not hash as its source.
    """
    import psutil

    start_rss = psutil.Process().memory_info().rss / 2**20
    started = time.perf_counter()
    inbox = Path(shutil.copytree(outbox, work / "inbox"))
    inbox_sha = dir_sha256(inbox)
    forward = time.perf_counter()
    returns = Path(shutil.copytree(inbox, work / "returns"))
    returns_sha = dir_sha256(returns)
    back = time.perf_counter()
    if inbox_sha != returns_sha:
        raise RuntimeError(f"{returns}: SHA-256 {returns_sha} differs from the inbox's {inbox_sha}")
    return {"forward_s": forward - started, "back_s": back - forward, "round_trip_s": back - started,
            "sha256": inbox_sha, "start_rss_mib": start_rss, "maxrss_mib": _max_rss_mib()}


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    while not list(grid.get_node_ids()):
        time.sleep(0.5)
    node = sorted(grid.get_node_ids())[0]
    started = time.perf_counter()
    record = folder_to_record(str(context.run_config["folder"]))
    sent = time.perf_counter()
    (reply,) = grid.send_and_receive([Message(RecordDict({"files": record}), dst_node_id=node, message_type="train")], timeout=3600)
    received = time.perf_counter()
    record_to_folder(reply.content["files"], Path(str(context.run_config["folder"]) + "-back"))
    print("BENCH " + json.dumps({"bytes": record_bytes(record), "read_s": sent - started, "round_trip_s": received - sent,
                                 "write_s": time.perf_counter() - received, "serverapp_maxrss_mib": _max_rss_mib(),
                                 "client": dict(reply.content["stats"])}), flush=True)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = record_to_folder(msg.content["files"], Path(scratch) / "inbox")
        written = time.perf_counter()
        back = folder_to_record(folder)
    stats = ConfigRecord({"write_s": written - started, "clientapp_maxrss_mib": _max_rss_mib()})
    return Message(RecordDict({"files": back, "stats": stats}), reply_to=msg)


def _python_path() -> str:
    return os.pathsep.join([str(REPO / "src"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


def _flower_round(root: Path, payload: Path) -> tuple[dict, dict[str, float], float]:
    """One send-and-reply of ``payload`` through a loopback federation: (BENCH json, peak RSS MiB by party, wall s)."""
    import psutil

    sys.path.insert(0, str(REPO))
    from tests.flower.cluster import LoopbackFederation

    app = root / "app"
    app.mkdir()
    shutil.copyfile(__file__, app / f"{APP_MODULE}.py")
    (app / "pyproject.toml").write_text(
        '[project]\nname = "mpu-transfer-benchmark"\nversion = "0.1.0"\ndependencies = ["flwr>=1.42,<2"]\n\n'
        '[tool.flwr.app]\npublisher = "mpu"\n\n[tool.flwr.app.components]\n'
        f'serverapp = "{APP_MODULE}:server_app"\nclientapp = "{APP_MODULE}:client_app"\n\n'
        '[tool.flwr.app.config]\nfolder = ""\n')
    (root / "run.toml").write_text(f"folder = {json.dumps(str(payload))}\n")
    peak: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for process in psutil.process_iter(["cmdline"]):
                try:
                    command = " ".join(process.info["cmdline"] or [])
                    for name, party in PROCESSES.items():
                        if name in command:
                            peak[party] = max(peak.get(party, 0.0), process.memory_info().rss / 2**20)
                except (psutil.Error, OSError):
                    pass
            time.sleep(0.2)

    (root / "flower").mkdir()
    federation = LoopbackFederation(root / "flower", ['role="owner"'])
    federation.env["PYTHONPATH"] = _python_path()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with federation:
            started = time.perf_counter()
            result = federation.run(app, root / "run.toml", timeout=3600)
            wall = time.perf_counter() - started
            lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
            if not lines:
                raise SystemExit(f"no result:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{federation.logs()}")
    finally:
        stop.set()
        watcher.join()
    return json.loads(lines[-1][6:]), peak, wall


def table(row: dict) -> str:
    """The measurements as a markdown table: one row, peak RSS in GiB and as a multiple of the payload."""
    payload = row["bytes"]
    parties = ["SuperLink", "SuperNode", "ServerApp", "ClientApp"]
    gib = {party: row["peak_rss_mib"].get(party, 0.0) / 1024 for party in parties}
    copy_gib = row["file_exchange"]["maxrss_mib"] / 1024
    head = ("| payload | Flower round trip | file exchange round trip | ratio | peak RSS GiB (× payload): "
            + " | ".join(parties) + " | file-copy process |")
    cells = [f"{row['copies']} × {row['model_params'] / 1e6:.0f}M float32 = {payload:,} B",
             f"{row['flower']['round_trip_s']:.1f} s", f"{row['file_exchange']['round_trip_s']:.1f} s",
             f"{row['ratio']:.1f}",
             *(f"{gib[party]:.2f} ({gib[party] * 2**30 / payload:.1f}×)" for party in parties),
             f"{copy_gib:.3f} ({copy_gib * 2**30 / payload:.2f}×)"]
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1), "| " + " | ".join(cells) + " |"])


def main() -> None:
    import psutil

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # every process of the run: one thread for torch/BLAS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-params", type=float, default=254e6, help="parameters per copy (float32: 4 bytes each)")
    parser.add_argument("--copies", type=int, default=1, help="m, the number of model-sized copies in the payload")
    parser.add_argument("--multiple", type=float, default=13.0,
                        help="estimated peak RSS of the four Flower processes together, in payloads (measured 12.5 at 512 MiB)")
    parser.add_argument("--memory-fraction", type=float, default=0.8, help="refuse a run estimated above this share of available memory")
    parser.add_argument("--exchange", nargs=2, metavar=("OUTBOX", "WORK"), help=argparse.SUPPRESS)  # the file-copy process
    args = parser.parse_args()
    if args.exchange:
        print(json.dumps(file_exchange(Path(args.exchange[0]), Path(args.exchange[1]))))
        return
    n_params = int(args.model_params)
    if n_params < 1 or args.copies < 1:
        print("mpu: --model-params and --copies must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    need = args.multiple * (4 * n_params * args.copies)
    available = psutil.virtual_memory().available
    if need > args.memory_fraction * available:
        print(f"mpu: the Flower processes would need about {need / 2**30:.1f} GiB ({args.multiple:g} × the payload), "
              f"more than {args.memory_fraction:g} of the {available / 2**30:.1f} GiB available; not run", file=sys.stderr)
        raise SystemExit(2)
    root = Path(tempfile.mkdtemp(prefix="mpu-flower-transfer-"))
    try:
        payload = root / "payload"
        total = write_payload(payload, n_params, args.copies)
        (root / "exchange").mkdir()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--exchange", str(payload), str(root / "exchange")],
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": _python_path()})
        exchange = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.rmtree(root / "exchange")
        flower, peak, wall = _flower_round(root, payload)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row = {"model_params": n_params, "copies": args.copies, "bytes": total, "flower": flower, "flwr_run_wall_s": round(wall, 1),
           "peak_rss_mib": {party: round(value) for party, value in peak.items()}, "file_exchange": exchange,
           "ratio": flower["round_trip_s"] / exchange["round_trip_s"]}
    print(table(row))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
