"""Transfer time and peak memory of the Flower message path for a payload of file bytes (not a test).

A ServerApp sends the files of a folder to one SuperNode as one message (:mod:`mpu.flower.files`, as
the MPU ServerApp sends a publication); the ClientApp writes them as a folder, reads them back and
replies with them (as an owner replies with its returns). Everything on 127.0.0.1; the processes'
peak resident memory is sampled every 0.2 s.

    PYTHONPATH=src python -m benchmarks.flower_transfer --mib 256 --files 2

prints the bytes, the round trip, and the peak RSS of SuperLink, SuperNode, ServerApp and ClientApp.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from mpu.flower.files import folder_to_record, record_bytes, record_to_folder

server_app = ServerApp()
client_app = ClientApp()
PROCESSES = ("flower-superlink", "flower-supernode", "flwr-serverapp", "flwr-clientapp")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def main() -> None:
    import psutil

    from tests.flower.cluster import LoopbackFederation

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="size of each file in MiB")
    parser.add_argument("--files", type=int, default=2, help="number of files (copies)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mpu-flower-transfer-"))
    payload = root / "payload"
    for index in range(1, args.files + 1):
        (payload / f"copy-{index}").mkdir(parents=True)
        (payload / f"copy-{index}" / "model.safetensors").write_bytes(os.urandom(args.mib << 20))
    app = root / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[project]\nname = "mpu-transfer-benchmark"\nversion = "0.1.0"\ndependencies = ["flwr>=1.42,<2"]\n\n'
        '[tool.flwr.app]\npublisher = "mpu"\n\n[tool.flwr.app.components]\n'
        'serverapp = "benchmarks.flower_transfer:server_app"\nclientapp = "benchmarks.flower_transfer:client_app"\n\n'
        '[tool.flwr.app.config]\nfolder = ""\n')
    (root / "run.toml").write_text(f"folder = {json.dumps(str(payload))}\n")
    peak: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for process in psutil.process_iter(["cmdline"]):
                try:
                    command = " ".join(process.info["cmdline"] or [])
                    for name in PROCESSES:
                        if name in command:
                            peak[name] = max(peak.get(name, 0.0), process.memory_info().rss / 2**20)
                except (psutil.Error, OSError):
                    pass
            time.sleep(0.2)

    federation = LoopbackFederation(root / "flower", ['role="owner"'])
    federation.env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), federation.env["PYTHONPATH"]])
    (root / "flower").mkdir()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with federation:
        started = time.perf_counter()
        result = federation.run(app, root / "run.toml", timeout=3600)
        wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    shutil.rmtree(root, ignore_errors=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if not lines:
        raise SystemExit(f"no result:\n{result.stdout[-3000:]}\n{federation.logs()}")
    print(json.dumps({**json.loads(lines[-1][6:]), "flwr_run_wall_s": round(wall, 1),
                      "peak_rss_mib": {name: round(value) for name, value in peak.items()}}, indent=1))


if __name__ == "__main__":
    main()
