"""Regenerate the measured parts of docs/privacy.md: every table and both frontier plots.

    python benchmarks/privacy_report.py                  # runs what is missing, reuses the rest
    python benchmarks/privacy_report.py --quick          # small versions of every benchmark (minutes)
    python benchmarks/privacy_report.py --reuse-only     # only re-render from the benchmarks' outputs

The page holds each generated part between ``<!-- privacy-report:NAME -->`` and
``<!-- /privacy-report:NAME -->``; everything outside the markers is prose and stays as written. The
parts and the benchmark output each is rendered from:

- ``audit-table``: every privacy setting attacked and measured (``benchmarks/audit_table.py``,
  ``--audit-out``/results.json);
- ``weights-frontier``: the hardened transforms' best m-copy reconstruction ÷ one copy against τ at
  each κ, next to the 1/√m ceiling (same results.json), and the plot ``hardened_frontier.png``;
- ``hardened-cost``: hardened vs default preset across methods, κ and seeds
  (``audit_table.py --cost``, ``--cost-out``/cost.json);
- ``dp-frontier``: client-side DP-SGD against the server's membership tests on forget10
  (``benchmarks/dp_frontier.py``, ``--dp-out``/results.json), and the plot ``dp_frontier.png``;
- ``dp-large``: the same with a 200-item forget set (``dp_frontier.py --audit-models``,
  ``--dp-large-out``/results.json), and the plot ``dp_large.png``.

A benchmark whose output is missing is run first (unless ``--reuse-only``, which then leaves that part
as it is and says so). Plots are matplotlib PNGs under ``--figures`` (default docs/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("audit-table", "weights-frontier", "hardened-cost", "dp-frontier", "dp-large")


def _save_figure(fig, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi) and close a figure; its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bench(name: str):
    """benchmarks/<name>.py as a module (the folder is not a package)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return __import__(name)


# Markers -------------------------------------------------------------------------------------------


def markers(name: str) -> tuple[str, str]:
    return f"<!-- privacy-report:{name} -->", f"<!-- /privacy-report:{name} -->"


def fill(text: str, name: str, content: str) -> str:
    """``text`` with everything between part ``name``'s two markers replaced by ``content``.

    Raises ``ValueError`` when a marker is missing, repeated, or the end comes before the start."""
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"the page must hold {start} and {end} exactly once each "
                         f"(found {text.count(start)} and {text.count(end)})")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise ValueError(f"{end} comes before {start}")
    return text[:i] + "\n" + content.strip("\n") + "\n" + text[j:]


# The weights frontier ------------------------------------------------------------------------------


def weights_points(audit: dict) -> list[dict]:
    """The hardened-transform settings of an audit_table results.json: one point per (κ, τ) with the
    best client attack's error ÷ one copy's. Sorted by κ, then τ."""
    points = []
    for name, entry in audit.get("settings", {}).items():
        config = entry["config"]
        reparam = config.get("reparam") or {}
        if not (name.startswith("hardened") and config.get("noise_scope") == "all" and reparam.get("vo") == "haar"):
            continue
        summary = entry["audit"]["summary"]
        points.append({"setting": name, "kappa": float(config["kappa"]), "tau": float(config["independent_noise"]),
                       "gain": float(summary["best_over_single_copy"]), "attack": summary["best_attack"]})
    return sorted(points, key=lambda p: (p["kappa"], p["tau"]))


def weights_table(points: list[dict], m: int) -> str:
    lines = [f"| κ | τ | best client attack | its error ÷ one copy's (goal ≥ 0.5; ceiling 1/√m = {1 / math.sqrt(m):.2f}) |",
             "|---|---|---|---|"]
    lines += [f"| {p['kappa']:g} | {p['tau']:g} | {p['attack']} | {p['gain']:.2f} |" for p in points]
    return "\n".join(lines)


