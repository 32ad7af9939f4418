"""Measure every method on the test suite's tiny model (not a test; pytest does not collect it).

    PYTHONPATH=src python -m tests.methods.measure_methods [--epochs 5] [--lr 1e-3] [--batch-size 4]

Prints a Markdown table: forget / retain / holdout mean answer NLL before and after, and seconds per epoch.
Each method runs with its own defaults (OpenUnlearning's) except the learning rate, which is set for all
(a 125k-parameter model does not move at 1e-5), and RMU, whose defaults are for 4096-wide models.
"""

from __future__ import annotations

import argparse
import copy
import logging

import torch

from mpu.methods import METHODS, TrainingConfig, run_unlearning
from tests.methods import helpers

TINY_OVERRIDES = {"RMU": {"steering_coeff": 20.0, "alpha": 1.0}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--methods", nargs="*", default=METHODS.names())
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)

    tokenizer = helpers.build_tokenizer()
    base = helpers.build_model(tokenizer)
    forget, retain = helpers.split_rows()
    holdout = helpers.qa_rows()[24:]
    helpers.finetune(base, tokenizer, forget + retain, steps=45, lr=3e-3)
    nll = lambda model, rows: helpers.mean_answer_nll(model, tokenizer, rows)
    before = (nll(base, forget), nll(base, retain), nll(base, holdout))
    print(f"tiny Llama {sum(p.numel() for p in base.parameters())} parameters; forget {len(forget)} rows, retain {len(retain)}; "
          f"epochs {args.epochs}, lr {args.lr}, batch {args.batch_size}\n")
    print("| method | hyperparameters | forget NLL before → after | retain NLL before → after | holdout NLL before → after | s/epoch |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        model = copy.deepcopy(base)
        training = TrainingConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size)
        hp = TINY_OVERRIDES.get(method, {})
        result = run_unlearning(model, tokenizer, forget, retain, method, hp, training, "/tmp/mpu-measure")
        after = (nll(model, forget), nll(model, retain), nll(model, holdout))
        shown = ", ".join(f"{k}={v}" for k, v in hp.items()) or "defaults"
        cells = " | ".join(f"{b:.3f} → {a:.3f}" for b, a in zip(before, after))
        print(f"| {method} | {shown} | {cells} | {result.seconds / args.epochs:.3f} |")


if __name__ == "__main__":
    main()
