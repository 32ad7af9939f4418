"""The sweep behind docs/results.md: MPU against the noise-free baseline on the built-in benchmark.

    python benchmarks/claim_sweep.py --out runs/claim --workers 2 --split forget01,forget10   # the paper's regime
    mpu report runs/claim/forget01 --out docs/results/forget01
    mpu report runs/claim/forget10 --out docs/results/forget10

The paper's regime is the default: the built-in target and retain model are a base model (general
data, no fictitious author) fine-tuned on the benchmark, and the server's noise is a fraction of the
task vector, sigma_l = kappa * RMS(theta_l - theta_base,l) (``mpu.sigma_from=task-vector``).
``--sigma-from weights`` reruns everything with sigma_l = kappa * RMS(theta_l) (no base): the
harsher regime of the earlier results, a CONTROL; the ``control-weights`` group runs just its MPU cells
next to the paper's. ``--shape release`` uses data of the real release's shape with the cpu-release
model preset (much slower).

It runs ``src/train.py`` Hydra multiruns (one per method and setting, so two workers can share the
cores), each in its own sweep folder under ``--out/<split>/``:

- ``baseline``: the noise-free baseline, R·E epochs, seeds 0, 1, 2;
- ``mpu-k0.01``, ``mpu-k0.1``: MPU with m = 3 at κ = 0.01 and 0.1, seeds 0, 1, 2 (the paper preset of the default
  experiment: the public α schedule on [1, 2], no independent noise, the paper's (R, E) per method);
- ``control-k0``: κ = 0: the protocol without noise (copies, reparameterisation, rounds);
- ``control-k0-noreparam``: κ = 0 without reparameterisation: what remains is m data orders averaged
  and the optimizer restarted each round;
- ``control-moving-reference``: κ = 0.01 with each round's copy as the reference model (NPO, DPO, UNDIAL),
  against the default fixed reference model (round 1's copies);
- ``control-weights``: κ = 0.01 and 0.1 with σ from the whole weights (no base): the old, harsher regime.

The learning rate of each method is the experiment's calibrated one (``tiny_learning_rates`` in
configs/experiment/unlearn/tofu/default.yaml). ``--dry-run`` prints the commands. ``--groups`` redoes
some folders only (e.g. everything but ``baseline`` after a client change); folders that already
hold runs are refused unless ``--overwrite`` removes them first, so no stale run reaches the report.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ["GradAscent", "GradDiff", "NPO", "SimNPO", "DPO", "UNDIAL", "SatImp", "WGA"]
REFERENCE_MODEL_METHODS = ["NPO", "DPO", "UNDIAL"]
MANY_ROUNDS = {"SimNPO", "DPO", "SatImp"}  # R = 10: the slowest runs go first

# Evaluation trimmed for time: the MIA metrics other than MinK (privleak needs it) are dropped and
# ROUGE generation stops at 48 new tokens (answers are 10-30 tokens).
EVAL = [
    "~eval.metrics.mia_gradnorm", "~eval.metrics.mia_reference", "~eval.metrics.mia_zlib", "~eval.metrics.mia_loss",
    "~eval.metrics.mia_min_k_plus_plus", *[f"eval.metrics.{name}_Q_A_ROUGE.max_new_tokens=48" for name in ("forget", "retain", "ra", "wf")],
]


GROUPS = ["baseline", "mpu-k0.01", "mpu-k0.1", "control-k0", "control-k0-noreparam", "control-moving-reference",
          "control-weights"]
SPLITS = ("forget01", "forget05", "forget10")
SIGMA_FROM = ("task-vector", "weights")
SHAPES = ("small", "release")


def commands(out: Path, seeds: str, python: str, groups: list[str] | None = None, splits: tuple[str, ...] = ("forget10",),
             sigma_from: str = "task-vector", shape: str = "small") -> list[tuple[float, list[str]]]:
    """(estimated cost, argv) for every multirun of ``groups`` (default: all) on each forget split in
    ``splits`` (runs under ``out/<split>/<group>/<method>``); longest first. Raises ``ValueError`` for
    an unknown split, sigma_from (the noise scale's basis) or shape."""
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if sigma_from not in SIGMA_FROM:
        raise ValueError(f"unknown sigma_from {sigma_from!r}; choose from {', '.join(SIGMA_FROM)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    jobs = []
    regime = [f"mpu.sigma_from={sigma_from}"]
    if shape == "release":
        regime += ["benchmark.shape=release", "model=tiny-llama-cpu-release"]

    def add(folder: str, method: str, cost: float, *overrides: str) -> None:
        if groups is not None and folder not in groups:
            return
        for split in splits:
            data = [f"data.forget_split={split}", f"data.retain_split=retain{100 - int(split[-2:])}"]
            argv = [python, "src/train.py", "-m", f"hydra.sweep.dir={out / split / folder / method}", f"trainer={method}",
                    "threads=1", "save_model=false", *data, *regime, *overrides, *EVAL]
            jobs.append((cost, argv))

    n_seeds = len(seeds.split(","))
    for method in METHODS:
        rounds = 10 if method in MANY_ROUNDS else 2
        add("baseline", method, 20 * n_seeds, "mpu.enabled=false", f"seed={seeds}")
        for kappa in ("0.01", "0.1"):
            add(f"mpu-k{kappa}", method, 10 * rounds * n_seeds, f"mpu.kappa={kappa}", f"seed={seeds}")
        add("control-k0", method, 10 * rounds * n_seeds, "mpu.kappa=0", f"seed={seeds}")
        add("control-k0-noreparam", method, 10 * rounds * n_seeds, "mpu.kappa=0", "mpu.reparam.enabled=false", f"seed={seeds}")
        if method in REFERENCE_MODEL_METHODS:
            add("control-moving-reference", method, 10 * rounds * n_seeds, "mpu.kappa=0.01", "mpu.reference_model_round=round", f"seed={seeds}")
        if sigma_from == "task-vector":
            add("control-weights", method, 20 * rounds * n_seeds, "mpu.kappa=0.01,0.1", "mpu.sigma_from=weights",
                f"seed={seeds}")
    return sorted(jobs, key=lambda job: -job[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="runs/claim", help="sweep root; `mpu report OUT` reads it")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of every run (baselines, MPU and controls)")
    parser.add_argument("--workers", type=int, default=1, help="multiruns at once (one torch thread each)")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help="comma-separated sweep folders to run, e.g. to redo the MPU runs after a client change "
                             "while keeping the baselines")
    parser.add_argument("--split", default="forget01,forget10",
                        help="comma-separated forget splits (forget01 is the paper's main split); runs go to OUT/<split>/")
    parser.add_argument("--sigma-from", "--sigma-reference", dest="sigma_from", choices=SIGMA_FROM, default="task-vector",
                        help="task-vector: sigma from theta - theta_base (the paper, default); weights: from theta (control)")
    parser.add_argument("--shape", choices=SHAPES, default="small",
                        help="built-in data: small (10 short QA per author, the 1M model) or release (the real release's "
                             "shape, with the cpu-release model preset)")
    parser.add_argument("--overwrite", action="store_true", help="remove the selected folders' earlier runs first")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    groups = [group.strip() for group in args.groups.split(",") if group.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        parser.error(f"--groups: unknown {unknown or 'empty list'}; choose from {', '.join(GROUPS)}")

    root = Path(__file__).resolve().parents[1]
    out = Path(args.out)
    splits = tuple(split.strip() for split in args.split.split(",") if split.strip())
    try:
        jobs = commands(out, args.seeds, sys.executable, groups, splits, args.sigma_from, args.shape)
    except ValueError as err:
        parser.error(str(err))
    if args.dry_run:
        for _, job in jobs:
            print(shlex.join(job))
        return 0
    earlier = [out / split / group for split in splits for group in groups
               if (out / split / group).is_dir() and any((out / split / group).iterdir())]
    if earlier and not args.overwrite:
        parser.error(f"{', '.join(map(str, earlier))} already hold runs; `mpu report` would mix them with the new ones. "
                     "Pass --overwrite to remove them first, or choose another --out")
    for folder in earlier:
        shutil.rmtree(folder)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def run(cost_job) -> int:
        _, job = cost_job
        split, folder, method = Path(job[3].split("=", 1)[1]).parts[-3:]  # hydra.sweep.dir=OUT/SPLIT/FOLDER/METHOD
        log = logs / f"{split}-{folder}-{method}.log"
        with open(log, "w") as handle:
            handle.write(shlex.join(job) + "\n")
            handle.flush()
            code = subprocess.call(job, cwd=root, stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        print(f"[{time.perf_counter() - started:7.0f}s] {'ok  ' if code == 0 else 'FAIL'} {shlex.join(job[3:5])} ({log})", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        codes = list(pool.map(run, jobs))
    failed = sum(code != 0 for code in codes)
    print(f"{len(jobs) - failed}/{len(jobs)} multiruns succeeded in {time.perf_counter() - started:.0f}s; "
          f"next: mpu report {out}/<split> --out docs/results/<split> for each of {', '.join(splits)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
