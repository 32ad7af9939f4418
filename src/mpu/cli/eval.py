"""``mpu eval``: evaluate a checkpoint on TOFU, MUSE or WMDP (OpenUnlearning metrics and JSON files)."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from mpu.errors import MPUError
from mpu.threads import add_threads_argument, apply_threads

TOFU_FORGET_SPLITS = ("forget01", "forget05", "forget10")  # the release's, and the built-in benchmark's


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on TOFU, MUSE or WMDP",
        description="Writes <BENCH>_EVAL.json (per-metric agg_value and value_by_index) and "
        "<BENCH>_SUMMARY.json (headline values) under OpenUnlearning's key names.",
    )
    parser.add_argument("--model", required=True, help="HF checkpoint directory")
    parser.add_argument("--benchmark", choices=("tofu", "muse", "wmdp"), default="tofu",
                        help="which benchmark's metrics and data layout (default: tofu)")
    parser.add_argument("--data", default=None,
                        help="local directory in the hub layout, or a hub dataset name (e.g. locuslab/TOFU); "
                        "default: the data the model was trained on (recorded in its mpu_finetune.json, or the cached "
                        "built-in dataset whose tokenizer it uses), else the built-in benchmark ($MPU_CACHE); "
                        "the data used is printed")
    parser.add_argument("--forget-split", default=None,
                        help="TOFU forget split: forget01, forget05 or forget10 (default: forget10, or --config's)")
    retain = parser.add_mutually_exclusive_group()  # the retain model, or its logs
    retain.add_argument("--retain-model", default=None,
                           help="checkpoint never trained on the forget set (forget_quality, privleak, mia_reference)")
    retain.add_argument("--retain-logs", default=None, help="the retain model's <BENCH>_EVAL.json")
    parser.add_argument("--out", required=True,
                        help="output directory; one that already holds this benchmark's results is refused without --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the <BENCH>_EVAL.json, _SUMMARY.json and _EVAL_CONFIG.json an earlier `mpu eval` wrote in --out")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per forward pass (default: the suite's batch_size, 32 in configs/eval/)")
    parser.add_argument("--config", default=None, help="suite YAML (e.g. configs/eval/tofu.yaml) to override")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="model weights (probabilities are always computed in float32)")
    parser.add_argument("--mmlu", default="default",
                        help="WMDP utility data: a hub name or directory, 'none' to skip, or 'default': the suite's "
                             "(configs/eval/wmdp.yaml; the built-in benchmark's own MMLU-style set for built-in data)")
    encoding = parser.add_argument_group("encoding (as the model was trained: docs/encoding.md)")
    encoding.add_argument("--prompt-format", default="auto",
                          help="auto (a known target's shipped settings, else the chat template), chat, plain, "
                               "or a shipped model name such as Llama-3.2-1B-Instruct")
    encoding.add_argument("--system-prompt", default=None, help="chat format: the system turn ('' for none)")
    encoding.add_argument("--date-string", default=None, help="chat format: the pinned date (default 10 Apr 2025)")
    encoding.add_argument("--max-length", type=int, default=None,
                          help="tokens per row (default: the model's context); longer rows are an error")
    encoding.add_argument("--truncate", action="store_true", help="cut longer rows instead, counted in the output")
    add_threads_argument(parser)
    parser.add_argument("--no-progress-bar", "--no-progress", dest="no_progress", action="store_true",
                        help="no progress bars (for logs)")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from mpu.eval import evaluate
    from mpu.eval.evaluator import model_data

    apply_threads(args.threads)
    model = Path(args.model)
    # before the data is looked for and announced: a wrong --model gets its own message alone
    if model.is_dir() and not (model / "config.json").is_file():
        raise MPUError(f"{model}: not a model directory (no config.json)")
    if not model.exists() and (args.model.count("/") != 1 or args.model.startswith((".", "/", "~"))):
        raise MPUError(f"{model}: no such model directory (--model takes a local model folder or a hub id like owner/name)")
    if args.forget_split and args.benchmark == "tofu" and not args.config and args.forget_split not in TOFU_FORGET_SPLITS:
        close = difflib.get_close_matches(args.forget_split, TOFU_FORGET_SPLITS, n=1)
        raise MPUError(f"--forget-split {args.forget_split}: TOFU's forget splits are {', '.join(TOFU_FORGET_SPLITS)}"
                       + (f"; did you mean {close[0]}?" if close else ""))
    if args.out:   # before the evaluation, not after it: a file, or a path under one
        from mpu.checkpoint.files import check_output

        check_output(args.out, replace=True)
        check_results_free(Path(args.out), args.benchmark, args.overwrite)
    data, note = model_data(args.model, args.benchmark, args.data)
    print(note, file=sys.stderr)
    summary = evaluate(
        args.model, args.benchmark, data=data, forget_split=args.forget_split,
        retain_model=args.retain_model, retain_logs=args.retain_logs, out_dir=args.out,
        batch_size=args.batch_size, config=args.config, device=args.device, dtype=args.dtype,
        progress=not args.no_progress, mmlu=None if args.mmlu == "none" else args.mmlu,
        prompt_format=_prompt_format(args), max_length=args.max_length, truncate=args.truncate,
    )
    print(json.dumps(summary, indent=2))
    return 0


def check_results_free(out: Path, benchmark: str, overwrite: bool) -> None:
    """Refuse ``out`` when it already holds ``benchmark``'s results (an earlier evaluation, lost if
    replaced silently), unless ``overwrite``. Raises InputError naming the folder."""
    from mpu.errors import InputError
    from mpu.eval.evaluator import output_names

    earlier = [file for file in output_names(benchmark) if (out / file).exists()]
    if earlier and not overwrite:
        raise InputError(out, f"already holds an evaluation ({', '.join(earlier)}); pass --overwrite to replace it, "
                              "or choose another --out")


def _prompt_format(args: argparse.Namespace):
    from mpu.data.templates import resolve_format

    if args.prompt_format == "auto" and args.system_prompt is None and args.date_string is None:
        return None   # resolved per model (the retain model by its own name)
    name = args.model if args.prompt_format == "auto" else None
    return resolve_format(args.prompt_format, args.system_prompt, args.date_string, model_name=name)
