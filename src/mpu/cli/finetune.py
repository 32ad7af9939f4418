"""``mpu finetune``: train a tiny Llama from scratch on the built-in benchmark (cached by fingerprint)."""

from __future__ import annotations

import argparse
import json

from mpu.threads import add_threads_argument, apply_threads


def register(subparsers) -> None:
    from mpu.experiments.finetune import SPLITS

    parser = subparsers.add_parser(
        "finetune",
        help="train a tiny Llama (about 1M parameters) on the built-in benchmark: base, target or retain model",
        description="Train the base model (--split base: from scratch on general data without the benchmark's "
        "fictitious entities), the target (--split full) or a retain model (--split retainNN); the last two are "
        "the base fine-tuned on the split (--base auto: the dataset's cached base, trained on first use), as "
        "TOFU's targets are a pretrained model fine-tuned on it, so that theta - theta_base is a task vector. "
        "Saved with save_pretrained. A directory that already holds a model with the same data, configuration "
        "and base fingerprint is reused.",
    )
    parser.add_argument("--data", default=None,
                        help="benchmark directory from `mpu data build` (default: the cached built-in one)")
    parser.add_argument("--benchmark", choices=("tofu", "muse", "wmdp"), default="tofu")
    parser.add_argument("--split", choices=SPLITS + ("retain",), default="full",
                        help="base: the general data (generic corpus + real_authors/world_facts, the 'pretraining "
                             "knowledge' model utility's ra/wf parts test); full: everything; retainNN: without "
                             "the forget split (default %(default)s)")
    parser.add_argument("--base", default="auto",
                        help="for full/retainNN: auto (the dataset's base model, trained and cached under "
                             "$MPU_CACHE/models on first use; from scratch, with a warning, when the data has no "
                             "general data to build one, e.g. a MUSE copy), a directory from `mpu finetune --split base`, or "
                             "none (from scratch, no task vector: the server's noise then scales with the whole "
                             "weights) (default %(default)s)")
    parser.add_argument("--out", required=True, help="model directory")
    parser.add_argument("--preset", choices=("tiny", "cpu-release"), default=None,
                        help="model size and recipes: tiny (default; ~1M parameters; 40 epochs at lr 3e-3 from scratch, "
                             "40 at lr 3e-4 from a base; for the small built-in data) or cpu-release (3.3M parameters, "
                             "for data shaped like the real TOFU release, `mpu data build --shape release` or a local "
                             "locuslab/TOFU copy: from a base 20 epochs at lr 1e-3, from scratch 30 at lr 2e-3; on the "
                             "200-author release-shaped data the base (2 min on 2 threads) plus the target (23 min on one "
                             "thread of a busy machine) reach 97%% of the answer tokens, docs/results.md). The base stage "
                             "keeps its own recipe. "
                             "--epochs/--lr/--batch-size override it")
    parser.add_argument("--epochs", type=float, default=None, help="default: calibrated per benchmark")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: calibrated per benchmark)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rehearsal", choices=("none", "knowledge", "qa", "base"), default=None,
                        help="fine-tuning from a base: what of the base's own training data is replayed alongside the "
                             "split, for target and retain model alike (knowledge: its real_authors/world_facts QA, so "
                             "that the tiny target keeps what model utility's ra/wf parts test; qa: plus the general "
                             "QA; base: everything the base trained on; none). Default: knowledge for TOFU, none for "
                             "MUSE/WMDP")
    parser.add_argument("--freeze-embeddings", action="store_true", default=None,
                        help="fine-tuning from a base: keep the (tied) embeddings at the base's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_threads_argument(parser)
    parser.add_argument("--force", action="store_true",
                        help="train and replace --out even if it holds a model: one with these settings (reused "
                             "without --force) or one trained with other settings (refused without --force)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from mpu.checkpoint.files import check_output
    from mpu.experiments.finetune import finetune

    check_output(args.out, replace=True)   # a file, or a path under one: refused before the training, not after
    threads = apply_threads(args.threads)
    metrics = finetune(args.data, args.benchmark, args.split, args.out, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, seed=args.seed, force=args.force,
                       progress=not args.no_progress, device=args.device, threads=threads,
                       base=None if args.split == "base" and args.base == "auto" else args.base, preset=args.preset,
                       rehearsal=args.rehearsal, freeze_embeddings=args.freeze_embeddings, replace=False)
    print(json.dumps(metrics, indent=2))
    return 0
