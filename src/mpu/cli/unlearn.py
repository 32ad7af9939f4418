"""``mpu unlearn``: the noise-free baseline. One model, no MPU, the same training code as the client.

    mpu unlearn --model M --forget F [--retain R] --method NAME [--epochs E] --out MODEL_DIR

Multi-process: ``torchrun --nproc_per_node N -m mpu.cli unlearn ...`` (or ``accelerate launch``); every
process trains, only the main one writes ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mpu.cli._lazy import add_method_arguments_lazily
from mpu.errors import MPUError
from mpu.threads import add_threads_argument, apply_threads

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "auto")  # mpu.methods.job.DTYPES (not imported: parsing stays free of torch)
SUMMARY = "unlearn_summary.json"  # this run's method, settings, steps and losses, beside the model files


def register(subparsers) -> None:
    """Add ``mpu unlearn`` to the CLI's subcommands (method flags are added lazily)."""
    parser = subparsers.add_parser(
        "unlearn",
        help="noise-free baseline: unlearn a forget set from one model (no MPU)",
        description=(
            "Unlearn the forget set (question/answer rows: JSON lines, JSON array, CSV, parquet or a `datasets` folder) from a "
            "Hugging Face causal LM with one of the methods below, and save the result as a model "
            "directory. Settings come from the method's defaults, then --config, then the flags."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_method_arguments_lazily(parser)
    parser.add_argument("--model", required=True, help="Hugging Face model directory (config, tokenizer, weights)")
    parser.add_argument("--forget", required=True, help="forget set: question/answer rows as JSON lines, a JSON array, CSV, parquet, a `datasets` folder or a hub-layout folder")
    parser.add_argument("--retain", help="retain set, same format (needed by GradDiff, RMU, PDU; optional for others)")
    parser.add_argument("--out", required=True, help="where to write the unlearned model directory")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier unlearned model")
    add_threads_argument(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load and train the model in (default: float32)")
    parser.set_defaults(func=run)


# Below this many parameters the 1e-5 default (OpenUnlearning's, for 1B-parameter models) barely moves
# a model: on the built-in 1M-parameter models the calibrated rates are 1e-4 to 1e-3 (docs/results.md).
SMALL_MODEL_PARAMETERS = 50_000_000
HINT_MAX_TENSORS = 1_000_000   # a header declaring more is not read for a hint
LOW_LEARNING_RATE = 1e-5


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters of the safetensors weights in ``model_dir``, from the files' headers (no tensor is
    read), through the checked reader (regular files only, bounded headers: the folder may be the
    other party's copy); None when there are none or the weights are unreadable."""
    from mpu.checkpoint import CheckpointReader

    try:
        return CheckpointReader(model_dir, max_tensors=HINT_MAX_TENSORS).numel() or None
    except (MPUError, OSError):
        return None


def learning_rate_hint(model_dir: str | Path, learning_rate: float) -> str | None:
    """A hint when ``learning_rate`` is the large-model default but the model is small (the built-in
    tiny models): training would run and change next to nothing. None otherwise."""
    if learning_rate > LOW_LEARNING_RATE:
        return None
    count = count_parameters(model_dir)
    if count is None or count >= SMALL_MODEL_PARAMETERS:
        return None
    return (f"hint: learning rate {learning_rate:g} is the default for billion-parameter models; it barely changes this "
            f"{count / 1e6:.1f}M-parameter model. The built-in tiny models unlearn at 1e-4 to 1e-3 "
            "(per-method rates in docs/results.md): set --learning-rate")


def check_model_dir(model: str) -> None:
    """Refuse a ``--model`` that is not a local Hugging Face model folder before anything runs, saying
    what to pass instead (a hub id: download it first; a publication: one of its copies or
    ``mpu client unlearn``; a file: its folder)."""
    path = Path(model)
    if (path / "config.json").is_file():
        return
    if path.is_file():
        raise MPUError(f"--model {path}: a file; pass the model's folder ({path.parent} if this is its {path.name})")
    if path.is_dir():
        if (path / "manifest.json").is_file() and any(path.glob("copy-*")):
            raise MPUError(f"--model {path}: a publication of `mpu server publish`, not a model; the data owner's side "
                           "is `mpu client unlearn --inbox " + str(path) + "`")
        raise MPUError(f"--model {path}: not a Hugging Face model directory (no config.json)")
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    raise MPUError(f"--model {path}: no such model directory" + (
        f"; mpu unlearn reads local folders: download the hub model with `hf download {model} --local-dir DIR` "
        "and pass --model DIR" if looks_like_hub_id else ""))


def run(args: argparse.Namespace) -> int:
    """``mpu unlearn``: refuse an existing --out unless --overwrite, read the rows, then
    :func:`mpu.methods.unlearn_model` (load, unlearn, save with ``unlearn_summary.json``)."""
    from mpu.data.qa import load_qa_rows
    from mpu.methods import UnlearnJob, options_from_args, unlearn_model

    apply_threads(args.threads)
    method, hparams, training = options_from_args(args)
    out = Path(args.out)
    forget = load_qa_rows(args.forget)
    retain = load_qa_rows(args.retain) if args.retain else None
    check_model_dir(args.model)   # before anything is printed: a wrong --model gets its message alone
    # never the model itself or a folder around it; --overwrite replaces only an earlier unlearned model
    from mpu.checkpoint.files import CONFIG, check_output   # here, not at import: --help must not import torch

    model_dir = Path(args.model)
    check_output(out, keep=[model_dir] if model_dir.exists() else [], replace=args.overwrite, marker=CONFIG,
                 flag="--overwrite")
    main = int(os.environ.get("RANK", "0")) == 0  # one line per run, not per process
    if main:
        logger.info("unlearning %d forget rows%s with %s: %s", len(forget),
                    f" ({len(retain)} retain rows)" if retain else "", method, hparams)
    job = UnlearnJob(method, hparams, training, forget, retain)
    result = unlearn_model(args.model, job, out, dtype=args.dtype, summary={"base_model": str(args.model)})
    if result.is_main_process:
        logger.info("%s: %d steps in %.1f s, loss %s -> %s; wrote %s", method, result.steps, result.seconds,
                    f"{result.losses[0]:.4g}" if result.losses else "-", f"{result.losses[-1]:.4g}" if result.losses else "-", out)
        # After the run, not before: a failure elsewhere gets its own message without this one in front of it.
        hint = learning_rate_hint(args.model, training.learning_rate)
        if hint:
            print(hint, file=sys.stderr)
    return 0
