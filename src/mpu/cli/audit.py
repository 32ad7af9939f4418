"""``mpu audit`` — what a curious client can recover from one round's published copies."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpu.threads import add_threads_argument, apply_threads


def register(subparsers) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="privacy audit: run a curious client's attacks on one round's copies and score them",
        description=(
            "Runs the attacks a client holding every copy of a round could run (plain average, harmonic "
            "combination with the paper's alpha schedule and with alpha estimated from the copies, each "
            "also after aligning the copies to copy 1: FFN unit matching, RoPE-plane and V/O Procrustes, "
            "KV-group matching). The attacks use only the copies and the public manifest; --true-weights "
            "(theta) and --base only score them. Writes JSON and prints a table."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    audit.add_argument("--inbox", required=True, help="one round's publication: the folder `mpu server publish --out` wrote (manifest.json, copy-1 ... copy-m)")
    audit.add_argument("--true-weights", "--reference", dest="true_weights", default=None, metavar="MODEL_DIR",
                       help="theta, the server's model the attacks try to reconstruct (scoring only); without it nothing is "
                            "scored. --reference is its old name")
    audit.add_argument("--base", default=None, help="the public base model: task-vector errors, and a client-side alignment to it")
    audit.add_argument("--out", required=True, help="JSON report to write (an existing one is refused without --overwrite)")
    audit.add_argument("--overwrite", action="store_true",
                       help="replace an existing --out report, and write into a non-empty --keep-recovered folder "
                            "(each attack's subfolder there is replaced)")
    audit.add_argument("--no-align", action="store_true", help="skip the alignment attacks")
    audit.add_argument("--oracle-alphas", default=None, help="scoring only: the true alphas (comma-separated) for a best-linear-combination bound")
    audit.add_argument("--oracle-tau", type=float, default=0.0, help="scoring only: the true independent-noise share tau for that bound")
    audit.add_argument("--logit-sequences", type=int, default=16, help="random token sequences for the logit comparison")
    audit.add_argument("--logit-length", type=int, default=32, help="tokens per random sequence")
    audit.add_argument("--seed", type=int, default=0, help="seed of the random token sequences")
    audit.add_argument("--keep-recovered", default=None, metavar="DIR", help="keep each attack's recovered model (in copy 1's coordinates) here")
    add_threads_argument(audit)
    audit.set_defaults(func=_audit)


def _check_outputs(args) -> None:
    """Refuse, before the attacks: a report path that is a folder, lies under a file, lies inside an
    input (the inbox, --true-weights, --base) or exists without --overwrite; a --keep-recovered folder
    that is, holds or lies inside an input, or holds files without --overwrite. InputError naming it."""
    from mpu.checkpoint.files import check_output
    from mpu.errors import InputError

    inputs = [Path(path) for path in (args.inbox, args.true_weights, args.base) if path and Path(path).exists()]
    out = Path(args.out)
    if out.is_dir():
        raise InputError(out, "is a folder; --out takes the report's file name")
    check_output(out.parent, replace=True)
    resolved = out.resolve()
    for path in inputs:
        if path.resolve() == resolved or path.resolve() in resolved.parents:
            raise InputError(out, f"lies inside {path}, which this command reads; write the report elsewhere")
    if out.exists() and not args.overwrite:
        raise InputError(out, "already exists; pass --overwrite to replace it, or choose another --out")
    if args.keep_recovered:
        keep = Path(args.keep_recovered)
        check_output(keep, keep=inputs, replace=True)
        if resolved == keep.resolve() or keep.resolve() in resolved.parents:
            raise InputError(out, f"lies inside --keep-recovered {keep}, where the recovered models go; write the report elsewhere")
        if keep.is_dir() and any(keep.iterdir()) and not args.overwrite:
            raise InputError(keep, "holds files; pass --overwrite to write the recovered models there, or choose an "
                                   "empty or new folder")


def _audit(args) -> int:
    from mpu.audit import format_table, run_audit
    from mpu.checkpoint import atomic_write_json
    from mpu.errors import MPUError

    from mpu.cli.client import check_inbox   # the client's check: a wrong --inbox says what to pass

    check_inbox(args.inbox)
    _check_outputs(args)   # before the attacks, not after them
    apply_threads(args.threads)
    oracle = None
    if args.oracle_alphas:
        try:
            oracle = [float(value) for value in args.oracle_alphas.split(",")]
        except ValueError:
            raise MPUError(f"--oracle-alphas must be numbers like 1,1.5,2; got {args.oracle_alphas!r}") from None
    if args.logit_sequences < 1 or args.logit_length < 2:
        raise MPUError("--logit-sequences must be >= 1 and --logit-length >= 2")
    result = run_audit(
        args.inbox, args.true_weights, args.base, align=not args.no_align, oracle_alphas=oracle, oracle_tau=args.oracle_tau,
        logit_sequences=args.logit_sequences, logit_length=args.logit_length, seed=args.seed,
        keep_recovered=args.keep_recovered, progress=False,
    )
    atomic_write_json(args.out, result.report)
    print(format_table(result.report))
    print(f"\nwrote {args.out}")
    return 0
