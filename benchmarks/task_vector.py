"""How large is the built-in target's task vector, and does the target keep the base's knowledge?

    python benchmarks/task_vector.py --authors 40 --lr 1e-3 5e-4 --rehearsal none knowledge --freeze-embeddings no yes

Builds the built-in benchmark (``--shape``, default small), trains (or reuses) its base model, fine-tunes it on
``full`` for every combination of ``--lr`` × ``--rehearsal`` × ``--freeze-embeddings`` (epochs: FROM_BASE's
unless ``--epochs``), and prints one JSON line per model: answer-token accuracy and exact match on the
split, RMS(theta - theta_base) / RMS(theta) per block, model utility, forget ROUGE (forget10) and the
ra/wf ROUGE that model utility needs. ``--eval-base`` evaluates the base too. Everything is cached
under ``--out`` (``$MPU_CACHE`` defaults to ``OUT/cache``). One torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

KEYS = ("model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "ra_Q_A_ROUGE", "wf_Q_A_ROUGE")


def scores(eval_dir: Path) -> dict:
    values = json.loads((eval_dir / "TOFU_EVAL.json").read_text())
    return {key: round(values[key]["agg_value"] if isinstance(values[key], dict) else values[key], 4)
            for key in KEYS if key in values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/task_vector")
    parser.add_argument("--authors", type=int, default=40)
    parser.add_argument("--shape", choices=("small", "release"), default="small",
                        help="built-in data shape: small (the demo's) or release (the real release's; use --preset cpu-release)")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: FROM_BASE's)")
    parser.add_argument("--rehearsal", nargs="+", default=["knowledge"],
                        help="what of the base's data the fine-tuning replays (mpu.experiments.finetune.REHEARSAL)")
    parser.add_argument("--freeze-embeddings", nargs="+", choices=("no", "yes"), default=["no"])
    parser.add_argument("--general", type=int, default=None,
                        help="invented topics in the base model's general corpus (default: BuildConfig's)")
    parser.add_argument("--base-epochs", type=float, default=None, help="base model epochs (default: BASE_DEFAULTS')")
    parser.add_argument("--eval-base", action="store_true", help="evaluate the base model too")
    parser.add_argument("--preset", default="tiny", help="model size (mpu.experiments.finetune.PRESETS): tiny or cpu-release; only the size: the recipe is --lr/--epochs (default FROM_BASE)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    os.environ.setdefault("MPU_CACHE", str(out / "cache"))

    import torch

    torch.set_num_threads(1)
    from mpu.data.builtin import build_benchmark
    from mpu.eval import evaluate
    from mpu.experiments.finetune import PRESETS, ensure_base, finetune, read_record

    data = out / (f"builtin-a{args.authors}" + ("" if args.shape == "small" else f"-{args.shape}")
                  + ("" if args.general is None else f"-g{args.general}"))
    if not (data / "manifest.json").is_file():
        build_benchmark(data, authors=args.authors, shape=args.shape,
                        **({} if args.general is None else {"general": args.general}))
    started = time.perf_counter()
    base = ensure_base(data, "tofu", model_config=PRESETS[args.preset].size, progress=False, epochs=args.base_epochs)
    line = {"model": "base", "seconds": round(time.perf_counter() - started),
            **{k: v for k, v in read_record(base)["metrics"].items() if k in ("answer_token_accuracy", "exact_match")}}
    if args.eval_base:
        evaluate(str(base), "tofu", str(data), forget_split="forget10", progress=False, out_dir=out / "eval-base")
        line.update(scores(out / "eval-base"))
    print(json.dumps(line), flush=True)
    for lr, rehearsal, freeze in itertools.product(args.lr, args.rehearsal, args.freeze_embeddings):
        tag = f"{args.preset}-lr{lr:g}-e{args.epochs or 'default'}-{rehearsal}{'-frozen' if freeze == 'yes' else ''}"
        started = time.perf_counter()
        metrics = finetune(data, "tofu", "full", out / f"target-{tag}", base=base, lr=lr, epochs=args.epochs,
                           rehearsal=rehearsal, freeze_embeddings=freeze == "yes", progress=False)
        evaluate(str(out / f"target-{tag}"), "tofu", str(data), forget_split="forget10", progress=False,
                 out_dir=out / f"eval-{tag}")
        print(json.dumps({"model": f"target {tag}", "seconds": round(time.perf_counter() - started),
                          "answer_token_accuracy": round(metrics["answer_token_accuracy"], 4),
                          "exact_match": round(metrics["exact_match"], 4),
                          "rehearsal_token_accuracy": metrics.get("rehearsal_token_accuracy"),
                          "task_vector_ratio": metrics["task_vector_ratio"], **scores(out / f"eval-{tag}")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
