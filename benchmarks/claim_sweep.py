"""The sweep behind docs/results.md: MPU against the noise-free baseline on the built-in benchmark.

    python benchmarks/claim_sweep.py --out runs/claim --split forget01,forget10 --calibrate forget10 --resume \
        --docs docs/results.md        # the paper's regime: runs, reports and the page, in one command

The paper's regime is the default: the built-in target and retain model are a base model (general
data, no fictitious author) fine-tuned on the benchmark (replaying the base's real-author/world-fact
QA), and the server's noise is a fraction of the task vector, sigma_l = kappa * RMS(theta_l -
theta_base,l) (``mpu.sigma_from=task-vector``). ``--sigma-from weights`` reruns everything
with sigma_l = kappa * RMS(theta_l) (no base): the harsher regime of the earlier results, a CONTROL;
the ``control-weights`` group runs just its MPU cells next to the paper's. ``--shape release`` uses
data of the real release's shape with the cpu-release model preset (much slower). ``--authors``
sets the benchmark's size (forget01 is one author at any size from 10 to 149 authors).

It runs ``src/train.py`` once per run (one process per seed, rate or kappa: a sweep cut short loses
only the runs in flight), into one sweep folder per method and setting under ``--out/<split>/``, split
by split and method by method (the cheap methods first, the controls last), so that a sweep cut short
still holds complete rows:

- ``baseline``: the noise-free baseline, R·E epochs, seeds 0, 1, 2;
- ``mpu-k0.01``, ``mpu-k0.1``: MPU with m = 3 at κ = 0.01 and 0.1, seeds 0, 1, 2 (the paper preset of the default
  experiment: the public α schedule on [1, 2], no independent noise, the paper's (R, E) per method);
- ``control-k0``: κ = 0: the protocol without noise (copies, reparameterisation, rounds);
- ``control-k0-noreparam``: κ = 0 without reparameterisation: what remains is m data orders averaged
  and the optimizer restarted each round;
- ``control-moving-reference``: κ = 0.01 with each round's copy as the reference model (NPO, DPO, UNDIAL),
  against the default fixed reference model (round 1's copies);
- ``control-weights``: κ = 0.01 and 0.1 with σ from the whole weights (no base): the old, harsher regime.

The default ``--groups`` are the first four (the paper's regime and its κ = 0 control).

Learning rates: ``--calibrate SPLITS`` first runs every method's noise-free baseline (seed 0) at each
rate of ``--lr-grid`` it needs under ``OUT/calibration/<split>/``, for each split of the comma-separated list,
and applies the documented rule (per method, the largest rate whose baseline keeps model_utility >= 90 %
of the target's) into ``OUT/learning_rates.json``. Each method's rates are tried from the largest down
and the search stops at the first that keeps the utility: the rule's choice, without the runs at the
smaller rates. This and later sweeps in the same ``--out`` pass the file's rates to every run of
that split. A split that was not calibrated takes the rates of the first one that
was. Without a calibration, each method uses the experiment's ``tiny_learning_rates``
(configs/experiment/unlearn/tofu/default.yaml).

Restarts: folders that already hold runs are refused unless ``--overwrite`` removes them first (so
no stale run reaches the report), or ``--resume`` keeps every finished run of the same seed, rate and
kappa (whatever its folder's name), removes the rest of the folder (unfinished runs, other rates) and
redoes what is missing. The tiny models and the target/retain evaluations are cached under
``$MPU_CACHE``. ``--archive DIR`` keeps a copy of each finished run's record (its run.json, a few KB;
no weights) under DIR, and puts the records DIR holds back into OUT before a ``--resume``: a sweep
longer than one machine's life continues on another (the models are retrained there from the same
seeds; commit DIR to carry it). ``--import-report docs/results/claim-release-<split>`` (or ``claim-<split>``) adds to DIR the runs a
committed report describes (its runs.csv and report.json, rebuilt as run records marked
``imported_from``), so that a sweep whose run folders are gone keeps them. The full-size sweep's
records and its calibration (rebuilt from docs/results.md) are in benchmarks/run-records/claim-release/;
to continue it on a new machine::

    cp benchmarks/run-records/claim-release/learning_rates.json runs/claim-release/
    python benchmarks/claim_sweep.py --out runs/claim-release --split forget01 --shape release --authors 200 \
        --resume --archive benchmarks/run-records/claim-release --import-report docs/results/claim-release-forget01
    python benchmarks/claim_sweep.py --out runs/claim-release --split forget10 --shape release --authors 200 \
        --resume --archive benchmarks/run-records/claim-release --import-report docs/results/claim-release-forget10 \
        --workers 2

``--docs PAGE`` then writes `mpu report` of each split to
``docs/results/claim-<split>/`` (``claim-release-<split>/`` for ``--shape release``) and regenerates the block of PAGE between the claim-sweep markers
(``--report-only`` does just that). ``--dry-run`` prints the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from filelock import FileLock, Timeout

METHODS = ["GradAscent", "GradDiff", "NPO", "SimNPO", "DPO", "UNDIAL", "SatImp", "WGA"]
REFERENCE_MODEL_METHODS = ["NPO", "DPO", "UNDIAL"]
MANY_ROUNDS = {"SimNPO", "DPO", "SatImp"}  # R = 10: the slowest runs, after the R = 2 methods of their split

# Evaluation trimmed for time: the MIA metrics other than MinK (privleak needs it) are dropped and
# ROUGE generation stops after a shape's longest answer (built-in tokenizer: small answers 10-30 tokens;
# release-shaped ones median 35, max 84, so 48 would cut a fifth of them short).
MAX_NEW_TOKENS = {"small": 48, "release": 96}


def eval_overrides(shape: str) -> list[str]:
    """The Hydra overrides that trim the evaluation of a sweep on data of ``shape``."""
    return ["~eval.metrics.mia_gradnorm", "~eval.metrics.mia_reference", "~eval.metrics.mia_zlib",
            "~eval.metrics.mia_loss", "~eval.metrics.mia_min_k_plus_plus",
            *[f"eval.metrics.{name}_Q_A_ROUGE.max_new_tokens={MAX_NEW_TOKENS[shape]}" for name in ("forget", "retain", "ra", "wf")]]


GROUPS = ["baseline", "mpu-k0.01", "mpu-k0.1", "control-k0", "control-k0-noreparam", "control-moving-reference",
          "control-weights"]
# The paper's regime and its one control (the default of --groups): noise-free reference, MPU at both kappas, kappa = 0.
PAPER_GROUPS = ["baseline", "mpu-k0.01", "mpu-k0.1", "control-k0"]
CALIBRATION = "calibration"
# The learning-rate rule (docs/results.md): per method, the largest of this grid at which the noise-free
# baseline (seed 0, the calibration split) keeps model_utility >= UTILITY_SHARE of the target's.
# On the built-in targets no method keeps 90 % of the utility at 3e-3 or above, and forget10 (4x
# forget01's forget set at 40 authors, 10x at 100, and as many more steps per epoch) broke GradAscent and
# NPO at 1e-4: the grid reaches down instead.
LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
UTILITY_SHARE = 0.9
LEARNING_RATES = "learning_rates.json"
SPLITS = ("forget01", "forget05", "forget10")
SIGMA_FROM = ("task-vector", "weights")
SHAPES = ("small", "release")


def commands(out: Path, seeds: str, python: str, groups: list[str] | None = None, splits: tuple[str, ...] = ("forget10",),
             sigma_from: str = "task-vector", shape: str = "small", authors: int | None = None,
             learning_rates: dict[str, float] | None = None, lr_grid: tuple[float, ...] | None = None,
             ) -> list[tuple[float, list[str]]]:
    """(estimated cost, argv) for every run of ``groups`` (default: all) on each forget split in
    ``splits``, one process per run (seed, rate or kappa), each a one-job Hydra multirun into
    ``out/<split>/<group>/<method>/<run_name>``, so that a sweep cut short loses at most the runs in flight. ``authors`` sets the
    built-in benchmark's size (default: the experiment's), ``learning_rates`` a per-method learning
    rate (default: the experiment's ``tiny_learning_rates``). The ``calibration`` group runs each
    method's noise-free baseline at each rate of ``lr_grid`` (default ``LR_GRID``), seed 0 (main() runs
    them from the largest rate down, stopping at the first the rule keeps). Raises
    ``ValueError`` for an unknown split, sigma_from (the noise scale's basis) or shape."""
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
    if authors is not None:
        regime.append(f"benchmark.authors={authors}")

    def add(folder: str, method: str, cost: float, *overrides: str) -> None:
        if (folder not in groups) if groups is not None else folder == CALIBRATION:
            return
        rate = [] if folder == CALIBRATION or not (learning_rates or {}).get(method) else \
            [f"trainer.training.learning_rate={learning_rates[method]:g}"]
        for split in splits:
            data = [f"data.forget_split={split}", f"data.retain_split=retain{100 - int(split[-2:])}"]
            where = out / CALIBRATION / split / method if folder == CALIBRATION else out / split / folder / method
            runs = expand([*data, *regime, *rate, *overrides])
            for run in runs:
                jobs.append((cost / len(runs), [python, "src/train.py", "-m", f"hydra.sweep.dir={where}",
                                                f"hydra.sweep.subdir={run_name(run)}", f"trainer={method}", "threads=1",
                                                "save_model=false", *run, *eval_overrides(shape)]))

    n_seeds = len(seeds.split(","))
    grid = ",".join(f"{rate:g}" for rate in sorted(lr_grid or LR_GRID, reverse=True))   # the search's order
    for method in METHODS:
        rounds = 10 if method in MANY_ROUNDS else 2
        add(CALIBRATION, method, 20 * len(grid.split(",")), "mpu.enabled=false", "seed=0",
            f"trainer.training.learning_rate={grid}")
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
    order = {split: number for number, split in enumerate(splits)}
    rank = {group: number for number, group in enumerate([CALIBRATION] + GROUPS)}

    def key(job):
        """Split by split (forget01 first); within a split method by method, the cheap (R = 2) ones first, each
        method's groups together (baseline, then MPU), the controls after all methods: a sweep cut short still
        holds complete method rows."""
        folder = sweep_dir(job[1])
        group = CALIBRATION if folder.parts[-3] == CALIBRATION else folder.parts[-2]
        split = next(arg for arg in job[1] if arg.startswith("data.forget_split=")).split("=", 1)[1]
        method = folder.parts[-1]
        return (order[split], group != CALIBRATION, group.startswith("control"), method in MANY_ROUNDS, METHODS.index(method),
                rank[group])

    return sorted(jobs, key=key)


# The sweep keys that tell the runs of one folder apart, and the prefix each has in a run's folder
# name (lr0.0003_k0.1_s2). The calibration sweeps the learning rate; elsewhere it is a setting of the
# folder, so a run there at another rate is stale.
RUN_KEYS = {"trainer.training.learning_rate": "lr", "mpu.kappa": "k", "seed": "s"}
SELECTION_KEYS = ("mpu.kappa", "seed")
STALE = "stale"   # OUT/stale/<time>/...: where --resume moves finished runs it cannot use (nothing is deleted)


def expand(overrides: list[str]) -> list[list[str]]:
    """Every combination of the comma-separated sweeps in ``overrides`` (Hydra's basic sweeper's order:
    the last key varies fastest), as lists of one-valued overrides."""
    combos: list[list[str]] = [[]]
    for override in overrides:
        key, sep, values = override.partition("=")
        choices = [f"{key}={value}" for value in values.split(",")] if sep and not key.startswith(("hydra.", "~")) \
            else [override]
        combos = [combo + [choice] for combo in combos for choice in choices]
    return combos


def run_identity(argv: list[str]) -> dict[str, float]:
    """The values of :data:`RUN_KEYS` that ``argv`` sets (the last one wins, as in Hydra)."""
    identity = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in RUN_KEYS:
            identity[key] = float(value)
    return identity


def run_name(argv: list[str]) -> str:
    """The folder name of the run ``argv`` makes, e.g. ``lr0.0003_k0.1_s2``: unique within its sweep folder."""
    identity = run_identity(argv)
    return "_".join(f"{prefix}{identity[key]:g}" for key, prefix in RUN_KEYS.items() if key in identity) or "run"


def normalised_overrides(overrides: list[str]) -> dict[str, float | str]:
    """``{key: value}`` of Hydra command-line overrides (``hydra.*`` left out), normalised so that what a
    run was launched with equals what Hydra recorded in its run.json (``overrides``): ``false`` and
    ``False``, ``3e-4`` and ``0.0003``, ``~key`` and ``~key=null`` compare equal."""
    normalised: dict[str, float | str] = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if key.startswith("hydra."):
            continue
        try:
            normalised[key] = float(value) if sep else "null"
        except ValueError:
            normalised[key] = value.lower()
    return normalised


def job_overrides(argv: list[str]) -> dict[str, float | str]:
    """:func:`normalised_overrides` of a ``python src/train.py -m ...`` command."""
    return normalised_overrides(argv[3:])


def finished_runs(folder: Path) -> list[dict]:
    """The run.json records under ``folder`` of runs that finished and were evaluated."""
    records = []
    for path in sorted(folder.rglob("run.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("status") == "done" and record.get("summary"):
            records.append(record)
    return records


def finished_run(folder: Path, argv: list[str]) -> dict | None:
    """The record of a finished, evaluated run under ``folder`` launched with exactly ``argv``'s overrides
    (whatever its folder's name: runs of the older one-multirun-per-setting layout count), else None."""
    wanted = job_overrides(argv)
    return next((record for record in finished_runs(folder)
                 if normalised_overrides(record.get("overrides") or []) == wanted), None)


ARCHIVED = "run.json"   # what --archive keeps of a finished run: its record, with the summary the report reads


def archive_run(out: Path, archive: Path, folder: Path, record: dict) -> Path:
    """Copy the finished run ``record`` of the run folder ``folder`` (under ``out``) to the same place
    under ``archive``, written whole or not at all. Returns the archived file."""
    from mpu.checkpoint import atomic_write_json

    destination = archive / folder.relative_to(out) / ARCHIVED
    destination.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(destination, record)
    return destination


def restore_runs(archive: Path, out: Path, jobs: list[list[str]]) -> list[Path]:
    """Put back under ``out`` each finished run record of ``archive`` that is a run of ``jobs`` (at the
    job's own place, with the job's overrides: a record of another rate or setting stays in the
    archive) where that run folder holds no finished run (never over one). Returns the run folders
    restored."""
    wanted = {sweep_dir(argv).relative_to(out) / run_name(argv): job_overrides(argv) for argv in jobs}
    restored = []
    for relative, overrides in sorted(wanted.items()):
        path, folder = archive / relative / ARCHIVED, out / relative
        records = finished_runs(path.parent) if path.is_file() else []
        if finished_runs(folder) or not records or normalised_overrides(records[0].get("overrides") or []) != overrides:
            continue   # OUT's own run wins; a record that is not this job's finished run is not restored
        if folder.exists():
            shutil.rmtree(folder)   # a run cut short: --resume would have redone it whole
        folder.mkdir(parents=True)
        shutil.copyfile(path, folder / ARCHIVED)
        restored.append(folder)
    return restored


GROUP_OF_KAPPA = {0.01: "mpu-k0.01", 0.1: "mpu-k0.1", 0.0: "control-k0"}


def records_from_runs_csv(runs_csv: Path, report_json: Path, jobs: list[list[str]]) -> list[tuple[Path, dict]]:
    """Run records rebuilt from a committed report (``runs.csv``: one row per run, as `mpu report`
    writes it; ``report.json``: the target's and retain model's summaries) for the runs of ``jobs``
    they describe: (run folder, record) pairs, each record holding what `mpu report` and ``--resume``
    read (mode, method, seed, kappa, m, R, E, learning rate, split, summary, the job's overrides) and
    ``imported_from`` naming the file. For a sweep whose run folders were lost with their machine.
    Rows of the variants (other than the paper's regime) are not rebuilt. Raises ``ValueError`` for a
    row that matches no job."""
    import csv

    target_and_retain = json.loads(report_json.read_text(encoding="utf-8")).get("target_and_retain") or {}
    by_identity = {}
    for argv in jobs:
        folder, identity = sweep_dir(argv), run_identity(argv)
        by_identity[(folder.parts[-3], folder.parts[-2], folder.parts[-1], int(identity["seed"]))] = argv
    rebuilt = []
    with open(runs_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["variant"]:
                continue
            group = "baseline" if row["mode"] == "baseline" else GROUP_OF_KAPPA.get(float(row["kappa"]))
            argv = by_identity.get((row["forget_split"], group, row["method"], int(row["seed"])))
            if argv is not None and "trainer.training.learning_rate" not in run_identity(argv):
                raise ValueError(f"the sweep's {row['forget_split']} runs have no calibrated learning rates (OUT/"
                                 f"{LEARNING_RATES}): copy the calibration of the runs in {runs_csv} there first, so that "
                                 "the runs kept and the runs redone are at the same rates")
            if argv is None or float(row["learning_rate"]) != run_identity(argv)["trainer.training.learning_rate"]:
                raise ValueError(f"{runs_csv}: the {row['mode']} run of {row['method']} seed {row['seed']} "
                                 f"(kappa {row['kappa'] or '-'}, lr {row['learning_rate']}) is no run of this sweep")
            rounds, epochs = int(row["R"]), float(row["E"])
            summary = {key: float(value) for key, value in row.items()
                       if key not in RUNS_CSV_FIELDS and value not in ("", "None")}
            rebuilt.append((sweep_dir(argv) / run_name(argv), {
                "status": "done", "imported_from": str(runs_csv), "run_dir": row["run_dir"],
                "experiment": row["experiment"], "benchmark": "tofu", "mode": row["mode"], "method": row["method"],
                "kappa": float(row["kappa"]) if row["kappa"] else None, "m": int(row["m"]) if row["m"] else None,
                "R": rounds, "E": epochs, "epochs_total": rounds * epochs, "seed": int(row["seed"]),
                "forget_split": row["forget_split"], "training": {"learning_rate": float(row["learning_rate"])},
                "seconds": {"total": float(row["seconds_total"])}, "summary": summary,
                "overrides": [arg for arg in argv[3:] if not arg.startswith("hydra.")],
                "target_and_retain": target_and_retain}))
    return rebuilt


RUNS_CSV_FIELDS = ("run_dir", "experiment", "mode", "method", "kappa", "m", "variant", "R", "E", "seed", "learning_rate",
                   "forget_split", "seconds_total")


def prune(folder: Path, argvs: list[list[str]], stale_root: Path, selection: tuple[str, ...] = SELECTION_KEYS
          ) -> tuple[list[Path], list[Path]]:
    """Tidy ``folder`` before ``argvs`` run there with --resume, so that `mpu report` sees one run per
    setting: delete the run folders that hold no finished run (cut short), and move under
    ``stale_root`` those whose finished run is a second copy of a job's or differs from every job in
    a setting (another learning rate, model or data; not just another of the ``selection`` keys:
    runs of seeds or rates outside today's selection stay). Returns (deleted, moved)."""
    wanted = [job_overrides(argv) for argv in argvs]
    setting = lambda overrides: {key: value for key, value in overrides.items() if key not in selection}
    settings = [setting(overrides) for overrides in wanted]
    deleted, moved, held = [], [], set()
    names = {run_name(argv) for argv in argvs}   # of two copies, the one in the job's own folder is kept
    children = [path for path in folder.iterdir() if path.is_dir()] if folder.is_dir() else []
    for child in sorted(children, key=lambda path: (path.name not in names, path.name)):
        records = finished_runs(child)
        if not records:
            shutil.rmtree(child)
            deleted.append(child)
            continue
        overrides = normalised_overrides(records[0].get("overrides") or [])
        job = next((index for index, want in enumerate(wanted) if want == overrides), None)
        if job is not None and job not in held:
            held.add(job)
        elif job is None and setting(overrides) in settings:
            pass   # another seed (or calibration rate) of the same setting
        else:
            destination = stale_root / child.relative_to(folder.parents[2])
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(child), str(destination))
            moved.append(child)
    return deleted, moved


def target_utility(record: dict) -> float | None:
    """The target's model utility a run.json records ("reference": the key before it was renamed
    target_and_retain)."""
    return (record.get("target_and_retain") or record.get("reference") or {}).get("target", {}).get("model_utility")


def keeps_utility(record: dict) -> bool:
    """The learning-rate rule's test: the run kept model_utility >= UTILITY_SHARE x the target's."""
    target = target_utility(record)
    return target is not None and ((record.get("summary") or {}).get("model_utility") or 0) >= UTILITY_SHARE * target


def sweep_dir(argv: list[str]) -> Path:
    return Path(next(arg for arg in argv if arg.startswith("hydra.sweep.dir=")).split("=", 1)[1])


def choose_learning_rates(out: Path, split: str, grid: tuple[float, ...] | None = None) -> dict[str, dict]:
    """The rule applied to ``out/calibration/<split>`` (apart from OUT/<split>, which `mpu report` reads): per method, the largest learning rate whose
    noise-free baseline keeps model_utility >= UTILITY_SHARE x the target's (the smallest rate of
    the grid when none does). Runs at a rate outside ``grid`` (when given) are ignored; the rates below
    the chosen one need no run (the search stops there). Returns {method: {"learning_rate", "utility",
    "target_utility", "forget_Q_A_ROUGE", "passes", "grid": {rate: utility}, "grid_forget_rouge"}}.
    Raises ``ValueError`` when a method's runs record no target model utility, or lack a grid rate
    above the chosen one (or any, when none passes)."""
    chosen: dict[str, dict] = {}
    for method in METHODS:
        records = [record for record in finished_runs(out / CALIBRATION / split / method)
                   if grid is None or float(record["training"]["learning_rate"]) in grid]
        if not records:
            continue
        target = target_utility(records[0])
        if target is None:  # without it the rule would silently fall back to the smallest rate
            raise ValueError(f"{out / CALIBRATION / split / method}: the runs record no target model utility "
                             "(target_and_retain.target.model_utility in run.json)")
        by_rate = {float(r["training"]["learning_rate"]): r["summary"] for r in records}
        passing = [float(r["training"]["learning_rate"]) for r in records if keeps_utility(r)]
        rate = max(passing) if passing else min(by_rate)
        untried = sorted(r for r in grid or () if r not in by_rate and (r > rate or not passing))
        if untried:   # the search stopped early (a crash): a rate it never ran might be the rule's choice
            raise ValueError(f"{out / CALIBRATION / split / method}: no finished run at {', '.join(f'{r:g}' for r in untried)}, "
                             f"so the rule cannot choose between them and {rate:g}; rerun the calibration with --resume")
        chosen[method] = {"learning_rate": rate, "utility": by_rate[rate].get("model_utility"), "target_utility": target,
                          "forget_Q_A_ROUGE": by_rate[rate].get("forget_Q_A_ROUGE"), "passes": bool(passing),
                          "grid": {f"{r:g}": by_rate[r].get("model_utility") for r in sorted(by_rate)},
                          "grid_forget_rouge": {f"{r:g}": by_rate[r].get("forget_Q_A_ROUGE") for r in sorted(by_rate)}}
    return chosen


def read_calibration(path: Path) -> tuple[dict[str, str | None], dict[str, dict[str, dict]]]:
    """(``{split: the rule it was calibrated by}``, ``{split: {method: row}}``) from ``path`` (written by
    :func:`write_calibration`; each row as :func:`choose_learning_rates` gives it); ({}, {}) when it is
    missing. The older one-split file (``{"split", "methods"}``) maps to that split; a file without a
    split maps to ``"*"``; a file with one rule for all splits gives it to each."""
    if not path.is_file():
        return {}, {}
    data = json.loads(path.read_text(encoding="utf-8"))
    splits = data["splits"] if "splits" in data else {data.get("split", "*"): data["methods"]}
    return {split: (data.get("rules") or {}).get(split, data.get("rule")) for split in splits}, splits


def write_calibration(path: Path, rule: str, chosen: dict[str, dict[str, dict]]) -> None:
    """Add the splits of ``chosen`` (calibrated by ``rule``) to the calibration in ``path``, keeping the
    other splits' rates and rules: calibrating forget10 later must not drop forget01's rates."""
    rules, splits = read_calibration(path)
    rules.update({split: rule for split in chosen})
    splits.update(chosen)
    path.write_text(json.dumps({"rules": rules, "splits": splits}, indent=2) + "\n", encoding="utf-8")


def read_learning_rates(path: Path) -> dict[str, dict[str, float]]:
    """``{split: {method: learning rate}}`` from ``path`` (:func:`read_calibration`); {} when it is missing."""
    return {split: {method: float(row["learning_rate"]) for method, row in methods.items()}
            for split, methods in read_calibration(path)[1].items()}


def calibrated_on(calibrated: dict[str, dict], split: str) -> str | None:
    """The split whose calibration a sweep on ``split`` uses: its own, else the first calibrated
    split (the file's order), else None (the experiment's defaults)."""
    return split if split in calibrated else next(iter(calibrated), None)


def rates_for(rates: dict[str, dict[str, float]], split: str) -> dict[str, float] | None:
    """The learning rates a sweep on ``split`` uses (:func:`calibrated_on`), or None."""
    source = calibrated_on(rates, split)
    return None if source is None else rates[source]


BEGIN, END = "<!-- claim-sweep:begin (generated by benchmarks/claim_sweep.py) -->", "<!-- claim-sweep:end -->"


def markers(shape: str = "small") -> tuple[str, str]:
    """The (begin, end) markers of the generated block of a sweep on data of ``shape``: each shape has
    its own block, so regenerating one leaves the other's table alone."""
    if shape == "small":
        return BEGIN, END
    return (f"<!-- claim-sweep-{shape}:begin (generated by benchmarks/claim_sweep.py --shape {shape}) -->",
            f"<!-- claim-sweep-{shape}:end -->")


def report_name(split: str, shape: str = "small") -> str:
    """The folder under docs/results/ that holds `mpu report` of ``split`` (one per shape)."""
    return f"claim-{split}" if shape == "small" else f"claim-{shape}-{split}"


def headline(out: Path, splits: tuple[str, ...], docs_results: Path, shape: str = "small") -> str:
    """The generated part of docs/results.md: per split, `mpu report` into docs/results/<report_name>/ and
    a table per method and kappa (average degradation, seed spread, below 1 %?, the key metrics)."""
    from mpu.experiments.report import report

    lines = []
    rules, by_split = read_calibration(out / LEARNING_RATES)
    for split in splits:
        folder = out / split
        if not folder.is_dir():
            continue
        source = calibrated_on(by_split, split)
        if source is not None:
            lines += [f"**Learning rates of {split}** (the rule, {rules.get(source) or '?'}; calibrated on {source}):", "",
                      "| method | lr | baseline utility at lr | target utility | utility per grid rate | forget ROUGE per grid rate |",
                      "|---|---|---|---|---|---|"]
            for method, row in by_split[source].items():
                grid = ", ".join(f"{rate}: {value:.3f}" for rate, value in row["grid"].items() if value is not None)
                rouge = ", ".join(f"{rate}: {value:.2f}" for rate, value in row.get("grid_forget_rouge", {}).items()
                                  if value is not None)
                lines.append(f"| {method} | {row['learning_rate']:g} | {row['utility']:.3f} | {row['target_utility']:.3f} | {grid} | {rouge} |")
            lines.append("")
        name = report_name(split, shape)
        result, _ = report([folder], docs_results / name)
        target = result.target_and_retain.get("target", {})
        retain = result.target_and_retain.get("retain", {})
        lines += [f"### {split}", "",
                  f"Target: model utility {target.get('model_utility', float('nan')):.3f}, forget ROUGE "
                  f"{target.get('forget_Q_A_ROUGE', float('nan')):.3f}, forget quality {target.get('forget_quality', float('nan')):.3g}. "
                  f"Retain model: model utility {retain.get('model_utility', float('nan')):.3f}, forget ROUGE "
                  f"{retain.get('forget_Q_A_ROUGE', float('nan')):.3f}.", "",
                  "| method | κ | seeds | avg degradation | ± seeds | < 1 %? | avg without forget_quality | Δ model_utility | "
                  "Δ forget_quality | Δ forget ROUGE | baseline utility / forget ROUGE | MPU utility / forget ROUGE |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in result.rows:   # the controls (kappa = 0, variants such as sigma from the weights) labelled
            below = "n/a" if row.average is None else ("yes" if row.average < 1 else "no")
            label = f"{row.kappa:g}" + (f" ({row.variant}: control)" if row.variant else " (control)" if row.kappa == 0 else "")
            spread = "n/a" if row.average_std is None else f"{row.average_std:.2f}"
            pct = lambda value: "n/a" if value is None else f"{value:+.2f} %"
            num = lambda value: "n/a" if value is None else f"{value:.3f}"
            others = [value for metric, value in row.degradation.items() if metric != "forget_quality" and value is not None]
            lines.append(f"| {row.method} | {label} | {','.join(map(str, row.seeds))} | {pct(row.average)} | {spread} | "
                         f"{below} | {pct(sum(others) / len(others) if others else None)} | {pct(row.degradation.get('model_utility'))} | {pct(row.degradation.get('forget_quality'))} | "
                         f"{pct(row.degradation.get('forget_Q_A_ROUGE'))} | {num(row.baseline.get('model_utility'))} / "
                         f"{num(row.baseline.get('forget_Q_A_ROUGE'))} | {num(row.mpu.get('model_utility'))} / "
                         f"{num(row.mpu.get('forget_Q_A_ROUGE'))} |")
        lines += ["", f"{len(result.runs)} runs; per run and per metric: [docs/results/{name}/report.md]"
                  f"(results/{name}/report.md).", ""]
        if result.unmatched:
            lines += [f"Not compared ({len(result.unmatched)}): " + "; ".join(result.unmatched[:5]), ""]
    return "\n".join(lines)


def write_docs(docs: Path, text: str, shape: str = "small") -> None:
    """Replace the generated block of ``docs`` for ``shape`` (between its :func:`markers`) by ``text``;
    raises ValueError when the markers are missing."""
    begin, end = markers(shape)
    page = docs.read_text(encoding="utf-8")
    if begin not in page or end not in page:
        raise ValueError(f"{docs}: no generated block ({begin} ... {end})")
    head, rest = page.split(begin, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(f"{head}{begin}\n{text}\n{end}{tail}", encoding="utf-8")


def take_lock(out: Path) -> FileLock:
    """The lock of the sweep folder ``out``, taken without waiting: two sweeps in one --out would prune
    (or restore over) each other's runs in flight. Raises ``ValueError`` naming the folder when it is held."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / ".claim_sweep.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{out}: another claim_sweep is running there (it holds {lock.lock_file}); wait for it or "
                         "choose another --out") from None
    return lock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="runs/claim", help="sweep root; `mpu report OUT` reads it")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of every run (baselines, MPU and controls)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--groups", default=",".join(PAPER_GROUPS),
                        help=f"comma-separated sweep folders to run, from {', '.join(GROUPS + [CALIBRATION])}; e.g. to redo "
                             "the MPU runs after a client change while keeping the baselines (calibration: the calibration "
                             "only, with --calibrate)")
    parser.add_argument("--split", default="forget01,forget10",
                        help="comma-separated forget splits (forget01 is the paper's main split); runs go to OUT/<split>/")
    parser.add_argument("--sigma-from", "--sigma-reference", dest="sigma_from", choices=SIGMA_FROM, default="task-vector",
                        help="task-vector: sigma from theta - theta_base (the paper, default); weights: from theta (control)")
    parser.add_argument("--shape", choices=SHAPES, default="small",
                        help="built-in data: small (10 short QA per author, the 1M model) or release (the real release's "
                             "shape, with the cpu-release model preset)")
    parser.add_argument("--authors", type=int, default=None, help="built-in benchmark size (default: the experiment's, 100)")
    parser.add_argument("--calibrate", default=None, metavar="SPLITS",
                        help="first run the learning-rate calibration (noise-free baselines, seed 0, the grid from the largest rate down to the first that keeps 90 %% of the utility) on "
                             "each comma-separated split, write OUT/learning_rates.json by the rule, and use each split's rates "
                             "for its sweep (a split not calibrated takes the first calibrated split's)")
    parser.add_argument("--lr-grid", default=",".join(f"{rate:g}" for rate in LR_GRID),
                        help="comma-separated learning rates the calibration tries")
    parser.add_argument("--resume", action="store_true",
                        help="keep each finished run (same seed, rate and kappa); remove unfinished and stale runs; redo the missing")
    parser.add_argument("--overwrite", action="store_true", help="remove the selected folders' earlier runs first")
    parser.add_argument("--import-report", action="append", default=[], metavar="REPORT_DIR",
                        help="add to --archive the runs of the paper's regime that a committed report folder (e.g. "
                             "docs/results/claim-release-forget10: runs.csv, report.json) describes, rebuilt as run "
                             "records (marked imported_from), where the archive lacks them: the runs of a machine "
                             "that is gone, kept by --resume instead of being redone; once per split's report")
    parser.add_argument("--archive", default=None, metavar="DIR",
                        help="copy each finished run's run.json to DIR (same layout as OUT) and, with --resume or "
                             "--report-only, first restore into OUT the runs DIR holds that OUT lacks: a long sweep "
                             "continues on another machine")
    parser.add_argument("--docs", default=None,
                        help="after the runs, `mpu report` each split into docs/results/claim-<split>/ and regenerate the "
                             "generated block of this page (e.g. docs/results.md)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; only regenerate --docs from OUT")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    groups = [group.strip() for group in args.groups.split(",") if group.strip()]
    unknown = sorted(set(groups) - set(GROUPS) - {CALIBRATION})
    if unknown or not groups:
        parser.error(f"--groups: unknown {unknown or 'empty list'}; choose from {', '.join(GROUPS + [CALIBRATION])}")
    if args.resume and args.overwrite:
        parser.error("--resume keeps finished runs, --overwrite removes them: choose one")
    if CALIBRATION in groups and not args.calibrate:
        parser.error(f"--groups {CALIBRATION} runs with --calibrate SPLITS (which applies the rule); "
                     "--calibrate alone runs it before the sweep")
    groups = [group for group in groups if group != CALIBRATION]   # the calibration runs before the sweep, once
    seeds = [seed.strip() for seed in args.seeds.split(",")]
    if len(set(seeds)) != len(seeds) or not all(seed.isdigit() for seed in seeds):
        parser.error(f"--seeds: distinct non-negative integers, got {args.seeds!r}")

    root = Path(__file__).resolve().parents[1]
    out = Path(args.out)
    splits = tuple(split.strip() for split in args.split.split(",") if split.strip())
    docs = Path(args.docs) if args.docs else None
    archive = Path(args.archive) if args.archive else None
    if archive is not None and args.overwrite:
        parser.error("--overwrite removes OUT's runs but not their records in --archive, which a later --resume would "
                     "bring back: move the archive aside first, or use --resume")
    if args.report_only and docs is None:
        parser.error("--report-only needs --docs")

    def restore() -> None:
        for folder in restore_runs(archive, out, [job for _, job in jobs]) if archive is not None else []:
            print(f"restored {folder} from {archive}", flush=True)

    started = time.perf_counter()
    rates_file = out / LEARNING_RATES
    calibrate = tuple(split.strip() for split in (args.calibrate or "").split(",") if split.strip())

    def sweep_jobs(rates: dict[str, dict[str, float]]) -> list[tuple[float, list[str]]]:
        if not groups:   # --groups calibration: the calibration only
            return []
        return [job for split in splits for job in commands(out, args.seeds, sys.executable, groups, (split,), args.sigma_from,
                                                            args.shape, args.authors, rates_for(rates, split))]

    try:
        grid = tuple(float(rate) for rate in args.lr_grid.split(","))
        calibration = commands(out, "0", sys.executable, [CALIBRATION], calibrate, args.sigma_from, args.shape,
                               args.authors, lr_grid=grid) if calibrate else []
        jobs = sweep_jobs(read_learning_rates(rates_file))
    except ValueError as err:
        parser.error(str(err))
    if args.import_report and archive is None:
        parser.error("--import-report adds runs to --archive DIR: give one")
    rebuilt = []   # every report read before any is written: a wrong one imports nothing
    for report_dir in map(Path, args.import_report):
        try:
            rebuilt += [(report_dir, *pair) for pair in records_from_runs_csv(
                report_dir / "runs.csv", report_dir / "report.json", [job for _, job in jobs])]
        except (OSError, ValueError, KeyError) as err:
            parser.error(f"--import-report {report_dir}: {err}")
    for report_dir, folder, record in rebuilt:
        if not (archive / folder.relative_to(out) / ARCHIVED).exists() and not args.dry_run:
            print(f"imported {archive_run(out, archive, folder, record)} from {report_dir}", flush=True)
    if args.report_only:
        if archive is not None:
            try:
                lock = take_lock(out)
            except ValueError as err:
                parser.error(str(err))
            try:
                restore()
            finally:
                lock.release()
        empty = [split for split in splits if not finished_runs(out / split)]
        if empty:   # a block regenerated from no runs would replace the page's tables by nothing
            parser.error(f"--report-only: {out} holds no finished runs of {', '.join(empty)}; nothing was written. Run the "
                         f"sweep first, or restore its runs with --archive DIR (which needs {out / LEARNING_RATES}, the "
                         "calibrated rates the records were made with)")
        write_docs(docs, headline(out, splits, docs.parent / "results", args.shape), args.shape)
        return 0
    if args.dry_run:
        if calibration:
            print(f"# the calibration: each method's rates from the largest down, stopping at the first that keeps "
                  f"{UTILITY_SHARE:.0%} of the target's utility")
        for _, job in calibration:
            print(shlex.join(job))
        if calibration and jobs:
            print("# the sweep (at the calibrated rates)")
        for _, job in jobs:
            print(shlex.join(job))
        return 0
    try:
        lock = take_lock(out)
    except ValueError as err:
        parser.error(str(err))

    def sweep() -> int:
        nonlocal jobs
        if args.resume:   # under the lock: another sweep's runs in flight are not touched
            restore()
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        def run(job: list[str]) -> tuple[int, dict | None]:
            """Run ``job`` (or keep its finished run, with --resume); (exit code, its run record or None)."""
            folder = sweep_dir(job)
            split, group, method = folder.parts[-3:]
            name = run_name(job)
            kept = finished_run(folder, job) if args.resume else None
            if kept is not None:
                print(f"[{time.perf_counter() - started:7.0f}s] done {split}/{group}/{method}/{name} (kept)", flush=True)
                keep(folder / name, kept)
                return 0, kept
            if (folder / name).exists():
                shutil.rmtree(folder / name)   # an unfinished run: redone whole
            log = logs / f"{split}-{group}-{method}-{name}.log"
            with open(log, "w") as handle:
                handle.write(shlex.join(job) + "\n")
                handle.flush()
                code = subprocess.call(job, cwd=root, stdout=handle, stderr=subprocess.STDOUT,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
            print(f"[{time.perf_counter() - started:7.0f}s] {'ok  ' if code == 0 else 'FAIL'} {split}/{group}/{method}/{name} "
                  f"({log})", flush=True)
            record = finished_run(folder, job)
            if code == 0 and record is not None:
                keep(folder / name, record)
            return code, record

        def keep(run_folder: Path, record: dict) -> None:
            if archive is not None:
                archive_run(out, archive, run_folder, record)

        def search(chain: list[list[str]]) -> int:
            """One method's calibration: its rates from the largest down, stopping at the first whose baseline
            keeps the utility (the rule's choice: the larger rates all failed it, the smaller cannot be chosen)."""
            for job in sorted(chain, key=lambda argv: run_identity(argv)["trainer.training.learning_rate"], reverse=True):
                code, record = run(job)
                if code != 0:
                    return 1
                if record is not None and keeps_utility(record):
                    break
            return 0

        def launch(selected: list[tuple[float, list[str]]], descending: bool = False) -> int:
            by_folder: dict[Path, list[list[str]]] = {}
            for _, job in selected:
                by_folder.setdefault(sweep_dir(job), []).append(job)
            earlier = sorted(folder for folder in by_folder if folder.is_dir() and any(folder.iterdir()))
            if earlier and not (args.overwrite or args.resume):
                parser.error(f"{', '.join(map(str, earlier))} already hold runs; `mpu report` would mix them with the new ones. "
                             "Pass --overwrite to remove them first, --resume to keep the finished ones, or choose another --out")
            stale = out / STALE / time.strftime("%Y%m%d-%H%M%S")
            for folder, jobs_here in by_folder.items():
                if args.overwrite and folder.exists():
                    shutil.rmtree(folder)
                elif args.resume:
                    deleted, moved = prune(folder, jobs_here, stale, SELECTION_KEYS + (("trainer.training.learning_rate",)
                                                                                       if descending else ()))
                    for path in deleted:
                        print(f"removed {path} (no finished run)", flush=True)
                    for path in moved:
                        print(f"moved {path} to {stale} (a finished run of another setting, or a second copy)", flush=True)
            units = list(by_folder.values()) if descending else [[job] for _, job in selected]
            work = search if descending else (lambda unit: int(run(unit[0])[0] != 0))
            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                return sum(pool.map(work, units))

        failed = 0
        if calibrate:
            if launch(calibration, descending=True):   # a rate chosen without the crashed runs could be one that fails
                print("claim_sweep: the calibration failed (see the FAIL lines and their logs); the sweep was not started. "
                      "Rerun with --resume once fixed: finished runs are kept.", file=sys.stderr, flush=True)
                return 1
            try:
                chosen = {split: choose_learning_rates(out, split, grid) for split in calibrate}
            except ValueError as err:
                print(f"claim_sweep: {err}", file=sys.stderr)
                return 2
            write_calibration(rates_file, f"largest of {list(grid)} with baseline model_utility >= {UTILITY_SHARE} x "
                              "target's (seed 0; tried from the largest down)", chosen)
            for split, methods in chosen.items():
                print(f"learning rates on {split}: " + ", ".join(f"{m} {row['learning_rate']:g}" for m, row in methods.items()),
                      flush=True)
                for method, row in methods.items():
                    if not row["passes"]:
                        print(f"claim_sweep: warning: on {split} no rate of the grid keeps {method}'s model utility >= "
                              f"{UTILITY_SHARE} x the target's (at {row['learning_rate']:g}: {row['utility']:.3f} of "
                              f"{row['target_utility']:.3f}); extend --lr-grid downwards", file=sys.stderr, flush=True)
            jobs = sweep_jobs(read_learning_rates(rates_file))
        failed += launch(jobs)
        total = len(jobs) + len({sweep_dir(job) for _, job in calibration})
        print(f"{total - failed}/{total} runs and calibration searches succeeded in {time.perf_counter() - started:.0f}s", flush=True)
        if docs is not None:
            write_docs(docs, headline(out, splits, docs.parent / "results", args.shape), args.shape)
            print(f"regenerated {docs} and {docs.parent / 'results' / report_name('<split>', args.shape)}/", flush=True)
        return 1 if failed else 0

    try:
        return sweep()
    finally:
        lock.release()

if __name__ == "__main__":
    sys.exit(main())
