"""``mpu data build``: generate the built-in benchmark (deterministic for a seed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    build.add_argument("--out", required=True,
                       help="output directory; one that holds this very benchmark is kept as it is, one built with other "
                            "settings is refused without --overwrite (models trained on it would lose their data and "
                            "tokenizer), a folder of other files always")
    build.add_argument("--overwrite", action="store_true", help="replace a benchmark --out holds that was built with other settings")
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
    from dataclasses import asdict

    from mpu.checkpoint.files import check_output
    from mpu.data.builtin import BuildConfig, build_benchmark, is_current, read_manifest
    from mpu.errors import InputError

    check_output(args.out, replace=True)   # a file, or a path under one: refused before the build, not after
    config = BuildConfig(seed=args.seed, authors=args.authors, facts=args.facts, news=args.news, topics=args.topics,
                         vocab_size=args.vocab_size, shape=args.shape, general=args.general)
    out = Path(args.out)
    earlier = read_manifest(out) if out.is_dir() else None
    if out.is_dir() and earlier is None and any(out.iterdir()):
        raise InputError(out, "holds files but no built-in benchmark (no manifest.json); refusing to replace it: choose "
                              "another --out")
    if earlier is not None and is_current(out, config):
        manifest = earlier
        print(f"{out} already holds this benchmark (same settings and generator version); kept as it is", file=sys.stderr)
    else:
        if earlier is not None and not args.overwrite:
            built = earlier.get("config") or {}
            differ = ", ".join(f"{key} {built.get(key)} -> {value}" for key, value in asdict(config).items()
                               if built.get(key) != value) or f"generator version {earlier.get('version')}"
            raise InputError(out, f"holds a benchmark built with other settings ({differ}); models trained on it need it "
                                  "as it is: pass --overwrite to replace it, or choose another --out")
        manifest = build_benchmark(out, config)
    print(json.dumps({"out": args.out, "version": manifest["version"], "config": manifest["config"],
                      "files": len(manifest["files"])}, indent=2))
    return 0
