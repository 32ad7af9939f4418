"""``mpu report`` — a sweep's runs in one table: MPU against the noise-free baseline."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="collect src/train.py runs into one table (markdown, CSV) with degradation vs the noise-free baseline, and plots",
        description="Finds run.json files under RUNS (run directories or sweep folders), pairs every MPU run with the noise-free "
        "baseline of the same experiment, split, method, seed, epochs and learning rate, and writes report.md, report.csv, "
        "runs.csv, degradation_vs_kappa.png and utility_vs_forget_quality.png to --out. Degradation is relative, in percent, "
        "positive when MPU is worse; forget_quality is compared on a log10 scale.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    report.add_argument("runs", nargs="+", metavar="RUNS", help="run directories or folders holding them (searched recursively)")
    report.add_argument("--out", required=True, help="folder for the report files")
    report.add_argument("--metrics", default=None,
                        help="comma-separated summary keys to compare and average (default: model_utility, forget_quality, "
                        "forget_Q_A_ROUGE, forget_Q_A_Prob, extraction_strength for TOFU)")
    report.set_defaults(func=_report)


def _report(args) -> int:
    from mpu.experiments.report import markdown, report

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()] if args.metrics else None
    built, paths = report(args.runs, args.out, metrics)
    print(markdown(built), end="")
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0
