"""How far MPU's combined update lands from the clean-model update, for a real client.

For a GradAscent client on the built-in benchmark's tiny target model, compares the update the
client would have made on the clean model (Delta_clean) with
  - the harmonic combination Sum_k (1/alpha_k) T_k^-1(Delta'_k) / Sum_k (1/alpha_k)  (what MPU applies), and
  - a plain average of T_k^-1(Delta'_k) (what equal weights would give),
for kappa in {0.01, 0.1}, with and without reparameterisation, under AdamW and SGD. Prints
||Delta - Delta_clean|| / ||Delta_clean|| for each. Full-batch training, so data order plays no part.

    python benchmarks/cancellation.py [--authors 20] [--epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def tensors(model_dir) -> dict[str, torch.Tensor]:
    from mpu.checkpoint import CheckpointReader

    reader = CheckpointReader(model_dir)
    return {name: reader.get(name).to(torch.float32) for name in reader.names()}


def distance(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).square().sum()) for n in a)
    den = sum(float(b[n].square().sum()) for n in b)
    return (num / den) ** 0.5


def clean_update(target: Path, forget, training) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.methods import run_unlearning

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as scratch:
        run_unlearning(model, AutoTokenizer.from_pretrained(target), forget, None, "GradAscent", {}, training, scratch)
    after = model.state_dict()
    theta = tensors(target)
    return {n: after[n] - before[n] for n in theta}


def mpu_updates(target: Path, forget, training, kappa: float, reparam: bool, root: Path) -> tuple[dict, dict]:
    """(harmonic, plain-average) combined updates, both mapped back to theta's coordinates."""
    from transformers import AutoConfig

    from mpu.client.unlearn import unlearn_copies
    from mpu.protocol import RoundKeys, update_folder
    from mpu.reparam import ReparamConfig, get_adapter
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server
    from mpu.server.noise import alphas_for_round, harmonic_weights
    from mpu.server.publish import publish
    from mpu.server.workdir import Workdir

    config = ServerConfig(copies=3, kappa=kappa, fixed_seed=7, independent_noise=0.0, reparam=ReparamConfig(enabled=reparam))
    init_server(root / "server", str(target), None, config, progress=False)
    publish(root / "server", root / "outbox", progress=False)
    unlearn_copies(root / "outbox", forget, None, "GradAscent", {}, training, root / "returns")
    secret = Workdir(root / "server").round_secret(1, config.fixed_seed, create=False)
    keys = RoundKeys(secret)
    adapter = get_adapter(AutoConfig.from_pretrained(target), config.reparam)
    mapped = []
    for copy_id in range(1, config.copies + 1):
        update = tensors(root / "returns" / update_folder(copy_id))
        for name, value in update.items():
            layer = adapter.layer_of(name)
            if layer is not None:
                transform = adapter.sample(layer, keys.transform(copy_id, layer))
                update[name] = adapter.apply(transform, name, value, inverse=True)
        mapped.append(update)
    average = {n: sum(u[n] for u in mapped) / len(mapped) for n in mapped[0]}
    # The server's aggregate (tests/server check it) computes exactly this; computing it here
    # avoids the float32 rounding of theta + step - theta, which swamps small SGD steps.
    weights = harmonic_weights(alphas_for_round(config, secret))
    harmonic = {n: sum(w * u[n] for w, u in zip(weights, mapped)) for n in mapped[0]}
    return harmonic, average


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", type=int, default=20)
    parser.add_argument("--epochs", type=float, default=5)
    args = parser.parse_args()

    from mpu.data.builtin import BuildConfig, cache_root, ensure_builtin
    from mpu.data.qa import load_qa_rows
    from mpu.experiments.finetune import finetune
    from mpu.methods import training_options

    data = ensure_builtin(BuildConfig(authors=args.authors))
    target = cache_root() / "models" / data.name / "target"
    finetune(data, "tofu", "full", target, progress=False)
    forget = load_qa_rows(data / "tofu" / "forget10.json")
    optimisers = {"adamw": dict(optim="adamw_torch", learning_rate=1e-4), "sgd": dict(optim="sgd", learning_rate=1e-1)}
    print(f"GradAscent, {len(forget)} forget rows, full batch, {args.epochs} epochs; m = 3, secret alphas (fixed seed), tau = 0")
    print(f"{'optimiser':<10}{'kappa':>8}{'reparam':>9}{'harmonic':>12}{'average':>12}   (relative distance to the clean-model update)")
    for optimiser, settings in optimisers.items():
        training = training_options(dict(epochs=args.epochs, batch_size=len(forget), seed=0, **settings))
        clean = clean_update(target, forget, training)
        for kappa in (0.01, 0.1):
            for reparam in (False, True):
                with tempfile.TemporaryDirectory() as scratch:
                    harmonic, average = mpu_updates(target, forget, training, kappa, reparam, Path(scratch))
                print(f"{optimiser:<10}{kappa:>8}{str(reparam):>9}{distance(harmonic, clean):>12.4f}{distance(average, clean):>12.4f}")


if __name__ == "__main__":
    main()
