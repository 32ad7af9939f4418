"""``mpu eval``: evaluate a checkpoint on TOFU, MUSE or WMDP (OpenUnlearning metrics and JSON files)."""

from __future__ import annotations

import argparse
import json
import sys

from mpu.threads import add_threads_argument, apply_threads


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on TOFU, MUSE or WMDP",
        description="Writes <BENCH>_EVAL.json (per-metric agg_value and value_by_index) and "
        "<BENCH>_SUMMARY.json (headline values) under OpenUnlearning's key names.",
    )
    parser.add_argument("--model", required=True, help="HF checkpoint directory")
    parser.add_argument("--benchmark", choices=("tofu", "muse", "wmdp"), default="tofu")
    parser.add_argument("--data", default=None,
                        help="local directory in the hub layout, or a hub dataset name (e.g. locuslab/TOFU); "
                        "default: the data the model was trained on (recorded in its mpu_finetune.json, or the cached "
                        "built-in dataset whose tokenizer it uses), else the built-in benchmark ($MPU_CACHE); "
                        "the data used is printed")
    parser.add_argument("--forget-split", default=None,
                        help="TOFU forget split: forget01, forget05 or forget10 (default: forget10, or --config's)")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--retain-model", default=None,
                           help="checkpoint never trained on the forget set (forget_quality, privleak, mia_reference)")
    reference.add_argument("--retain-logs", default=None, help="the retain model's <BENCH>_EVAL.json")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--config", default=None, help="suite YAML (e.g. configs/eval/tofu.yaml) to override")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="model weights (probabilities are always computed in float32)")
    parser.add_argument("--mmlu", default="default",
                        help="WMDP utility data (hub name or directory; 'none' to skip)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from mpu.eval import evaluate
    from mpu.eval.evaluator import model_data

    apply_threads(args.threads)
    data, note = model_data(args.model, args.benchmark, args.data)
    print(note, file=sys.stderr)
    summary = evaluate(
        args.model, args.benchmark, data=data, forget_split=args.forget_split,
        retain_model=args.retain_model, retain_logs=args.retain_logs, out_dir=args.out,
        batch_size=args.batch_size, config=args.config, device=args.device, dtype=args.dtype,
        progress=not args.no_progress, mmlu=None if args.mmlu == "none" else args.mmlu,
    )
    print(json.dumps(summary, indent=2))
    return 0
