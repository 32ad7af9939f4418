"""``mpu demo`` — the built-in end-to-end run (the README's main command)."""

from __future__ import annotations

import argparse

from mpu.threads import add_threads_argument, apply_threads


def register(subparsers) -> None:
    from mpu.data.builtin import SIZE_PRESETS   # no torch: --help stays fast
    demo = subparsers.add_parser(
        "demo",
        help="offline end to end: build data, train tiny target/retain models, unlearn noise-free and under MPU, evaluate",
        description="Runs MPU against the noise-free baseline on the built-in benchmark and prints the comparison. "
        "Data and models are cached under $MPU_CACHE (default ~/.cache/mpu).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--out", default="runs/demo", help="where summary.json, report.png and the models go")
    demo.add_argument("--authors", type=int, default=SIZE_PRESETS["demo"]["authors"],
                      help="fictitious authors (10 QA each); the default (size preset 'demo', docs/data.md) keeps a cold run short on a CPU")
    demo.add_argument("--forget-split", default="forget10", choices=["forget01", "forget05", "forget10"],
                      help="the share of the authors to forget (TOFU's split names)")
    demo.add_argument("--method", default="NPO", help="unlearning method (any of `mpu unlearn --help`)")
    demo.add_argument("--epochs", type=float, default=5, help="unlearning epochs")
    demo.add_argument("--learning-rate", type=float, default=1e-3, help="unlearning learning rate (tiny models need far more than 1B ones)")
    demo.add_argument("--copies", type=int, default=3, help="MPU copies m")
    demo.add_argument("--kappa", type=float, default=0.01, help="MPU noise ratio")
    demo.add_argument("--finetune-epochs", type=float, default=None, help="epochs for fine-tuning the base into the tiny target/retain models (None: the calibrated recipe)")
    demo.add_argument("--base-epochs", type=float, default=None, help="epochs of the tiny base model on the general data (None: the calibrated recipe)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seeds the data, the tiny models, the data order and the server's randomness: identical runs print identical tables")
    demo.add_argument("--secret", action="store_true",
                      help="draw the server's secrets from the CSPRNG as in real use (the MPU row then varies between runs)")
    demo.add_argument("--sigma-reference", choices=["task-vector", "weights"], dest="sigma_from", default=argparse.SUPPRESS,
                      help=argparse.SUPPRESS)  # --sigma-from's old name
    demo.add_argument("--sigma-from", choices=["task-vector", "weights"], default="task-vector",
                      help="what the server's noise scale is a fraction of: the task vector theta - theta_base of the "
                           "target against its base model (the paper), or the whole weights theta (a harsher control, "
                           "labelled as such in the output)")
    add_threads_argument(demo)
    demo.set_defaults(func=_demo)


def _demo(args) -> int:
    from mpu.experiments.demo import DemoConfig, format_table, randomness_note, run_demo
    from mpu.errors import MPUError

    apply_threads(args.threads)
    try:
        config = DemoConfig(
            out_dir=args.out, authors=args.authors, forget_split=args.forget_split, method=args.method, epochs=args.epochs,
            learning_rate=args.learning_rate, copies=args.copies, kappa=args.kappa, finetune_epochs=args.finetune_epochs, seed=args.seed,
            base_epochs=args.base_epochs,
            secret=args.secret, sigma_from=args.sigma_from,
        )
    except ValueError as err:
        raise MPUError(str(err)) from None
    summary = run_demo(config)
    print(format_table(summary))
    print(f"wall time: {summary['seconds']['total']:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in summary['seconds'].items() if k != 'total')})")
    print(f"wrote {config.out_dir}/summary.json and {config.out_dir}/report.png")
    print(summary["verdict"])
    print(randomness_note(config))
    return 0
