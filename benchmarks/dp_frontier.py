"""The data owner's privacy frontier: client-side DP-SGD (ε) against the server's membership tests.

For each method and ε in --epsilons (``inf`` = no DP), one MPU run (m copies, one round) of the
built-in TOFU-format target, then, as the server can:

- ``loss_increase``: score = NLL(θ + Δ, x) − NLL(θ, x) (docs/privacy.md's test);
- ``gradient_alignment``: score = ⟨−Δ, ∇NLL(θ, x)⟩ / ‖∇NLL(θ, x)‖, how far the update moved along the
  item's own gradient-ascent direction (stronger for small updates);

each on the aggregate Σ w_k Δ_k and on every single copy's update (mapped back with T_k⁻¹); the
table reports the server's best AUC over both tests and all updates, for forget items against items
that were not forgotten (holdout rows never trained on, and retain rows the client did not use).
Next to it: forget quality and model utility of the exported model (mpu.eval, with the retain model)
and the client's training seconds relative to ε = ∞ in the same run.

    python benchmarks/dp_frontier.py --out runs/dp_frontier            # GradAscent, NPO; ε ∞, 8, 4, 1
    python benchmarks/dp_frontier.py --methods NPO --epsilons inf,1 --authors 20

Writes OUT/results.json and OUT/table.md. Uses one torch thread (set --threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/dp_frontier"))
    parser.add_argument("--methods", default="GradAscent,NPO", help="comma-separated methods (PDU cannot run with DP)")
    parser.add_argument("--epsilons", default="inf,8,4,1", help="comma-separated ε values; inf = no DP")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip-norm", type=float, default=1.0, help="DP-SGD per-example clipping norm")
    parser.add_argument("--authors", type=int, default=40, help="built-in benchmark size (the demo's)")
    parser.add_argument("--forget-split", default="forget10")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--kappa", type=float, default=0.01)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=5e-4,
                        help="target/retain fine-tuning lr from the base (5e-4 keeps model utility > 0 on the tiny "
                             "target; the demo's 1e-3 memorises harder and scores utility 0)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def gradient_directions(model, tokenizer, rows) -> list[dict]:
    """Per item: the unit direction of ∇NLL(θ, x) (answer tokens, mean), as {name: tensor}."""
    import torch

    from mpu.data.qa import QACollator, encode_qa

    collate = QACollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    directions = []
    model.eval()
    for row in rows:
        batch = collate([encode_qa(tokenizer, row["question"], row["answer"], 512)])
        loss = model(**batch, use_cache=False).loss
        grads = torch.autograd.grad(loss, list(params.values()))
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        directions.append({name: g / norm for name, g in zip(params, grads)})
    return directions


def alignment(update: dict, directions: list[dict]):
    import numpy as np

    return np.array([-sum(float((update[name].float() * d[name]).sum()) for name in d if name in update) for d in directions])


def membership(workdir: Path, returns: Path, theta_dir: Path, rows: dict) -> dict:
    """The server's best AUCs (forget vs holdout, forget vs unused retain) over tests and updates."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.audit.membership import apply_update, auc, item_losses, server_updates

    theta = AutoModelForCausalLM.from_pretrained(theta_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(theta_dir)
    weights, updates = server_updates(workdir, returns, 1)
    candidates = {"aggregate": {name: sum(w * u[name] for w, u in zip(weights, updates)) for name in updates[0]}}
    candidates.update({f"copy-{k}": update for k, update in enumerate(updates, start=1)})
    before = {key: item_losses(theta, tokenizer, split) for key, split in rows.items()}
    directions = {key: gradient_directions(theta, tokenizer, split) for key, split in rows.items()}
    table = {}
    for label, update in candidates.items():
        after = {key: item_losses(apply_update(theta, update), tokenizer, split) for key, split in rows.items()}
        scores = {"loss_increase": {key: after[key] - before[key] for key in rows},
                  "gradient_alignment": {key: alignment(update, directions[key]) for key in rows}}
        for test, score in scores.items():
            table[f"{label}/{test}"] = {"forget_vs_holdout": auc(score["forget"], score["holdout"]),
                                        "forget_vs_unused_retain": auc(score["forget"], score["unused_retain"])}
    best = max(max(entry.values()) for entry in table.values())
    return {"best_auc": best, "by_update_and_test": table}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from mpu.data.builtin import SIZE_PRESETS, BuildConfig, cache_root, ensure_builtin
    from mpu.data.qa import load_qa_rows
    from mpu.eval import evaluate
    from mpu.experiments.finetune import ensure_base, finetune
    from mpu.methods import METHODS, training_options
    from mpu.experiments.two_party import run_mpu
    from mpu.server.config import ServerConfig

    data = ensure_builtin(BuildConfig(seed=args.seed, **{**SIZE_PRESETS["demo"], "authors": args.authors}))
    percent = int(args.forget_split[-2:])
    retain_split = "retain" + str(100 - percent).zfill(2)
    # the demo's paper regime: a base, target and retain fine-tuned from it, sigma from the task vector
    models = cache_root() / "models" / data.name / f"dp-frontier-lr{args.finetune_lr:g}"
    target, retain = models / "target-from-base", models / f"{retain_split}-from-base"
    base = ensure_base(data, "tofu", seed=args.seed, progress=False)
    for split, path in (("full", target), (retain_split, retain)):
        finetune(data, "tofu", split, path, lr=args.finetune_lr, seed=args.seed, progress=False, base=base)
    forget = load_qa_rows(data / "tofu" / f"{args.forget_split}.json")
    retain_rows = load_qa_rows(data / "tofu" / f"{retain_split}.json")
    holdout = load_qa_rows(data / "tofu" / f"holdout{percent:02d}.json")
    # the client trains on the first half of the retain set; the server tests on the unused half
    used, unused = retain_rows[: len(retain_rows) // 2], retain_rows[len(retain_rows) // 2:]
    mia_rows = {"forget": forget, "holdout": holdout[: len(forget)], "unused_retain": unused[: len(forget)]}

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    # the starting point: the target itself (no unlearning)
    target_summary = evaluate(target, "tofu", data, forget_split=args.forget_split, retain_model=retain, progress=False)
    print(json.dumps({"target": {k: target_summary.get(k) for k in ("model_utility", "forget_Q_A_ROUGE", "forget_quality")}}), flush=True)
    for method in args.methods.split(","):
        for eps_text in args.epsilons.split(","):
            epsilon = math.inf if eps_text.strip() == "inf" else float(eps_text)
            defaults = dict(METHODS.get(method).training_defaults)
            defaults.update(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, seed=args.seed)
            if math.isfinite(epsilon):
                defaults.update(dp_epsilon=epsilon, dp_delta=args.delta, dp_clip_norm=args.clip_norm)
            training = training_options(defaults)
            server = ServerConfig(copies=args.copies, kappa=args.kappa, rounds=1, fixed_seed=args.seed)
            timings: dict = {}
            with tempfile.TemporaryDirectory() as scratch:
                scratch = Path(scratch)
                started = time.perf_counter()
                model_dir = run_mpu(str(target), str(base), server, forget, used, method, {}, training, scratch / "server",
                                    scratch / "model", keep_exchange=True, progress=False, timings=timings)
                seconds = time.perf_counter() - started
                manifest = json.loads((scratch / "server-exchange" / "round-1" / "returns" / "update-1" / "update.json").read_text())
                mia = membership(scratch / "server", scratch / "server-exchange" / "round-1" / "returns", target, mia_rows)
                summary = evaluate(model_dir, "tofu", data, forget_split=args.forget_split, retain_model=retain, progress=False)
            row = {"method": method, "epsilon": eps_text.strip(), "dp": manifest.get("dp"), "best_auc": mia["best_auc"],
                   "membership": mia["by_update_and_test"], "forget_quality": summary.get("forget_quality"),
                   "model_utility": summary.get("model_utility"), "forget_Q_A_ROUGE": summary.get("forget_Q_A_ROUGE"),
                   "forget_Q_A_Prob": summary.get("forget_Q_A_Prob"), "summary": summary,
                   "client_train_seconds": round(timings["client_train"], 2), "run_seconds": round(seconds, 1)}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("membership", "summary")}), flush=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "target": target_summary, "results": results}, indent=2))
    table = format_table(results, target_summary)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    return 0


def format_table(results: list[dict], target: dict) -> str:
    """Markdown: per method and ε, the server's best membership AUC next to what the unlearning did."""
    def fmt(value, spec=".3g"):
        return "—" if value is None else format(value, spec)

    lines = [f"Target before unlearning: model utility {fmt(target.get('model_utility'))}, forget ROUGE "
             f"{fmt(target.get('forget_Q_A_ROUGE'))}.", "",
             "| method | ε (all m copies) | σ | best membership AUC | forget ROUGE | forget quality | model utility | client time × |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results:
        base = next((r for r in results if r["method"] == row["method"] and r["epsilon"] == "inf"), None)
        ratio = f"{row['client_train_seconds'] / base['client_train_seconds']:.2f}" if base and base["client_train_seconds"] else "—"
        sigma = f"{row['dp']['noise_multiplier']:.3g}" if row["dp"] else "—"
        lines.append(f"| {row['method']} | {row['epsilon']} | {sigma} | {row['best_auc']:.3f} | {fmt(row.get('forget_Q_A_ROUGE'))} | "
                     f"{fmt(row['forget_quality'])} | {fmt(row['model_utility'])} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
