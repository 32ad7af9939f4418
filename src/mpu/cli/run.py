"""``mpu run`` — all R rounds in one process (server and client), for experiments."""

from __future__ import annotations

import argparse
import sys

from mpu.cli._lazy import add_method_arguments_lazily
from mpu.client import REFERENCE_MODEL_ROUNDS
from mpu.errors import MPUError
from mpu.threads import add_threads_argument, apply_threads
import tempfile


def register(subparsers) -> None:
    from mpu.cli.client import add_client_data_arguments
    from mpu.cli.server import add_server_config_arguments

    run = subparsers.add_parser(
        "run",
        help="run all MPU rounds in one process (same code paths and files as the two-party commands)",
        description="init -> R x (publish -> client unlearn -> aggregate) -> export, exchanging files through a folder next to the work directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--model", required=True, help="the fine-tuned model: a local HF directory or a hub id")
    run.add_argument("--base", default=None,
                     help="the base model it was fine-tuned from; sigma is a fraction of the task vector theta - theta_base "
                          "(default: the base `mpu finetune` recorded in the model directory, if any)")
    run.add_argument("--sigma-reference", choices=["task-vector", "weights"], dest="sigma_from", default=argparse.SUPPRESS,
                      help=argparse.SUPPRESS)  # --sigma-from's old name
    run.add_argument("--sigma-from", choices=["task-vector", "weights"], default="task-vector",
                     help="task-vector: sigma_l = kappa * RMS(theta_l - theta_base,l) (the paper; needs a base, given or recorded, "
                          "else falls back to weights with a warning); weights: sigma_l = kappa * RMS(theta_l), no base "
                          "(harsher; a control)")
    add_client_data_arguments(run)
    run.add_argument("--out", required=True, help="where to write the unlearned model (a plain HF checkpoint; an existing "
                                                  "one is refused unless --overwrite)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out that holds an earlier model")
    run.add_argument("--workdir", default=None, help="server work directory (default: a temporary folder, removed at the end)")
    run.add_argument("--keep-exchange", action="store_true",
                     help="keep each round's outbox and returns, in <--workdir>-exchange (needs --workdir)")
    run.add_argument("--client-reference", choices=REFERENCE_MODEL_ROUNDS, dest="reference_model_round",
                     default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # --reference-model-round's old name
    run.add_argument("--reference-model-round", choices=REFERENCE_MODEL_ROUNDS, default="first",
                     help="reference model of NPO/DPO/UNDIAL/KL-retain on the client: round 1's copy K in every round (fixed, as "
                          "noise-free unlearning), or each round's own copy (moves every round)")
    add_threads_argument(run)
    add_server_config_arguments(run)
    add_method_arguments_lazily(run)
    run.set_defaults(func=_run)


def _run(args) -> int:
    from mpu.cli.server import server_config_from_args
    from mpu.data.qa import load_qa_rows
    from mpu.methods import options_from_args
    from mpu.experiments.two_party import run_mpu

    if args.keep_exchange and not args.workdir:   # the default work directory is a temporary folder, removed
        raise MPUError("--keep-exchange keeps each round's files in <workdir>-exchange, beside the work directory; "
                       "pass --workdir W too (without it they would be removed with the temporary one)")
    apply_threads(args.threads)
    config = server_config_from_args(args)
    method, hparams, training = options_from_args(args)
    forget = load_qa_rows(args.forget)
    retain = load_qa_rows(args.retain) if args.retain else None
    from mpu.cli.unlearn import learning_rate_hint
    from mpu.experiments.two_party import resolve_sigma_base

    base, label = resolve_sigma_base(args.model, args.base, args.sigma_from)
    with tempfile.TemporaryDirectory(prefix="mpu-run-") as scratch:
        workdir = args.workdir or f"{scratch}/server"
        out = run_mpu(args.model, base, config, forget, retain, method, hparams, training, workdir, args.out, args.keep_exchange,
                      reference_model_round=args.reference_model_round, overwrite=args.overwrite,
                      progress=training.progress_bar)   # --no-progress-bar turns off the server's bars too
    print(f"MPU done ({config.rounds} rounds, m={config.copies}, kappa={config.kappa}, {label}); unlearned model at {out}")
    # After the run, not before: a failure elsewhere gets its own message without this one in front of it.
    hint = learning_rate_hint(args.model, training.learning_rate)   # None for hub ids and large models
    if hint:
        print(hint, file=sys.stderr)
    return 0
