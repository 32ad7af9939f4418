"""How large is the built-in target's task vector, and what does fine-tuning from the base cost?

    python benchmarks/task_vector.py --authors 40 --lr 1e-3 5e-4

Builds the built-in benchmark (small shape), trains (or reuses) its base model, fine-tunes it on
``full`` at each learning rate (40 epochs), and prints per model: answer-token accuracy, exact match,
RMS(theta - theta_base) / RMS(theta) per block, model utility and forget ROUGE (forget10). Everything is
cached under ``--cache`` (default: a folder next to ``--out``). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/task_vector")
    parser.add_argument("--authors", type=int, default=40)
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: FROM_BASE's)")
    parser.add_argument("--preset", default="tiny", help="model size (mpu.experiments.finetune.PRESETS): tiny or cpu-release")
    args = parser.parse_args(argv)
    out = Path(args.out)
    os.environ.setdefault("MPU_CACHE", str(out / "cache"))

    import torch

    torch.set_num_threads(1)
    from mpu.data.builtin import build_benchmark
    from mpu.eval import evaluate
    from mpu.experiments.finetune import PRESETS, ensure_base, finetune, read_record

    data = out / f"builtin-a{args.authors}"
    if not (data / "manifest.json").is_file():
        build_benchmark(data, authors=args.authors, shape="small")
    started = time.perf_counter()
    base = ensure_base(data, "tofu", model_config=PRESETS[args.preset][0], progress=False)
    print(json.dumps({"model": "base", "seconds": round(time.perf_counter() - started),
                      **{k: v for k, v in read_record(base)["metrics"].items() if k in ("answer_token_accuracy", "exact_match")}}))
    for lr in args.lr:
        target = out / f"target-{args.preset}-lr{lr:g}"
        started = time.perf_counter()
        metrics = finetune(data, "tofu", "full", target, base=base, lr=lr, epochs=args.epochs, progress=False)
        summary = evaluate(str(target), "tofu", str(data), forget_split="forget10", progress=False, out_dir=out / f"eval-{args.preset}-lr{lr:g}")
        print(json.dumps({"model": f"target {args.preset} lr {lr:g}", "seconds": round(time.perf_counter() - started),
                          "answer_token_accuracy": round(metrics["answer_token_accuracy"], 4),
                          "exact_match": round(metrics["exact_match"], 4), "task_vector_ratio": metrics["task_vector_ratio"],
                          "model_utility": summary.get("model_utility"), "forget_Q_A_ROUGE": summary.get("forget_Q_A_ROUGE")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
