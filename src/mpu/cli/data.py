"""``mpu data build``: generate the built-in benchmark (deterministic for a seed)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="build the built-in benchmark")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    build = commands.add_parser(
        "build",
        help="generate TOFU-, MUSE- and WMDP-format data about fictitious entities, and a tokenizer",
        description="Generate the built-in benchmark into --out. The same seed and sizes give "
        "byte-identical files.",
    )
    from mpu.data.builtin import BuildConfig

    defaults = BuildConfig()
    build.add_argument("--out", required=True, help="output directory (replaced if it holds a built benchmark)")
    build.add_argument("--seed", type=int, default=defaults.seed, help="generator seed (default %(default)s)")
    build.add_argument("--authors", type=int, default=defaults.authors,
                       help="TOFU fictitious authors, 20 QA each in the release shape, 10 in the small one (default %(default)s)")
    build.add_argument("--shape", choices=["release", "small"], default=defaults.shape,
                       help="TOFU answers: release (shaped like locuslab/TOFU: 20 QA per author, answers of median ~25 "
                            "words, thousands of distinct words) or small (10 short QA per author; the demo and tests) "
                            "(default %(default)s)")
    build.add_argument("--general", type=int, default=defaults.general,
                       help="invented non-benchmark topics of the base model's general corpus (default %(default)s)")
    build.add_argument("--facts", type=int, default=defaults.facts,
                       help="at most this many real_authors-like and world_facts-like QA (default %(default)s)")
    build.add_argument("--news", type=int, default=defaults.news, help="MUSE news stories (default %(default)s)")
    build.add_argument("--topics", type=int, default=defaults.topics,
                       help="WMDP hazardous and benign topics (default %(default)s)")
    build.add_argument("--vocab-size", type=int, default=defaults.vocab_size,
                       help="tokenizer vocabulary (default %(default)s)")
    build.set_defaults(func=_build)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from mpu.checkpoint.files import check_output
    from mpu.data.builtin import build_benchmark

    check_output(args.out, replace=True)   # a file, or a path under one: refused before the build, not after
    manifest = build_benchmark(args.out, seed=args.seed, authors=args.authors, facts=args.facts, news=args.news,
                               topics=args.topics, vocab_size=args.vocab_size, shape=args.shape, general=args.general)
    print(json.dumps({"out": args.out, "version": manifest["version"], "config": manifest["config"],
                      "files": len(manifest["files"])}, indent=2))
    return 0