def plot_weights(points: list[dict], m: int, path: Path) -> Path:
    """Gain against τ, one line per κ, with the 1/√m ceiling and the 0.5 goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    styles = [("o", "-", 9), ("x", "--", 7), ("s", ":", 5)]  # distinct: the curves coincide when gain depends on τ only
    for i, kappa in enumerate(sorted({p["kappa"] for p in points})):
        line = [p for p in points if p["kappa"] == kappa]
        marker, style, size = styles[i % len(styles)]
        ax.plot([p["tau"] for p in line], [p["gain"] for p in line], marker=marker, linestyle=style, markersize=size,
                label=f"κ = {kappa:g}")
    ax.axhline(1 / math.sqrt(m), color="grey", linestyle="--", label=f"ceiling 1/√m (m = {m})")
    ax.axhline(0.5, color="tab:red", linestyle=":", label="goal 0.5")
    ax.set_xlabel("independent noise share τ")
    ax.set_ylabel("best m-copy error ÷ one copy's")
    ax.set_title("Model owner: hardened preset vs the best client attack", fontsize=10)
    ax.set_ylim(0, 0.7)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


# The DP frontier -----------------------------------------------------------------------------------


def _epsilon(text: str) -> float:
    return math.inf if str(text).strip() == "inf" else float(text)


def plot_dp(runs: dict[str, dict], path: Path) -> Path:
    """Two panels against ε (∞ drawn right of the largest finite ε): the server's best membership AUC
    and model utility, one line per method and benchmark run (``runs``: label -> results.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [_epsilon(r["epsilon"]) for res in runs.values() for r in res["results"] if math.isfinite(_epsilon(r["epsilon"]))]
    at_inf = 2 * max(finite) if finite else 1.0
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, res in runs.items():
        for method in dict.fromkeys(r["method"] for r in res["results"]):
            rows = sorted((r for r in res["results"] if r["method"] == method), key=lambda r: _epsilon(r["epsilon"]))
            xs = [min(_epsilon(r["epsilon"]), at_inf) for r in rows]
            name = f"{method} ({label})" if len(runs) > 1 else method
            left.plot(xs, [r["best_auc"] for r in rows], marker="o", label=name)
            right.plot(xs, [r["model_utility"] for r in rows], marker="o", label=name)
    left.axhline(0.6, color="tab:red", linestyle=":", label="goal AUC 0.6")
    left.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    for ax, ylabel in ((left, "server's best membership AUC"), (right, "model utility")):
        ax.set_xscale("log")
        ticks = sorted(set(finite)) + [at_inf]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks[:-1]] + ["∞"])
        ax.minorticks_off()
        ax.set_xlabel("ε (all m copies)")
        ax.set_ylabel(ylabel)
    left.legend(fontsize=7)
    fig.suptitle("Data owner: client-side DP-SGD against the server's membership tests")
    return _save_figure(fig, path)


def dp_table(results: dict) -> str:
    return _bench("dp_frontier").format_table(results["results"], results["target"])


# Running what is missing ---------------------------------------------------------------------------


def commands(args) -> dict[str, list[list[str]]]:
    """The benchmark commands that produce each part's source (full or --quick)."""
    py = [sys.executable]
    audit = [*py, str(HERE / "audit_table.py"), "--out", str(args.audit_out)]
    cost = [*py, str(HERE / "audit_table.py"), "--out", str(args.cost_out), "--cost"]
    dp = [*py, str(HERE / "dp_frontier.py"), "--out", str(args.dp_out)]
    large = [*py, str(HERE / "dp_frontier.py"), "--out", str(args.dp_large_out), "--audit-models", str(args.audit_out)]
    if args.quick:
        return {"audit-table": [audit + ["--quick"], audit + ["--quick", "--settings", "hardened,hardened-tau4,hardened-k0.1-tau4"]],
                "hardened-cost": [cost + ["--methods", "GradDiff,NPO", "--seeds", "0"]],
                "dp-frontier": [dp + ["--methods", "NPO", "--epsilons", "inf,8", "--authors", "20", "--shadows", "2"]],
                "dp-large": [large + ["--forget-authors", "4", "--methods", "NPO", "--epsilons", "inf,8", "--epochs", "1", "--shadows", "2"]]}
    return {"audit-table": [audit],
            "hardened-cost": [cost],
            "dp-frontier": [dp + ["--methods", "NPO,GradDiff", "--epsilons", "inf,8,1"]],
            "dp-large": [large + ["--forget-authors", "20", "--methods", "NPO,GradDiff", "--epsilons", "inf,16,8", "--epochs", "2",
                                  "--batch-size", "64", "--shadows", "2"]]}


