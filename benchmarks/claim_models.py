"""Train the built-in models a claim sweep runs on, before the sweep, as fast as two cores allow.

    MPU_CACHE=... python benchmarks/claim_models.py --shape release --authors 200 --retain retain90 \
        --expect benchmarks/run-records/claim-release/models.json

The sweep's runs train a missing model themselves, one at a time on one thread. This trains the
base first (on ``--threads``, 2 by default), then the target and each retain model side by side, one
process and one thread each, into the same ``$MPU_CACHE`` folders the runs read. Training is
repeatable bit for bit for the same code, data, torch build and threads, so a sweep carried to a new
machine (claim_sweep.py --archive) can check that it continues on the same models: ``--expect FILE``
compares each model's weights sha256 with FILE's (written by ``--write FILE``) and exits 1 on a
difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def overrides(shape: str, authors: int | None, retain: str) -> list[str]:
    """The Hydra overrides of the sweep's runs that decide the built-in data and models."""
    chosen = [f"data.retain_split={retain}", "trainer=GradAscent", "threads=1"]
    if shape == "release":
        chosen += ["benchmark.shape=release", "model=tiny-llama-cpu-release"]
    if authors is not None:
        chosen.append(f"benchmark.authors={authors}")
    return chosen


def settings(chosen: list[str]):
    from mpu.experiments.config import compose_config, settings_from_config

    return settings_from_config(compose_config(chosen)[0])


def describe(folder: Path) -> dict:
    """A trained model's fingerprint (its settings), weights sha256 and answer-token accuracy."""
    record = json.loads((folder / "mpu_finetune.json").read_text(encoding="utf-8"))
    return {"fingerprint": record["fingerprint"],
            "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
            "answer_token_accuracy": record["metrics"]["answer_token_accuracy"],
            "train_seconds": record["metrics"]["train_seconds"]}


def train_one(chosen: list[str], split: str) -> Path:
    """One fine-tuned model (``full``: the target; ``retainNN``) from the cached base, in this process."""
    import torch

    from mpu.experiments.sources import builtin_base, builtin_model, builtin_root

    torch.set_num_threads(1)
    config = settings(chosen)
    root = builtin_root(config)
    base = builtin_base(config, root)
    return builtin_model(config, root, split, "target" if split == "full" else split, base=str(base))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("small", "release"), default="small")
    parser.add_argument("--authors", type=int, default=None, help="built-in benchmark size (default: the experiment's)")
    parser.add_argument("--retain", default="retain90", help="comma-separated retain splits to train (retain90, retain99)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the base stage")
    parser.add_argument("--expect", default=None, metavar="FILE", help="models.json to compare the weights with")
    parser.add_argument("--write", default=None, metavar="FILE", help="write the models' fingerprints and sha256 here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)   # a child: train this split only
    args = parser.parse_args(argv)
    retains = [split.strip() for split in args.retain.split(",") if split.strip()]
    chosen = overrides(args.shape, args.authors, retains[0])
    if args.one:
        print(train_one(overrides(args.shape, args.authors, args.one if args.one != "full" else retains[0]), args.one))
        return 0

    import torch

    from mpu.experiments.sources import builtin_base, builtin_root

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    config = settings(chosen)
    root = builtin_root(config)
    models = {"base": builtin_base(config, root)}
    print(f"base {models['base']} ({time.perf_counter() - started:.0f} s)", flush=True)
    splits = ["full", *retains]
    children = {split: subprocess.Popen([sys.executable, __file__, "--shape", args.shape, "--retain", ",".join(retains),
                                         "--one", split] + (["--authors", str(args.authors)] if args.authors else []),
                                        stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)})
                for split in splits}
    for split, child in children.items():
        output, _ = child.communicate()
        if child.returncode != 0:
            print(f"claim_models: training {split} failed", file=sys.stderr)
            return 1
        models["target" if split == "full" else split] = Path(output.strip().splitlines()[-1])
    print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
    described = {name: {"folder": str(folder), **describe(folder)} for name, folder in models.items()}
    for name, facts in described.items():
        print(f"{name}: sha256 {facts['sha256'][:16]}, answer-token accuracy {facts['answer_token_accuracy']:.4f}")
    if args.write:
        Path(args.write).write_text(json.dumps({"models": described}, indent=2) + "\n", encoding="utf-8")
    if args.expect:
        expected = json.loads(Path(args.expect).read_text(encoding="utf-8"))["models"]
        differ = [name for name in expected if name in described and expected[name]["sha256"] != described[name]["sha256"]]
        if differ:
            print(f"claim_models: {', '.join(differ)} differ from {args.expect}: runs made now are of other models than "
                  "the records there", file=sys.stderr)
            return 1
        print(f"the models match {args.expect}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
