"""Wall time of MPU (m copies, R rounds of E epochs) against m x the noise-free baseline (R*E epochs),
in one process on the tiny model, and the overhead beyond m x as a ratio (target <= 1.15).

    python benchmarks/client_overhead.py                                  # NPO, the paper's R=2 x E=5, m=3
    python benchmarks/client_overhead.py --method SimNPO --copies 3       # R=10 x E=1: most rounds
    python benchmarks/client_overhead.py --method GradDiff --rounds 1 --epochs-per-round 10 --repeats 3
    python benchmarks/client_overhead.py --method SimNPO --hidden-size 256 --layers 6 --threads 2   # ~5M params

What is timed, in the same process, alternating baseline and MPU ``--repeats`` times (timing noise on
a shared machine reaches 3x between identical runs, so only ratios inside one run mean anything):

- baseline: load the target, ``run_unlearning`` for R*E epochs, save the checkpoint (what
  ``mpu unlearn`` / ``src/train.py mpu.enabled=false`` does);
- MPU: :func:`mpu.experiments.two_party.run_mpu` itself (``init_server`` -> R x (``publish`` -> ``unlearn_copies`` ->
  ``aggregate``) -> ``export``), with its per-phase timings: Pre-Process, client, Post-Process and I/O.

ratio = MPU wall / (m x baseline wall). The client's training itself is m x R x E epochs, the same
work as m baselines; what is above 1 is MPU's own cost: init/export, publishing and aggregating, and
the client's per-round model loading and update writing (R x m loads instead of m).

The model is the built-in tiny target when it is cached (``mpu demo`` or ``src/train.py`` trained it),
else a randomly initialised model of the same architecture (training speed does not depend on the
weights). Data: the built-in benchmark's forget10/retain90 at ``--authors`` authors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def tiny_model(root: Path, authors: int, scratch: Path, hidden_size: int | None = None, layers: int | None = None) -> tuple[Path, str]:
    """The cached built-in tiny target, or a random model of its architecture (or of a given width and depth)."""
    from mpu.data.builtin import cache_root
    from mpu.experiments.finetune import RECORD

    cached = cache_root() / "models" / root.name / "target"
    sized = hidden_size is not None or layers is not None
    if not sized and (cached / RECORD).is_file() and (cached / "model.safetensors").is_file():
        return cached, "built-in tiny target (cached)"
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mpu.experiments.finetune import TinyLlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    shape = TinyLlamaConfig(initializer_range=0.02).llama_kwargs()  # timing only: the initial scale does not matter
    if sized:
        # keep the tiny model's proportions: 32-wide heads, 2 query heads per KV head, FFN ~2.7x
        width = hidden_size or shape["hidden_size"]
        shape.update(hidden_size=width, num_hidden_layers=layers or shape["num_hidden_layers"],
                     num_attention_heads=width // 32, num_key_value_heads=max(1, width // 64),
                     intermediate_size=(width * 8 // 3 + 7) // 8 * 8)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **shape)
    path = scratch / "random-tiny"
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    what = "built-in target not cached" if not sized else f"hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers"
    return path, f"random Llama, {millions:.1f}M parameters ({what})"


def time_baseline(model_dir: Path, forget, retain, method, hparams, training, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.methods import run_unlearning

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        result = run_unlearning(model, tokenizer, forget, retain, method, hparams, training, scratch)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    total = time.perf_counter() - started
    return {"total": total, "train": result.seconds, "steps": result.steps}


def time_mpu(model_dir: Path, server, forget, retain, method, hparams, training, scratch: Path) -> dict:
    """mpu.experiments.two_party.run_mpu itself (default reference model: round 1's copies), with its per-phase timings."""
    from mpu.experiments.two_party import run_mpu

    parts: dict[str, float] = {}
    started = time.perf_counter()
    run_mpu(str(model_dir), None, server, forget, retain, method, hparams, training, scratch / "server", scratch / "model",
            progress=False, timings=parts)
    parts["total"] = time.perf_counter() - started
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--method", default="NPO")
    parser.add_argument("--copies", "-m", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None, help="R (default: the method's paper schedule)")
    parser.add_argument("--epochs-per-round", type=float, default=None, help="E (default: the method's paper schedule)")
    parser.add_argument("--kappa", type=float, default=0.01)
    parser.add_argument("--authors", type=int, default=100, help="built-in benchmark size (forget10 = authors QA pairs)")
    parser.add_argument("--data", default=None, help="a built built-in benchmark directory (default: build/reuse the cached one)")
    parser.add_argument("--model", default=None, help="the model to unlearn (default: the cached built-in target, else a random tiny Llama)")
    parser.add_argument("--hidden-size", type=int, default=None, help="time a random Llama of this width instead (multiple of 64)")
    parser.add_argument("--layers", type=int, default=None, help="... and this many layers (default: the tiny model's 4)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="baseline/MPU pairs, alternated; medians are reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.hidden_size is not None and (args.hidden_size < 64 or args.hidden_size % 64):
        parser.error(f"--hidden-size must be a positive multiple of 64 (32-wide heads in KV pairs), got {args.hidden_size}")

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mpu").setLevel(logging.ERROR)  # fixed-seed warnings, once per publish
    if args.threads:
        torch.set_num_threads(args.threads)

    from mpu.data.builtin import BuildConfig, ensure_builtin
    from mpu.data.loaders import resolve_source
    from mpu.methods import METHODS, method_hparams, training_options
    from mpu.server.config import ServerConfig

    cls = METHODS.get(args.method)
    rounds, epochs = cls.paper_schedule
    rounds = args.rounds or rounds
    epochs = args.epochs_per_round or epochs
    root = Path(args.data) if args.data else ensure_builtin(BuildConfig(seed=0, authors=args.authors))
    source = resolve_source(root, "tofu")
    forget, retain = source.rows("forget10", "train"), source.rows("retain90", "train")
    hparams = method_hparams(args.method)
    base_training = {**cls.training_defaults, "learning_rate": args.learning_rate, "batch_size": args.batch_size, "seed": 0}
    baseline_training = training_options({**base_training, "epochs": rounds * epochs})
    round_training = training_options({**base_training, "epochs": epochs})
    server = ServerConfig(copies=args.copies, kappa=args.kappa, rounds=rounds, alpha_mode="public", fixed_seed=0)

    with tempfile.TemporaryDirectory(prefix="mpu-overhead-") as scratch_name:
        scratch = Path(scratch_name)
        model_dir, model_what = (Path(args.model), "given") if args.model else tiny_model(root, args.authors, scratch, args.hidden_size, args.layers)
        print(f"model: {model_what} ({model_dir})")
        print(f"method {args.method}: m={args.copies}, R={rounds} x E={epochs:g} epochs; baseline {rounds * epochs:g} epochs; "
              f"{len(forget)} forget / {len(retain)} retain QA; torch threads {torch.get_num_threads()}")
        # Warm-up: imports, tokenizer and Trainer first-use costs, so neither side pays them alone.
        time_baseline(model_dir, forget[:8], retain[:8], args.method, hparams,
                      training_options({**base_training, "epochs": 1}), scratch / "warmup")
        baselines, mpus = [], []
        for repeat in range(args.repeats):
            baselines.append(time_baseline(model_dir, forget, retain, args.method, hparams, baseline_training, scratch / f"base-{repeat}"))
            run_scratch = scratch / f"mpu-{repeat}"
            run_scratch.mkdir()
            mpus.append(time_mpu(model_dir, server, forget, retain, args.method, hparams, round_training, run_scratch))
            print(f"  repeat {repeat + 1}: baseline {baselines[-1]['total']:.1f}s, MPU {mpus[-1]['total']:.1f}s "
                  f"(ratio {mpus[-1]['total'] / (args.copies * baselines[-1]['total']):.3f})")

    median = lambda rows, key: statistics.median(row[key] for row in rows)
    base_total, base_train = median(baselines, "total"), median(baselines, "train")
    parts = {key: median(mpus, key) for key in mpus[0]}
    ratio = parts["total"] / (args.copies * base_total)
    per_repeat = [m["total"] / (args.copies * b["total"]) for b, m in zip(baselines, mpus)]
    client_ratio = parts["client"] / (args.copies * base_total)
    train_ratio = parts["client_train"] / (args.copies * base_train)
    server_side = parts["init"] + parts["publish"] + parts["aggregate"] + parts["export"] + parts["cleanup"]
    print()
    print(f"{'':34}{'seconds':>10}{'share of m x baseline':>24}")
    rows = [
        ("m x baseline (load, train, save)", args.copies * base_total),
        ("MPU total", parts["total"]),
        ("  init (server takes the model)", parts["init"]),
        ("  publish (Pre-Process), R x", parts["publish"]),
        ("  client, R x m copies", parts["client"]),
        ("    of which training", parts["client_train"]),
        ("    of which load/save (I/O)", parts["client"] - parts["client_train"]),
        ("  aggregate (Post-Process), R x", parts["aggregate"]),
        ("  export + cleanup", parts["export"] + parts["cleanup"]),
    ]
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>10.2f}{seconds / (args.copies * base_total):>24.3f}")
    print()
    print(f"optimizer steps: MPU {parts['steps']:.0f}, m x baseline {args.copies * median(baselines, 'steps'):.0f}")
    print(f"client training time / (m x baseline training time): {train_ratio:.3f}")
    print(f"client wall (training + per-round load/save) / (m x baseline wall): {client_ratio:.3f}")
    print(f"server side (init, publish, aggregate, export, exchange cleanup): {server_side:.2f}s = {server_side / (args.copies * base_total):.3f} of m x baseline")
    print(f"overhead ratio MPU / (m x baseline) = {ratio:.3f}  (per repeat: {', '.join(f'{r:.3f}' for r in per_repeat)}; "
          f"target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "method": args.method, "m": args.copies, "R": rounds, "E": epochs, "model": model_what,
            "baseline": baselines, "mpu": mpus, "ratio": ratio, "per_repeat": per_repeat,
            "client_ratio": client_ratio, "train_ratio": train_ratio, "server_seconds": server_side,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