def sources(args) -> dict[str, Path]:
    return {"audit-table": args.audit_out / "results.json", "weights-frontier": args.audit_out / "results.json",
            "hardened-cost": args.cost_out / "cost.json", "dp-frontier": args.dp_out / "results.json",
            "dp-large": args.dp_large_out / "results.json"}


def render(name: str, data: dict, figures: Path, page: Path) -> str:
    """The markdown of part ``name`` from its benchmark output ``data`` (and its plot, written now)."""
    if name == "audit-table":
        return _bench("audit_table").summarise(data)
    if name == "weights-frontier":
        m = int(data.get("m", 3))
        points = weights_points(data)
        if not points:
            raise ValueError("the audit results hold no hardened setting (hardened*, noise scope all, V/O Haar)")
        plot = plot_weights(points, m, figures / "hardened_frontier.png")
        return f"![gain against τ]({_relative(plot, page)})\n\n" + weights_table(points, m)
    if name == "hardened-cost":
        return _bench("audit_table").cost_summary(data)
    if name in ("dp-frontier", "dp-large"):
        plot = plot_dp({name: data}, figures / f"{name.replace('-', '_')}.png")
        return f"![membership AUC and model utility against ε]({_relative(plot, page)})\n\n" + dp_table(data)
    raise ValueError(f"unknown part {name!r}")


def _relative(path: Path, page: Path) -> str:
    try:
        return str(path.resolve().relative_to(page.resolve().parent))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small versions of the benchmarks that have to run")
    parser.add_argument("--reuse-only", action="store_true", help="run nothing: render the parts whose outputs exist")
    parser.add_argument("--only", default=None, help="comma-separated parts (default: all): " + ", ".join(PARTS))
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "privacy.md")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--audit-out", type=Path, default=Path("runs/audit_table"))
    parser.add_argument("--cost-out", type=Path, default=None, help="default: --audit-out")
    parser.add_argument("--dp-out", type=Path, default=Path("runs/dp_frontier"))
    parser.add_argument("--dp-large-out", type=Path, default=Path("runs/dp_large"))
    args = parser.parse_args(argv)
    args.cost_out = args.cost_out or args.audit_out
    names = [n.strip() for n in args.only.split(",")] if args.only else list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    if not args.page.is_file():
        print(f"mpu: {args.page}: no such page", file=sys.stderr)
        return 2
    text = args.page.read_text(encoding="utf-8")
    for name in names:  # refuse before running anything if the page cannot take the result
        try:
            fill(text, name, "")
        except ValueError as error:
            print(f"mpu: {args.page}: part {name}: {error}", file=sys.stderr)
            return 2

    paths, runs, skipped = sources(args), commands(args), []
    runner = {"audit-table": "audit-table", "weights-frontier": "audit-table", "hardened-cost": "hardened-cost",
              "dp-frontier": "dp-frontier", "dp-large": "dp-large"}
    todo = {runner[n] for n in names if not paths[n].is_file()}
    if "dp-large" in todo and not (args.audit_out / "models" / "models.json").is_file():
        todo.add("audit-table")  # dp-large forgets authors of audit_table's models
    if args.reuse_only:
        todo = set()
    for key in ("audit-table", "hardened-cost", "dp-frontier", "dp-large"):
        for command in runs[key] if key in todo else []:
            print("running:", " ".join(command), flush=True)
            subprocess.run(command, check=True, cwd=ROOT)
    for name in names:
        if not paths[name].is_file():
            skipped.append(name)
            continue
        text = fill(text, name, render(name, json.loads(paths[name].read_text()), args.figures, args.page))
    args.page.write_text(text, encoding="utf-8")
    print(f"wrote {args.page}: {', '.join(n for n in names if n not in skipped) or 'nothing'}"
          + (f"; no output yet for {', '.join(skipped)} (left as it was)" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
