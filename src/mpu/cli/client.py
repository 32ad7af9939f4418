"""``mpu client unlearn`` — the data owner's side: unlearn on each published copy, return updates."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mpu.cli._lazy import add_method_arguments_lazily
from mpu.threads import add_threads_argument, apply_threads


def add_client_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--forget`` (required) and ``--retain``: question/answer row files in any supported format."""
    parser.add_argument("--forget", required=True, help="forget set: question/answer rows as JSON lines, a JSON array, CSV, parquet, a `datasets` folder or a hub-layout folder")
    parser.add_argument("--retain", default=None, help="retain set, same format (needed by GradDiff, RMU, PDU; without it other methods leave their retain term out)")


def check_inbox(inbox: str) -> None:
    """Refuse an ``--inbox`` that is not a publication with a message that says what to pass instead:
    a missing folder, the server's work directory (which a data owner should never hold), a single copy."""
    from mpu.errors import MPUError

    path = Path(inbox)
    wanted = "pass the folder that `mpu server publish --out` wrote (manifest.json, copy-1 ...)"
    if not os.path.lexists(path):
        raise MPUError(f"--inbox {path}: no such folder; {wanted}")
    if not path.is_dir() or os.path.lexists(path / "manifest.json"):
        return   # the publication reader checks everything else (links, FIFOs, every field) and names the file
    if (path / "state.json").is_file():
        raise MPUError(f"--inbox {path}: this is the server's work directory (private: it holds the secrets), "
                       f"not a publication; {wanted}")
    if (path / "config.json").is_file() and (path.parent / "manifest.json").is_file():
        raise MPUError(f"--inbox {path}: this is one copy of a publication; pass its folder {path.parent} "
                       "(and --copy K to train only copy K)")
    raise MPUError(f"--inbox {path}: no manifest.json in it; {wanted}")


def register(subparsers) -> None:
    """Add ``mpu client unlearn`` to the CLI's subcommands."""

    client = subparsers.add_parser("client", help="data owner: unlearn on the published copies", description="The data owner's side of MPU. Nothing but the updates and a loss summary leaves the client.")
    commands = client.add_subparsers(dest="client_command", metavar="SUBCOMMAND", required=True)
    unlearn = commands.add_parser(
        "unlearn",
        help="train every copy (or one, with --copy) and write update-K/ folders",
        description="Runs the unlearning method on each published copy independently (fresh optimizer, own data order) and writes Delta' = trained - copy in float32 safetensors with a manifest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,   # + line breaks kept: see add_method_arguments_lazily
    )
    unlearn.add_argument("--inbox", required=True, help="the server's published folder (manifest.json, copy-1 ...); the copies to train are checked there, "
                              "then copied to $MPU_CACHE/received (default ~/.cache/mpu/received), checked again and trained "
                              "from that private copy, removed at the end (one copy's disk space each)")
    add_client_data_arguments(unlearn)
    unlearn.add_argument("--out", required=True, help="folder for the returns (update-K/ per copy); gather several clients' into one")
    unlearn.add_argument("--copy", type=int, action="append", default=None, help="train only this copy (repeatable), to spread copies over devices or machines (default: every copy)")
    unlearn.add_argument("--reference-inbox", dest="reference_model_inbox", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)  # --reference-model-inbox's old name
    unlearn.add_argument("--reference-model-inbox", default=None, metavar="DIR",
                         help="an earlier round's publication (keep round 1's): reference-model methods (NPO, DPO, UNDIAL, KL retain) "
                              "compare copy K with copy K of that round, so the reference stays fixed over rounds; "
                              "default: this round's copy")
    unlearn.add_argument("--overwrite", action="store_true", help="replace update-K/ folders that already exist in --out (refused otherwise)")
    unlearn.add_argument("--resume", action="store_true",
                         help="skip copies whose update in --out is finished for this publication with the same method and settings; "
                              "train the others")
    add_threads_argument(unlearn)
    unlearn.add_argument("--return-lora", action="store_true", help="return the LoRA factors instead of the merged update (needs --lora-rank)")
    add_method_arguments_lazily(unlearn)
    unlearn.set_defaults(func=_unlearn)


def _unlearn(args) -> int:
    from mpu.cli.unlearn import learning_rate_hint
    from mpu.client.inbox import read_publication
    from mpu.client.unlearn import is_main_process, unlearn_publication
    from mpu.data.qa import load_qa_rows
    from mpu.errors import MPUError
    from mpu.methods import UnlearnJob, options_from_args
    from mpu.quiet import escape_library_output

    escape_library_output()   # transformers quotes the server's config values in its warnings
    apply_threads(args.threads)
    method, hparams, training = options_from_args(args)
    forget = load_qa_rows(args.forget)
    retain = load_qa_rows(args.retain) if args.retain else None
    check_inbox(args.inbox)
    job = UnlearnJob(method, hparams, training, forget, retain)
    results = unlearn_publication(args.inbox, job, args.out, copy_ids=args.copy, return_lora=args.return_lora,
                                  reference_model_inbox=args.reference_model_inbox, overwrite=args.overwrite, resume=args.resume)
    if not is_main_process():
        return 0  # under torchrun every rank trains; rank 0 reports
    trained = [result for result in results if not result.skipped]
    for result in results:
        if result.skipped:   # a trained copy's line is the library's log line (mpu run and Flower show the same)
            print(f"copy {result.copy_id}: finished update in {result.out_dir}, skipped (--resume)")
    copies = ", ".join(str(result.copy_id) for result in results)
    print(f"{len(results)} update(s) in {args.out} (copies {copies}): return the folder to the model owner "
          f"(mpu server aggregate --returns {args.out})")
    # After the run, not before: a failure elsewhere gets its own message without this one in front of it.
    # the copy that was verified and trained, by the manifest, not whatever else the inbox holds
    try:
        trained_dirs = [copy.path for copy in read_publication(args.inbox).copies if trained and copy.id == trained[0].copy_id]
        hint = learning_rate_hint(trained_dirs[0], training.learning_rate) if trained_dirs else None
    except MPUError:   # the server changed the inbox since the run (which used its private copy): no hint, the updates stand
        hint = None
    if hint:
        print(hint, file=sys.stderr)
    return 0
