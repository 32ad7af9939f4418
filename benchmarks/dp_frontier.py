"""The data owner's privacy frontier: client-side DP-SGD (ε) against the server's membership tests.

For each method and ε in --epsilons (``inf`` = no DP), one MPU run (m copies, one round) of the
built-in TOFU-format target, then, as the server can:

- ``loss_increase``: score = NLL(θ + Δ, x) − NLL(θ, x) (docs/privacy.md's test);
- ``gradient_alignment``: score = ⟨−Δ, ∇NLL(θ, x)⟩ / ‖∇NLL(θ, x)‖, how far the update moved along the
  item's own gradient-ascent direction (stronger for small updates);

- ``lira``: the offline likelihood-ratio test (mpu.audit.lira, Carlini et al. 2022): the server runs
  --shadows reference unlearning runs from θ with the method and DP noise the manifest records, each
  forgetting candidate items it chose, and scores each item's loss increase against a Gaussian fitted
  to its loss increases under the references that did not forget it;

each on the aggregate Σ w_k Δ_k and on every single copy's update (mapped back with T_k⁻¹); the
table reports the server's best AUC over the tests and all updates, for forget items against items
that were not forgotten (holdout rows never trained on, and retain rows the client did not use).

``--audit-models DIR`` reuses benchmarks/audit_table.py's models (DIR/models/models.json: a base
that never saw the last 22 authors, θ fine-tuned on all 40) and forgets the last --forget-authors
authors (200 QA at 20): a forget set 5× forget10's, for the per-step noise σC/B to matter less. It
reports forgetting on that set (NLL) and forget10's ROUGE, with no retain model (no forget quality).
Next to it: forget quality and model utility of the exported model (mpu.eval, with the retain model)
and the client's training seconds relative to ε = ∞ in the same run.

    python benchmarks/dp_frontier.py --out runs/dp_frontier            # GradAscent, NPO; ε ∞, 8, 4, 1
    python benchmarks/dp_frontier.py --methods NPO --epsilons inf,1 --authors 20
    python benchmarks/dp_frontier.py --out runs/dp_large --audit-models runs/audit_table --forget-authors 20 \
        --batch-size 32 --epochs 3 --epsilons inf,16,8      # 200 forget items

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
    parser.add_argument("--shadows", type=int, default=4, help="reference runs of the LiRA test (0: leave it out)")
    parser.add_argument("--audit-models", type=Path, default=None,
                        help="benchmarks/audit_table.py's --out folder: use its base, θ and data (see above)")
    parser.add_argument("--forget-authors", type=int, default=20, help="--audit-models: forget the last N of its 40 authors")
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


def shadow_references(theta_dir: Path, rows: dict, method: str, training, shadow_retain: list, runs: int, dp: dict | None,
                      scratch: Path, seed: int = 0):
    """The LiRA references: ``runs`` unlearning runs from θ (the server's own, with ``method`` and the
    returned manifest's DP noise multiplier and clipping norm), each forgetting a balanced choice of the
    candidate items ``rows`` (forget, holdout, unused retain pooled in that order, at most half of them
    per run). Returns (loss increases (runs, n), which run forgot which item (runs, n) bool)."""
    import dataclasses

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.audit.lira import shadow_forget_sets
    from mpu.audit.membership import item_losses
    from mpu.methods import run_unlearning

    pool = [row for split in rows.values() for row in split]
    members = shadow_forget_sets(len(pool), min(len(rows["forget"]), len(pool) // 2), runs, seed=seed)
    if dp:  # the same noise per step as the returned update (the server knows sigma and C from the manifest)
        training = dataclasses.replace(training, dp_epsilon=0.0, dp_noise_multiplier=dp["noise_multiplier"], dp_clip_norm=dp["clip_norm"])
    tokenizer = AutoTokenizer.from_pretrained(theta_dir)
    theta = AutoModelForCausalLM.from_pretrained(theta_dir, dtype=torch.float32)
    before = item_losses(theta, tokenizer, pool)
    reference = []
    for r in range(runs):
        model = AutoModelForCausalLM.from_pretrained(theta_dir, dtype=torch.float32)
        forget = [row for row, m in zip(pool, members[r]) if m]
        run_unlearning(model, tokenizer, forget, shadow_retain, method, {}, dataclasses.replace(training, seed=seed + 100 + r),
                       str(scratch / f"shadow-{r}"))
        reference.append(item_losses(model, tokenizer, pool) - before)
    return np.stack(reference), members


def membership(workdir: Path, returns: Path, theta_dir: Path, rows: dict, shadows=None) -> dict:
    """The server's best AUCs (forget vs holdout, forget vs unused retain) over tests and updates;
    ``shadows``: :func:`shadow_references`' output, for the LiRA test (None: left out)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.audit.lira import lira_offline
    from mpu.audit.membership import apply_update, auc, item_losses, server_updates

    theta = AutoModelForCausalLM.from_pretrained(theta_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(theta_dir)
    weights, updates = server_updates(workdir, returns, 1)
    candidates = {"aggregate": {name: sum(w * u[name] for w, u in zip(weights, updates)) for name in updates[0]}}
    candidates.update({f"copy-{k}": update for k, update in enumerate(updates, start=1)})
    before = {key: item_losses(theta, tokenizer, split) for key, split in rows.items()}
    directions = {key: gradient_directions(theta, tokenizer, split) for key, split in rows.items()}
    bounds = np.cumsum([0] + [len(split) for split in rows.values()])
    table = {}
    for label, update in candidates.items():
        after = {key: item_losses(apply_update(theta, update), tokenizer, split) for key, split in rows.items()}
        scores = {"loss_increase": {key: after[key] - before[key] for key in rows},
                  "gradient_alignment": {key: alignment(update, directions[key]) for key in rows}}
        if shadows is not None:
            pooled = lira_offline(np.concatenate([scores["loss_increase"][key] for key in rows]), shadows[0], shadows[1],
                                  global_variance=True)
            scores["lira"] = {key: pooled[bounds[i]:bounds[i + 1]] for i, key in enumerate(rows)}
        for test, score in scores.items():
            table[f"{label}/{test}"] = {"forget_vs_holdout": auc(score["forget"], score["holdout"]),
                                        "forget_vs_unused_retain": auc(score["forget"], score["unused_retain"])}
    best = max(max(entry.values()) for entry in table.values())
    best_by_test = {test: max(max(entry.values()) for key, entry in table.items() if key.endswith("/" + test))
                    for test in {key.split("/")[1] for key in table}}
    return {"best_auc": best, "best_auc_by_test": best_by_test, "by_update_and_test": table}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from mpu.methods import METHODS, training_options
    from mpu.experiments.two_party import run_mpu
    from mpu.server.config import ServerConfig

    if args.audit_models:
        setup = audit_setup(args)
    else:
        setup = builtin_setup(args)
    target, base, forget, used, mia_rows, shadow_retain = (setup[k] for k in ("target", "base", "forget", "used", "mia_rows", "shadow_retain"))
    evaluate_model = setup["evaluate"]

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    # the starting point: the target itself (no unlearning)
    target_summary = evaluate_model(target)
    print(json.dumps({"target": {k: target_summary.get(k) for k in ("model_utility", "forget_Q_A_ROUGE", "forget_quality", "forget_nll")}}),
          flush=True)
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
                shadows = None
                if args.shadows:
                    started = time.perf_counter()
                    shadows = shadow_references(target, mia_rows, method, training, shadow_retain, args.shadows, manifest.get("dp"),
                                                scratch / "shadows", seed=args.seed)
                    timings["shadows"] = time.perf_counter() - started
                mia = membership(scratch / "server", scratch / "server-exchange" / "round-1" / "returns", target, mia_rows, shadows)
                summary = evaluate_model(model_dir)
            row = {"method": method, "epsilon": eps_text.strip(), "dp": manifest.get("dp"), "best_auc": mia["best_auc"],
                   "best_auc_by_test": mia["best_auc_by_test"], "forget_nll": summary.get("forget_nll"),
                   "membership": mia["by_update_and_test"], "forget_quality": summary.get("forget_quality"),
                   "model_utility": summary.get("model_utility"), "forget_Q_A_ROUGE": summary.get("forget_Q_A_ROUGE"),
                   "forget_Q_A_Prob": summary.get("forget_Q_A_Prob"), "summary": summary,
                   "client_train_seconds": round(timings["client_train"], 2), "run_seconds": round(seconds, 1),
                   "shadow_seconds": round(timings.get("shadows", 0.0), 1)}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("membership", "summary")}), flush=True)
            (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                               "target": target_summary, "results": results}, indent=2))
    table = format_table(results, target_summary)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    return 0


