"""``mpu report``: one table of a sweep's runs, MPU against its noise-free baseline.

Input: run directories written by ``src/train.py`` (``run.json`` plus ``<BENCH>_SUMMARY.json``), found
recursively under the given paths. Each MPU run is compared with the noise-free baseline of the same
experiment, forget split, method, seed, total epochs and learning rate.

**Relative degradation** of a metric, in percent, positive when MPU is worse than the baseline:

- higher is better (model_utility, retain_*, forget_truth_ratio): ``(base - mpu) / |base| * 100``
- lower is better (forget_Q_A_ROUGE, forget_Q_A_Prob, extraction_strength, ...): ``(mpu - base) / |base| * 100``
- forget_quality (a KS p-value, higher is better) on a log scale, since it spans orders of magnitude:
  ``(log10 base - log10 mpu) / |log10 base| * 100``
- privleak (closer to 0 is better): ``(|mpu| - |base|) / |base| * 100``

A metric whose baseline is 0 (or 1 for forget_quality's log) has no relative degradation ("n/a").
The **average degradation** is the mean over the chosen metrics of one seed, then averaged over seeds;
its standard deviation across seeds is the seed-to-seed spread.

Outputs in ``--out``: ``report.md``, ``report.csv`` (one row per method, kappa, m), ``runs.csv`` (one
row per run), ``degradation_vs_kappa.png`` and ``utility_vs_forget_quality.png``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mpu.errors import MPUError

RUN_FILE = "run.json"

# metric -> how "better" reads: higher, lower, log_higher (p-values), zero (closer to 0 is better).
DIRECTIONS: dict[str, str] = {
    "model_utility": "higher",
    "forget_quality": "log_higher",
    "forget_Q_A_ROUGE": "lower",
    "forget_Q_A_Prob": "lower",
    "forget_truth_ratio": "higher",
    "extraction_strength": "lower",
    "exact_memorization": "lower",
    "retain_Q_A_Prob": "higher",
    "retain_Q_A_ROUGE": "higher",
    "retain_Truth_Ratio": "higher",
    "privleak": "zero",
    "forget_knowmem_ROUGE": "lower",
    "forget_verbmem_ROUGE": "lower",
    "retain_knowmem_ROUGE": "higher",
}
DEFAULT_METRICS = {
    "tofu": ["model_utility", "forget_quality", "forget_Q_A_ROUGE", "forget_Q_A_Prob", "extraction_strength"],
    "muse": ["retain_knowmem_ROUGE", "forget_knowmem_ROUGE", "forget_verbmem_ROUGE", "extraction_strength"],
}


def degradation(metric: str, baseline: Any, mpu: Any) -> float | None:
    """Relative degradation of MPU against the baseline in percent (positive: MPU is worse); None when
    undefined (a value missing, or a zero baseline)."""
    direction = DIRECTIONS.get(metric)
    if direction is None:
        raise MPUError(f"no direction known for metric {metric!r}; known: {', '.join(sorted(DIRECTIONS))}")
    if not _number(baseline) or not _number(mpu):
        return None
    base, ours = float(baseline), float(mpu)
    if direction == "log_higher":
        if base <= 0 or ours <= 0:
            return None
        base, ours = math.log10(base), math.log10(ours)
        direction = "higher"
    if direction == "zero":
        base, ours = abs(base), abs(ours)
        direction = "lower"
    if base == 0:
        return None
    change = (ours - base) / abs(base) * 100.0
    return -change if direction == "higher" else change


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def find_runs(paths: Iterable[str | Path]) -> list[tuple[Path, dict]]:
    """Every run directory under ``paths`` (a run dir itself, or a folder of them), with its record."""
    from mpu.experiments.runner import read_run

    found: dict[Path, dict] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise MPUError(f"{path}: no such file or directory")
        files = [path] if path.is_file() and path.name == RUN_FILE else sorted(path.rglob(RUN_FILE))
        for file in files:
            run_dir = file.parent.resolve()
            if run_dir not in found:
                found[run_dir] = read_run(run_dir)
    if not found:
        raise MPUError(f"no {RUN_FILE} under {', '.join(str(p) for p in paths)}: mpu report collects the run directories "
                       f"that `python src/train.py` writes (each holds a {RUN_FILE}); `mpu demo` prints its own table "
                       "(runs/demo/summary.json)")
    return sorted(found.items(), key=lambda item: str(item[0]))


def _match_key(record: dict) -> tuple:
    training = record.get("training") or {}
    return (record.get("experiment"), record.get("benchmark"), record.get("forget_split"), record.get("method"),
            record.get("seed"), record.get("epochs_total"), training.get("learning_rate"))


def variant(record: dict) -> str:
    """What sets an MPU run apart from the default protocol, as a short label ("" for the default):
    controls such as the reparameterisation switched off, a reference model that moves every round, or
    sigma from the whole weights instead of the task vector."""
    labels = []
    reparam = (record.get("server") or {}).get("reparam") or {}
    if reparam.get("enabled") is False:
        labels.append("no reparam")
    # reference_model_round: client_reference in runs recorded before the rename
    if record.get("reference_model_round", record.get("client_reference")) == "round":
        labels.append("reference model per round")
    # sigma_from "weights: ..." (no base) is another noise scale: pooled with the paper's runs it would
    # average two regimes into one row
    if str(record.get("sigma_from") or "").startswith("weights"):
        labels.append("sigma from the weights")
    return ", ".join(labels)


def _group_key(record: dict) -> tuple:
    return (record.get("experiment"), record.get("benchmark"), record.get("forget_split"), record.get("method"),
            record.get("kappa"), record.get("m"), variant(record))


@dataclass
class Row:
    """MPU at one (method, kappa, m) against the baseline, over the seeds that have both."""

    experiment: str | None
    benchmark: str | None
    forget_split: str | None
    method: str
    kappa: float
    m: int
    variant: str = ""  # "" for the default protocol, else what differs (see ``variant``)
    seeds: list[int] = field(default_factory=list)
    baseline: dict[str, float | None] = field(default_factory=dict)  # mean over seeds
    mpu: dict[str, float | None] = field(default_factory=dict)
    degradation: dict[str, float | None] = field(default_factory=dict)  # mean over seeds
    average: float | None = None  # mean over seeds of the per-seed average degradation
    average_std: float | None = None  # sample standard deviation across seeds (None for one seed)
    per_seed_average: list[float | None] = field(default_factory=list)


@dataclass
class Report:
    metrics: list[str]
    rows: list[Row]
    runs: list[tuple[Path, dict]]
    unmatched: list[str]
    target_and_retain: dict[str, dict[str, Any]]  # "target"/"retain" -> that model's summary


def _mean(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.fmean(numbers) if numbers else None


def build_report(runs: list[tuple[Path, dict]], metrics: list[str] | None = None) -> Report:
    records = [record for _, record in runs]
    benchmarks = {record.get("benchmark") or "tofu" for record in records}
    if metrics is None:
        metrics = DEFAULT_METRICS.get(next(iter(benchmarks)), DEFAULT_METRICS["tofu"]) if len(benchmarks) == 1 else DEFAULT_METRICS["tofu"]
    for metric in metrics:
        if metric not in DIRECTIONS:
            raise MPUError(f"no direction known for metric {metric!r}; known: {', '.join(sorted(DIRECTIONS))}")

    baselines: dict[tuple, dict] = {}
    unmatched: list[str] = []
    for path, record in runs:
        if record.get("mode") == "baseline":
            key = _match_key(record)
            if key in baselines:
                unmatched.append(f"{path}: a second baseline for {record.get('method')} seed {record.get('seed')}; the first one is used")
                continue
            baselines[key] = record
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for path, record in runs:
        if record.get("mode") != "mpu":
            continue
        baseline = baselines.get(_match_key(record))
        if baseline is None:
            unmatched.append(f"{path}: no noise-free baseline with the same method, seed, epochs and learning rate")
            continue
        if not record.get("summary") or not baseline.get("summary"):
            unmatched.append(f"{path}: no summary (the run was not evaluated or did not finish)")
            continue
        groups.setdefault(_group_key(record), []).append((record, baseline))

    rows = []
    for key, pairs in groups.items():
        experiment, benchmark, split, method, kappa, m, label = key
        pairs.sort(key=lambda pair: pair[0].get("seed") or 0)
        per_metric: dict[str, list[float | None]] = {metric: [] for metric in metrics}
        per_seed_average = []
        for record, baseline in pairs:
            values = [degradation(metric, baseline["summary"].get(metric), record["summary"].get(metric)) for metric in metrics]
            for metric, value in zip(metrics, values):
                per_metric[metric].append(value)
            per_seed_average.append(_mean(values))
        averages = [value for value in per_seed_average if value is not None]
        rows.append(Row(
            experiment=experiment, benchmark=benchmark, forget_split=split, method=method, kappa=kappa, m=m, variant=label,
            seeds=[record.get("seed") for record, _ in pairs],
            baseline={metric: _mean([b["summary"].get(metric) if _number(b["summary"].get(metric)) else None for _, b in pairs]) for metric in metrics},
            mpu={metric: _mean([r["summary"].get(metric) if _number(r["summary"].get(metric)) else None for r, _ in pairs]) for metric in metrics},
            degradation={metric: _mean(values) for metric, values in per_metric.items()},
            average=_mean(averages) if averages else None,
            average_std=statistics.stdev(averages) if len(averages) > 1 else None,
            per_seed_average=per_seed_average,
        ))
    rows.sort(key=lambda row: (str(row.experiment), str(row.forget_split), row.method, row.variant != "", row.kappa, row.m, row.variant))

    target_and_retain: dict[str, dict[str, Any]] = {}
    for record in records:
        # "reference": the key in runs recorded before the rename
        for name, summary in (record.get("target_and_retain") or record.get("reference") or {}).items():
            target_and_retain.setdefault(name, summary)
    return Report(metrics=metrics, rows=rows, runs=runs, unmatched=unmatched, target_and_retain=target_and_retain)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def markdown(report: Report) -> str:
    metrics = report.metrics
    lines = ["# MPU against the noise-free baseline", ""]
    lines.append("Relative degradation in percent, positive when MPU is worse (forget_quality on a log10 scale); "
                 "avg = mean over the metrics, then over seeds; ± = standard deviation of avg across seeds.")
    lines.append("")
    variants = any(row.variant for row in report.rows)
    header = ["method", "κ", "m", *(["variant"] if variants else []), "seeds", *[f"Δ {metric}" for metric in metrics], "avg", "± seeds"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in report.rows:
        cells = [row.method, _fmt(row.kappa), str(row.m), *([row.variant or "-"] if variants else []), ",".join(str(s) for s in row.seeds),
                 *[_pct(row.degradation[metric]) for metric in metrics], _pct(row.average),
                 "n/a" if row.average_std is None else f"{row.average_std:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Values (mean over seeds)", ""]
    header = ["method", "run", *metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, summary in report.target_and_retain.items():
        lines.append("| " + " | ".join([f"({name} model)", "-", *[_fmt(summary.get(metric)) for metric in metrics]]) + " |")
    seen_baselines = set()
    for row in report.rows:
        key = (row.experiment, row.forget_split, row.method, tuple(row.seeds))
        seeds = ",".join(str(seed) for seed in row.seeds)
        if key not in seen_baselines:
            seen_baselines.add(key)
            lines.append("| " + " | ".join([row.method, f"noise-free, seeds {seeds}", *[_fmt(row.baseline[metric]) for metric in metrics]]) + " |")
        label = f" ({row.variant})" if row.variant else ""
        lines.append("| " + " | ".join([row.method, f"MPU κ={_fmt(row.kappa)} m={row.m}{label}, seeds {seeds}", *[_fmt(row.mpu[metric]) for metric in metrics]]) + " |")
    lines += ["", f"{len(report.runs)} runs; experiments: {', '.join(sorted({str(r.experiment) for r in report.rows})) or '-'}."]
    if report.unmatched:
        lines += ["", "Not compared:", *[f"- {text}" for text in report.unmatched]]
    return "\n".join(lines) + "\n"


def write_csv(report: Report, path: Path) -> None:
    metrics = report.metrics
    fields = ["experiment", "benchmark", "forget_split", "method", "kappa", "m", "variant", "n_seeds", "seeds",
              *[f"baseline_{m}" for m in metrics], *[f"mpu_{m}" for m in metrics], *[f"deg_{m}" for m in metrics],
              "avg_deg", "avg_deg_std"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for row in report.rows:
            writer.writerow([row.experiment, row.benchmark, row.forget_split, row.method, row.kappa, row.m, row.variant, len(row.seeds),
                             " ".join(str(s) for s in row.seeds), *[row.baseline[m] for m in metrics],
                             *[row.mpu[m] for m in metrics], *[row.degradation[m] for m in metrics], row.average,
                             row.average_std])


def write_runs_csv(report: Report, path: Path) -> None:
    keys = sorted({key for _, record in report.runs for key in (record.get("summary") or {})})
    fields = ["run_dir", "experiment", "mode", "method", "kappa", "m", "variant", "R", "E", "seed", "learning_rate", "forget_split",
              "seconds_total", *keys]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for run_dir, record in report.runs:
            summary = record.get("summary") or {}
            writer.writerow([str(run_dir), record.get("experiment"), record.get("mode"), record.get("method"), record.get("kappa"),
                             record.get("m"), variant(record) if record.get("mode") == "mpu" else "", record.get("R"), record.get("E"),
                             record.get("seed"), (record.get("training") or {}).get("learning_rate"), record.get("forget_split"),
                             (record.get("seconds") or {}).get("total"), *[summary.get(key) for key in keys]])


def plot_degradation(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    lines: dict[tuple, list[Row]] = {}
    for row in report.rows:
        if not row.variant:  # controls are in the table, not the plot
            lines.setdefault((row.method, row.m), []).append(row)
    several_m = len({row.m for row in report.rows}) > 1
    kappas = sorted({row.kappa for row in report.rows if row.kappa is not None})
    position = {kappa: index for index, kappa in enumerate(kappas)}  # evenly spaced: κ = 0 has a place too
    for (method, m), rows in sorted(lines.items()):
        rows = sorted((r for r in rows if r.average is not None), key=lambda r: r.kappa)
        if not rows:
            continue
        label = f"{method} m={m}" if several_m else method
        axis.errorbar([position[r.kappa] for r in rows], [r.average for r in rows],
                      yerr=[r.average_std or 0.0 for r in rows], marker="o", capsize=3, label=label)
    axis.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.set_xticks(range(len(kappas)))
    axis.set_xticklabels([_fmt(k) for k in kappas])
    if any(abs(row.average or 0) > 50 for row in report.rows):
        axis.set_yscale("symlog", linthresh=1.0)
    axis.set_xlabel("noise ratio κ")
    axis.set_ylabel("average degradation vs noise-free (%)")
    axis.set_title("MPU degradation vs κ (dashed: 1%)", fontsize=10)
    if lines:
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_tradeoff(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    methods = sorted({row.method for row in report.rows})
    colors = {method: plt.cm.tab10(i % 10) for i, method in enumerate(methods)}
    kappas = sorted({row.kappa for row in report.rows})
    markers = dict(zip(kappas, ["s", "^", "D", "v", "P", "X"]))
    drawn = set()
    for row in (row for row in report.rows if not row.variant):
        fq_b, mu_b = row.baseline.get("forget_quality"), row.baseline.get("model_utility")
        fq_m, mu_m = row.mpu.get("forget_quality"), row.mpu.get("model_utility")
        if (row.method, "base") not in drawn and fq_b is not None and mu_b is not None:
            axis.scatter(fq_b, mu_b, color=colors[row.method], marker="o", s=60, edgecolors="black", label=f"{row.method} noise-free")
            drawn.add((row.method, "base"))
        if fq_m is not None and mu_m is not None:
            axis.scatter(fq_m, mu_m, color=colors[row.method], marker=markers.get(row.kappa, "x"), s=40)
    for kappa, marker in markers.items():
        axis.scatter([], [], color="grey", marker=marker, label=f"MPU κ={_fmt(kappa)}")
    for name, marker in (("target", "*"), ("retain", "P")):
        summary = report.target_and_retain.get(name) or {}
        if _number(summary.get("forget_quality")) and _number(summary.get("model_utility")) and summary["forget_quality"] > 0:
            axis.scatter(summary["forget_quality"], summary["model_utility"], color="black", marker=marker, s=90, label=f"{name} model")
    if any(row.baseline.get("forget_quality") for row in report.rows):
        axis.set_xscale("log")
    axis.set_xlabel("forget_quality (KS p-value, higher = closer to the retain model)")
    axis.set_ylabel("model_utility")
    axis.set_title("utility vs forget quality", fontsize=10)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "report.md",
        "csv": out / "report.csv",
        "runs": out / "runs.csv",
        "degradation_plot": out / "degradation_vs_kappa.png",
        "tradeoff_plot": out / "utility_vs_forget_quality.png",
    }
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    write_csv(report, paths["csv"])
    write_runs_csv(report, paths["runs"])
    plot_degradation(report, paths["degradation_plot"])
    plot_tradeoff(report, paths["tradeoff_plot"])
    (out / "report.json").write_text(json.dumps({
        "metrics": report.metrics,
        "rows": [row.__dict__ for row in report.rows],
        "target_and_retain": report.target_and_retain,
        "unmatched": report.unmatched,
    }, indent=2, default=str) + "\n", encoding="utf-8")
    paths["json"] = out / "report.json"
    return paths


def report(paths: Iterable[str | Path], out_dir: str | Path, metrics: list[str] | None = None) -> tuple[Report, dict[str, Path]]:
    """Collect the runs under ``paths``, compare, and write the report files into ``out_dir``."""
    built = build_report(find_runs(paths), metrics)
    return built, write_report(built, out_dir)


# What each demo column means for the reader of report.png: the unlearned models should end up where
# the retain model (never trained on the forget split) is, so the retain value is drawn as the goal.
DEMO_READING: dict[str, str] = {
    "higher": "higher is better",
    "lower": "lower = more forgotten",
    "log_higher": "higher is better (log scale)",
    "zero": "closer to 0 is better",
}
MISSING = "n/a"


def demo_figure(summary: dict, columns: list[str]):
    """The figure of ``mpu demo``'s report.png: one panel per summary key in ``columns``, one bar per
    model of ``summary["models"]`` (target, retain, noise-free, MPU).

    Each panel's title says which direction is better (:data:`DIRECTIONS`); the retain model's value
    is a dashed line labelled as the goal, since unlearning succeeds when the unlearned models look
    like a model that never saw the forget set. A value that is missing (None, NaN: a metric skipped
    or undefined) gets no bar and an "n/a" label, never a bar of height 0. forget_quality, a p-value
    spanning orders of magnitude, is on a log axis. Returns the matplotlib Figure (closed by the caller).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["models"])
    colors = ["#777777", "#4c72b0", "#dd8452", "#55a868", "#8172b3", "#937860"]
    figure, axes = plt.subplots(1, len(columns), figsize=(3.3 * len(columns), 3.9), squeeze=False)
    for axis, column in zip(axes[0], columns):
        values = [summary["models"][name].get(column) for name in names]
        present = [i for i, value in enumerate(values) if _number(value)]
        log_axis = DIRECTIONS.get(column) == "log_higher" and present and all(float(values[i]) > 0 for i in present)
        axis.bar([names[i] for i in present], [float(values[i]) for i in present],
                 color=[colors[i % len(colors)] for i in present])
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names)
        if log_axis:
            axis.set_yscale("log")
        for i, value in enumerate(values):
            if i not in present:
                axis.annotate(MISSING, (i, 0), xycoords=("data", "axes fraction"), xytext=(0, 4), textcoords="offset points",
                              ha="center", fontsize=8, color="#aa0000")
        retain = summary["models"].get("retain", {}).get(column)
        if _number(retain) and not (log_axis and float(retain) <= 0):
            axis.axhline(float(retain), color="black", linestyle="--", linewidth=1.0, label="retain = goal")
            axis.legend(fontsize=7, loc="best")
        reading = DEMO_READING.get(DIRECTIONS.get(column, ""), "")
        axis.set_title(f"{column}\n({reading}; goal: close to retain)" if reading else f"{column}\n(goal: close to retain)",
                       fontsize=8)
        axis.tick_params(axis="x", labelrotation=45, labelsize=8)
    figure.suptitle("Goal: the unlearned models (noise-free, MPU) close to the retain model (dashed), which never saw "
                    f"the forget set. n/a: not measured.\n{summary.get('verdict', '')}", fontsize=9)
    figure.tight_layout()
    return figure


def plot_demo(summary: dict, path: Path, columns: list[str]) -> None:
    """Write :func:`demo_figure` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    figure = demo_figure(summary, columns)
    figure.savefig(path, dpi=110)
    plt.close(figure)
