"""How many CPU threads should torch use? A short tiny training with 1, 2, ... and torch's default.

    python benchmarks/threads.py                       # 1, 2 and torch's default, 3 rounds, ~2 min
    python benchmarks/threads.py --threads 1 2 4 0 --rounds 5 --authors 40

Each run is a fresh process (``mpu finetune --threads N``, 0 = torch's own default, one thread per
core) training the default tiny Llama for one epoch on a small built-in TOFU benchmark. The settings
are interleaved round by round, so that every setting sees the same background load; the table
gives the median training seconds and the ratio to one thread measured in the same run. Run it on
the machine as it is normally loaded: the point is how the settings compare under that load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(data: Path, out: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads) if threads else "", "MKL_NUM_THREADS": str(threads) if threads else ""}
    env = {key: value for key, value in env.items() if value != ""}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mpu.cli", "finetune", "--data", str(data), "--split", "full", "--out", str(out),
         "--epochs", "1", "--threads", str(threads), "--force", "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"finetune --threads {threads} failed:\n{result.stderr[-2000:]}")
    metrics = json.loads(result.stdout[result.stdout.index("{"):])
    return float(metrics["train_seconds"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0], help="settings; 0 = torch's default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--authors", type=int, default=30, help="built-in TOFU authors (10 QA each)")
    args = parser.parse_args()

    from mpu.data.builtin import build_benchmark

    with tempfile.TemporaryDirectory(prefix="mpu-threads-") as scratch:
        data = Path(scratch) / "bench"
        build_benchmark(data, authors=args.authors, facts=20, news=20, topics=8, shape="small")  # 10 QA per author
        times: dict[int, list[float]] = {n: [] for n in args.threads}
        walls: dict[int, list[float]] = {n: [] for n in args.threads}
        for round_number in range(args.rounds):
            for threads in args.threads:
                train, wall = run_once(data, Path(scratch) / f"m{threads}", threads)
                times[threads].append(train)
                walls[threads].append(wall)
                print(f"round {round_number + 1}: threads={threads or 'default'} train {train:.2f} s, process {wall:.2f} s",
                      flush=True)
    base = statistics.median(times[args.threads[0]])
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| threads | median train s | ratio to first | median process s |")
    print("|---|---|---|---|")
    for threads in args.threads:
        median = statistics.median(times[threads])
        print(f"| {threads or 'torch default'} | {median:.2f} | {median / base:.2f} | {statistics.median(walls[threads]):.2f} |")


if __name__ == "__main__":
    main()
