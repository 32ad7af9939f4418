"""How far a genuine unlearning update is from the server's per-block poisoning bound, per method.

    python benchmarks/poisoning.py                         # all eleven methods, default and demo learning rates
    python benchmarks/poisoning.py --methods NPO GradAscent --lr default 1e-3 3e-3
    python benchmarks/poisoning.py --authors 40 --epochs 5

``mpu server aggregate`` refuses an update when, in any block l (and any tensor outside the blocks:
embeddings, final norm, LM head, each its own group),

    ratio_l = ||Delta_l|| / ||theta_l||  >  max_update_ratio          (Frobenius norms over the block)

(:func:`mpu.server.aggregate.block_ratio`, the same grouping as Post-Process). This script measures
ratio_l of genuine updates: for each method it loads the built-in tiny target (the demo's model,
fine-tuned on the built-in benchmark with ``--authors`` authors; trained on first use and cached), runs
``run_unlearning`` on forget10 with retain90 at the method's default settings (hyperparameters, epochs,
batch size) and the learning rate of each ``--lr`` ("default" is the method's own: 1e-5, UNDIAL 1e-4;
1e-3 is the demo's), and prints the largest ratio over the blocks next to the bound, with the margin
bound / ratio. Poisoning updates follow: ``-0.95 x theta`` (erases 95 % of every block, the attack the
old whole-model bound of 1.0 x ||theta|| accepted) and the same total norm concentrated in one tensor.

A genuine update here is theta' - theta of the noise-free model; in MPU the client trains a noisy,
reparameterised copy and the server measures Delta_k after T_k^-1 (rotations and permutations keep
block norms; the noise, kappa = 0.01 of the task vector, changes ||theta_l|| by well under 1 %).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def block_ratios(adapter, theta: dict, delta: dict) -> dict[str, float]:
    """ratio_l per group, grouped (``Adapter.block_groups``) and computed exactly as Post-Process does."""
    from mpu.server.aggregate import block_label, block_ratio
    from mpu.server.noise import sum_sq

    ratios = {}
    for layer, names in adapter.block_groups(theta):
        theta_sq = sum(sum_sq(theta[name]) for name in names)
        delta_sq = sum(sum_sq(delta[name]) for name in names)
        ratios[block_label(layer, names)] = block_ratio(delta_sq, theta_sq)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=None, help="methods to run (default: all eleven)")
    parser.add_argument("--lr", nargs="+", default=["default", "1e-3"], help="learning rates: 'default' (the method's) or numbers")
    parser.add_argument("--authors", type=int, default=40, help="built-in benchmark size (the demo's 40)")
    parser.add_argument("--epochs", type=float, default=None, help="client epochs (default: the method's default, 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mpu.checkpoint import CheckpointReader
    from mpu.data.builtin import BuildConfig, cache_root, ensure_builtin
    from mpu.data.qa import load_qa_rows
    from mpu.experiments.finetune import finetune
    from mpu.methods import METHODS, run_unlearning, training_options
    from mpu.reparam import get_adapter
    from mpu.server.config import ServerConfig

    torch.set_num_threads(1)
    bound = ServerConfig().max_update_ratio
    data = ensure_builtin(BuildConfig(seed=args.seed, authors=args.authors, shape="small"))  # the demo's data
    target = cache_root() / "models" / data.name / "target"
    finetune(data, "tofu", "full", target, seed=args.seed, progress=False)
    forget = load_qa_rows(data / "tofu" / "forget10.json")
    retain = load_qa_rows(data / "tofu" / "retain90.json")
    tokenizer = AutoTokenizer.from_pretrained(target)
    adapter = get_adapter(AutoConfig.from_pretrained(target), ServerConfig().reparam)
    stored = CheckpointReader(target)  # the tensors a checkpoint holds (a tied LM head is not stored twice)
    theta = {name: stored.get(name).to(torch.float32) for name in stored.names()}

    print(f"model: built-in tiny target ({sum(t.numel() for t in theta.values()) / 1e6:.2f}M parameters, {target})")
    print(f"data: forget10 ({len(forget)} QA), retain90 ({len(retain)} QA); bound max_update_ratio = {bound}")
    print(f"{'update':<34}{'lr':>8}{'steps':>7}{'max ratio':>12}{'in group':>34}{'bound':>8}{'bound/ratio':>13}{'verdict':>9}")
    methods = args.methods or METHODS.names()
    worst: dict[str, float] = {}
    for method in methods:
        defaults = dict(METHODS.get(method).training_defaults)
        for lr in args.lr:
            settings = dict(defaults, seed=args.seed)
            if lr != "default":
                settings["learning_rate"] = float(lr)
            if args.epochs is not None:
                settings["epochs"] = args.epochs
            training = training_options(settings)
            model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:
                result = run_unlearning(model, tokenizer, forget, retain, method, {}, training, scratch)
            delta = {name: tensor.detach() - theta[name] for name, tensor in model.state_dict().items() if name in theta}
            ratios = block_ratios(adapter, theta, delta)
            group, ratio = max(ratios.items(), key=lambda item: item[1])
            worst[lr] = max(worst.get(lr, 0.0), ratio)
            _row(f"{method} (genuine)", f"{training.learning_rate:g}", result.steps, ratio, group, bound)
            print(f"{'':<34}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    poison = {name: -0.95 * tensor for name, tensor in theta.items()}
    group, ratio = max(block_ratios(adapter, theta, poison).items(), key=lambda item: item[1])
    _row("poison: -0.95 x theta", "-", 0, ratio, group, bound)
    total = math.sqrt(sum(float(t.pow(2).sum()) for t in poison.values()))
    one = "model.layers.0.self_attn.q_proj.weight"
    concentrated = {name: torch.zeros_like(tensor) for name, tensor in theta.items()}
    concentrated[one] = theta[one] / theta[one].norm() * total
    group, ratio = max(block_ratios(adapter, theta, concentrated).items(), key=lambda item: item[1])
    _row("poison: that norm in one tensor", "-", 0, ratio, group, bound)
    for lr, ratio in worst.items():
        print(f"learning rate {lr}: largest genuine ratio {ratio:.3g}, margin bound / genuine = {bound / ratio:.1f}x")
    print(f"poison (-0.95 x theta) / bound = {0.95 / bound:.2f}x")


def _row(what: str, lr: str, steps: int, ratio: float, group: str, bound: float) -> None:
    verdict = "refused" if ratio > bound else "passes"
    margin = bound / ratio if ratio > 0 else math.inf
    print(f"{what:<34}{lr:>8}{steps:>7}{ratio:>12.3g}{group:>34}{bound:>8g}{margin:>13.3g}{verdict:>9}", flush=True)


if __name__ == "__main__":
    main()