def builtin_setup(args) -> dict:
    """The built-in benchmark at --authors: base, target and retain model fine-tuned from it (cached)."""
    from mpu.data.builtin import SIZE_PRESETS, BuildConfig, cache_root, ensure_builtin
    from mpu.data.qa import load_qa_rows
    from mpu.eval import evaluate
    from mpu.experiments.finetune import ensure_base, finetune

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

    def evaluate_model(model_dir):
        return evaluate(model_dir, "tofu", data, forget_split=args.forget_split, retain_model=retain, progress=False)

    return {"target": target, "base": base, "forget": forget, "used": used, "mia_rows": mia_rows,
            "shadow_retain": unused[len(forget): 2 * len(forget)] or used, "evaluate": evaluate_model}


def audit_setup(args) -> dict:
    """benchmarks/audit_table.py's models: forget the last --forget-authors authors (10 QA each) of its 40.

    The base saw authors 0-17; model utility is scored on authors 0-3 (retain_perturbed), which no
    split here touches. The client's retain set is authors 4-11, the server's unused retain items
    authors 12-19 (all fine-tuned, none forgotten); the shadow runs' retain set is authors 0-3.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import audit_table

    info = json.loads((args.audit_models / "models" / "models.json").read_text())
    data = Path(info["data"])
    full = audit_table.qa_rows(data, "full")
    if not 4 <= args.forget_authors <= len(full) // 10 - 20:
        raise SystemExit(f"--forget-authors must be in [4, {len(full) // 10 - 20}] (authors 0-19 are retain), got {args.forget_authors}")
    forget = full[len(full) - 10 * args.forget_authors:]
    holdout = audit_table.qa_rows(data, "holdout10")
    used, unused = full[40:120], full[120:200]
    mia_rows = {"forget": forget, "holdout": holdout, "unused_retain": unused}
    eval_rows = {"forget": forget, "retain": full[:40], "holdout": holdout}

    def evaluate_model(model_dir):
        return audit_table.utility(Path(model_dir), data, eval_rows)

    return {"target": Path(info["theta"]), "base": Path(info["base"]), "forget": forget, "used": used, "mia_rows": mia_rows,
            "shadow_retain": full[:40], "evaluate": evaluate_model}


def format_table(results: list[dict], target: dict) -> str:
    """Markdown: per method and ε, the server's best membership AUC (over all tests, and of the LiRA
    test alone) next to what the unlearning did. Forget quality where a retain model scored it,
    forget NLL otherwise."""
    def fmt(value, spec=".3g"):
        return "—" if value is None else format(value, spec)

    quality = any(row.get("forget_quality") is not None for row in results) or target.get("forget_quality") is not None
    forgetting, key = ("forget quality", "forget_quality") if quality else ("forget NLL", "forget_nll")
    lines = [f"Target before unlearning: model utility {fmt(target.get('model_utility'))}, forget ROUGE "
             f"{fmt(target.get('forget_Q_A_ROUGE'))}, {forgetting} {fmt(target.get(key))}.", "",
             f"| method | ε (all m copies) | σ | best membership AUC | LiRA's best AUC | forget ROUGE | {forgetting} | model utility | client time × |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        base = next((r for r in results if r["method"] == row["method"] and r["epsilon"] == "inf"), None)
        ratio = f"{row['client_train_seconds'] / base['client_train_seconds']:.2f}" if base and base["client_train_seconds"] else "—"
        sigma = f"{row['dp']['noise_multiplier']:.3g}" if row["dp"] else "—"
        lira = (row.get("best_auc_by_test") or {}).get("lira")
        lines.append(f"| {row['method']} | {row['epsilon']} | {sigma} | {row['best_auc']:.3f} | {fmt(lira, '.3f')} | "
                     f"{fmt(row.get('forget_Q_A_ROUGE'))} | {fmt(row.get(key))} | {fmt(row['model_utility'])} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
