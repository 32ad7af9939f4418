"""The privacy table of docs/privacy.md: every MPU privacy setting, attacked and measured for utility.

    python benchmarks/audit_table.py --out runs/audit_table               # ~13 min on 2 shared CPU cores
    python benchmarks/audit_table.py --out runs/audit_table --quick       # 4 settings, GradDiff only
    python benchmarks/audit_table.py --out runs/audit_table --table-only  # rewrite table.md from results.json
    python benchmarks/audit_table.py --out runs/audit_table --cost        # hardened vs default: 8 methods x kappa 0.01, 0.1 x 3 seeds

(3 minutes train the two models, cached in OUT/models; then about 30 s per setting.)

What it does, on a tiny Llama (about 1M parameters) trained here:

1. data: the built-in TOFU-format benchmark, 40 fictitious authors (10 QA each) + 40 facts;
2. base: trained from scratch on half of the retain authors and the facts (the "public" model);
3. theta: the base fine-tuned on every author (forget10 = 4 authors = 40 QA included);
4. per method (GradDiff, NPO, both with an NLL retain term; 5 epochs, m = 3, one round): the
   noise-free baseline (``run_unlearning`` on theta, same method and epochs);
5. per setting: ``mpu server init/publish`` -> the audit on the published copies (``run_audit``, scored
   against theta and the base, with the true alphas and tau as an oracle bound) -> the client
   unlearns each copy -> aggregate -> retain/forget/holdout NLL and model_utility, compared with the
   noise-free baseline; and the server's membership-inference test on the updates.

Everything lands in ``OUT/results.json`` and ``OUT/table.md`` (the markdown pasted into the docs).
Reproducible: fixed seeds throughout (fixed-seed mode for the server, so its randomness is NOT secret
here; the attacks do not use that).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))   # runs from a checkout without installing
from mpu.server.config import PRESETS  # noqa: E402

log = logging.getLogger("audit_table")

M = 3
EPOCHS = 5
LEARNING_RATE = 2e-4
BATCH = 8
METHODS = ("GradDiff", "NPO")

# name -> (ServerConfig settings, label for the table). Unnamed settings keep ServerConfig's defaults
# (secret alphas, plane V/O, FFN permutation, blocks only, tau 1); the paper's setting and the hardened
# transforms come from the server's presets (their one home), the hardened preset's tau set per row.
PAPER = PRESETS["paper"]   # public alphas, plane V/O, FFN permutation, tau 0
HARDENED = {key: value for key, value in PRESETS["hardened"].items() if key != "independent_noise"}
SETTINGS: dict[str, tuple[dict, str]] = {
    "mpu-kappa0": ({"kappa": 0.0}, "MPU without noise (kappa = 0), default transforms: control"),
    "no-reparam": ({"alpha_mode": "public", "independent_noise": 0.0, "reparam": {"enabled": False}},
                   "no reparameterisation, public alpha"),
    "paper": (PAPER, "paper: public alpha, plane rotations, FFN permutation"),
    "paper-k0.1": ({**PAPER, "kappa": 0.1}, "paper, kappa = 0.1"),
    "default": ({"independent_noise": 0.0}, "secret alpha, tau = 0"),
    "vo-haar": ({"independent_noise": 0.0, "reparam": {"vo": "haar"}}, "secret alpha + V/O Haar"),
    "kv-perm": ({"independent_noise": 0.0, "reparam": {"kv_permutation": True}}, "secret alpha + KV-group permutation"),
    "ffn-scaling": ({"independent_noise": 0.0, "reparam": {"ffn_scaling": True}}, "secret alpha + FFN scaling"),
    "scope-all": ({"independent_noise": 0.0, "noise_scope": "all"}, "secret alpha + noise on embeddings/LM head"),
    "tau0.5": ({"independent_noise": 0.5}, "secret alpha + independent noise tau = 0.5"),
    "tau1": ({"independent_noise": 1.0}, "secret alpha + tau = 1 (the default preset)"),
    "tau2": ({"independent_noise": 2.0}, "secret alpha + tau = 2"),
    "tau4": ({"independent_noise": 4.0}, "secret alpha + tau = 4"),
    "hardened-tau0": ({**HARDENED, "independent_noise": 0.0}, "all transforms + noise scope all, tau = 0"),
    "hardened": ({**HARDENED, "independent_noise": 1.0}, "hardened transforms, tau = 1"),
    "hardened-tau2": ({**HARDENED, "independent_noise": 2.0}, "hardened, tau = 2"),
    "hardened-tau4": ({**HARDENED, "independent_noise": 4.0}, "hardened preset (tau = 4)"),
    "hardened-k0.1-tau0": ({**HARDENED, "independent_noise": 0.0, "kappa": 0.1}, "all transforms + scope all, kappa = 0.1, tau = 0"),
    "hardened-k0.1": ({**HARDENED, "independent_noise": 1.0, "kappa": 0.1}, "hardened, kappa = 0.1"),
    "hardened-k0.1-tau2": ({**HARDENED, "independent_noise": 2.0, "kappa": 0.1}, "hardened, kappa = 0.1, tau = 2"),
    "hardened-k0.1-tau4": ({**HARDENED, "independent_noise": 4.0, "kappa": 0.1}, "hardened, kappa = 0.1, tau = 4"),
}
QUICK = ("paper", "default", "tau1", "hardened")
MIA_SETTINGS = ("paper", "hardened", "hardened-k0.1")


# Models ------------------------------------------------------------------------------------------


def qa_rows(data: Path, config: str) -> list[dict]:
    from mpu.data.loaders import LocalSource

    return LocalSource(data / "tofu").rows(config, "train")


def public_authors_qa(retain: list) -> int:
    """The base ("public") model sees the first half of the retain authors (10 QA each)."""
    half = len(retain) // 2
    return half - half % 10


def train(model, tokenizer, rows, epochs, lr, out: Path, seed: int = 0) -> dict:
    from transformers import Trainer, TrainingArguments

    from mpu.data.qa import QACollator, encode_qa
    from mpu.experiments.finetune import token_accuracy

    examples = [encode_qa(tokenizer, r["question"], r["answer"]) for r in rows]
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=32, num_train_epochs=epochs, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_strategy="no", save_strategy="no", report_to="none",
        seed=seed, data_seed=seed, disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
    )
    start = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=examples, data_collator=QACollator(tokenizer.pad_token_id)).train()
    seconds = time.perf_counter() - start
    model.eval()
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return {**token_accuracy(model, examples, 64, tokenizer.pad_token_id), "seconds": round(seconds, 1), "examples": len(examples)}


def prepare(out: Path) -> dict:
    """Data, base and theta (cached in OUT/models)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mpu.data.builtin import build_benchmark
    from mpu.experiments.finetune import TinyLlamaConfig

    data, base_dir, theta_dir = out / "data", out / "models" / "base", out / "models" / "theta"
    record = out / "models" / "models.json"
    if record.is_file() and (theta_dir / "config.json").is_file():
        return json.loads(record.read_text())
    if not (data / "manifest.json").is_file():
        build_benchmark(data, authors=40, facts=20, news=20, topics=8)
    tokenizer = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    retain, full = qa_rows(data, "retain90"), qa_rows(data, "full")
    facts = qa_rows(data, "real_authors") + qa_rows(data, "world_facts")
    public = retain[: public_authors_qa(retain)] + facts  # 18 authors + facts
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         # initializer 0.02: the recipe the documented audit models were trained with
                         **TinyLlamaConfig(initializer_range=0.02, tie_word_embeddings=False).llama_kwargs())
    model = LlamaForCausalLM(config)
    log.info("training the base on %d public QA", len(public))
    base_metrics = train(model, tokenizer, public, 40, 3e-3, out / "models")
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    log.info("base: %s; fine-tuning theta on %d QA", base_metrics, len(full) + len(facts))
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    theta_metrics = train(model, tokenizer, full + facts, 30, 2e-3, out / "models", seed=1)
    model.generation_config.do_sample = False
    model.save_pretrained(theta_dir)
    tokenizer.save_pretrained(theta_dir)
    log.info("theta: %s", theta_metrics)
    info = {"base": str(base_dir), "theta": str(theta_dir), "data": str(data), "n_params": sum(p.numel() for p in model.parameters()),
            "base_training": base_metrics, "theta_training": theta_metrics, "public_qa": len(public), "finetune_qa": len(full) + len(facts)}
    record.write_text(json.dumps(info, indent=2))
    return info


# Measurements ------------------------------------------------------------------------------------


UTILITY_KEYS = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
                "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")


def eval_suite() -> dict:
    from mpu.eval.suites import default_suite

    suite = default_suite("tofu")
    keep = {"model_utility", "forget_Q_A_Prob", "forget_Q_A_ROUGE", *UTILITY_KEYS}
    needed, todo = set(), list(keep)
    while todo:  # every pre-compute the kept metrics need
        key = todo.pop()
        if key in needed:
            continue
        needed.add(key)
        todo += list((suite["metrics"][key].get("pre_compute") or {}).keys())
    for spec in suite["metrics"].values():
        if "max_new_tokens" in spec:
            spec["max_new_tokens"] = 48
    return {"metrics": {k: v for k, v in suite["metrics"].items() if k in needed},
            "summary": ["model_utility", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "retain_Q_A_Prob", "retain_Q_A_ROUGE"]}


def utility(model_dir: Path, data: Path, rows: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.audit.membership import item_losses
    from mpu.eval import evaluate

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = {f"{name}_nll": float(item_losses(model, tokenizer, split).mean()) for name, split in rows.items()}
    summary = evaluate(model_dir, "tofu", data=str(data), forget_split="forget10", config=eval_suite(), progress=False)
    out.update({key: summary.get(key) for key in ("model_utility", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "retain_Q_A_Prob", "retain_Q_A_ROUGE")})
    return out


def weights_delta(a_dir: Path, b_dir: Path, theta_dir: Path) -> float:
    """||a - b|| / ||b - theta||: how far an MPU result lands from the noise-free one, in units of
    the noise-free update."""
    from mpu.checkpoint import CheckpointReader

    a, b, t = CheckpointReader(a_dir), CheckpointReader(b_dir), CheckpointReader(theta_dir)
    num = den = 0.0
    for name in t.names():
        x, y, z = (r.get(name).to(torch.float64) for r in (a, b, t))
        num += float((x - y).square().sum())
        den += float((y - z).square().sum())
    return (num / den) ** 0.5 if den else float("nan")


def method_options(method: str, seed: int = 0):
    from mpu.methods import TrainingConfig, method_hparams

    hp = method_hparams(method, {"alpha": 1.0})
    return hp, TrainingConfig(epochs=EPOCHS, learning_rate=LEARNING_RATE, batch_size=BATCH, seed=seed, logging_steps=5)


def noise_free(info: dict, method: str, out: Path, forget, retain) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.methods import run_unlearning

    target = out / "runs" / f"noise-free-{method}"
    if (target / "config.json").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(info["theta"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(info["theta"])
    hp, training = method_options(method)
    run_unlearning(model, tokenizer, forget, retain, method, hp, training, str(out / "scratch"))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def server_config(settings: dict):
    from mpu.server.config import ServerConfig

    return ServerConfig(**{"copies": M, "kappa": 0.01, "fixed_seed": 1, **copy.deepcopy(settings)})


def membership(info, workdir: Path, returns: Path, baseline_dir: Path, rows: dict) -> dict:
    """AUCs of the server's loss-increase test: forget vs holdout (never trained) and forget vs
    retain items the client did not use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.audit.membership import apply_update, auc, item_losses, server_updates
    from mpu.checkpoint import CheckpointReader

    theta = AutoModelForCausalLM.from_pretrained(info["theta"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(info["theta"])
    weights, updates = server_updates(workdir, returns, 1)
    combined = {name: sum(w * u[name] for w, u in zip(weights, updates)) for name in updates[0]}
    base_reader, nf_reader = CheckpointReader(info["theta"]), CheckpointReader(baseline_dir)
    noise_free_update = {name: nf_reader.get(name).float() - base_reader.get(name).float() for name in nf_reader.names()}
    before = {key: item_losses(theta, tokenizer, split) for key, split in rows.items()}

    def aucs(update):
        model = apply_update(theta, update)
        after = {key: item_losses(model, tokenizer, split) for key, split in rows.items()}
        gain = {key: after[key] - before[key] for key in rows}
        return {"forget_vs_holdout": auc(gain["forget"], gain["holdout"]),
                "forget_vs_unused_retain": auc(gain["forget"], gain["unused_retain"])}

    result = {"aggregated": aucs(combined), "noise_free": aucs(noise_free_update)}
    for k, update in enumerate(updates, start=1):
        result[f"copy-{k}"] = aucs(update)
    return result


def qa_nll(model_dir: Path, rows) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.audit.membership import item_losses

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return float(item_losses(model, AutoTokenizer.from_pretrained(model_dir), rows).mean())


def run_setting(name: str, info: dict, out: Path, forget, retain, eval_rows, mia_rows, baselines, stolen_rows) -> dict:
    from mpu.audit import run_audit
    from mpu.client.unlearn import unlearn_copies
    from mpu.server.aggregate import aggregate
    from mpu.server.export import export
    from mpu.server.init import init_server
    from mpu.server.noise import alphas_for_round
    from mpu.server.publish import publish
    from mpu.server.workdir import Workdir

    settings, label = SETTINGS[name]
    config = server_config(settings)
    entry = {"label": label, "config": config.to_dict(), "methods": {}}
    root = out / "runs" / name
    shutil.rmtree(root, ignore_errors=True)
    for i, method in enumerate(METHODS_USED):
        workdir, outbox, returns = root / method / "server", root / method / "outbox", root / method / "returns"
        init_server(workdir, info["theta"], info["base"], config, progress=False)
        publish(workdir, outbox, progress=False)
        if i == 0:  # the publication does not depend on the method (fixed seed): audit it once
            work = Workdir(workdir)
            true = alphas_for_round(config, work.round_secret(1, config.fixed_seed, create=False))
            started = time.perf_counter()
            recovered = root / "recovered"
            audit = run_audit(outbox, info["theta"], info["base"], oracle_alphas=true, oracle_tau=config.independent_noise,
                              logit_sequences=32, keep_recovered=recovered)
            entry["audit_seconds"] = round(time.perf_counter() - started, 1)
            entry["audit"] = audit.report
            entry["true_alphas"] = true
            best = audit.report["summary"]["best_attack"]
            # What the stolen model knows: NLL on the QA that only the fine-tuning taught (theta ~ 0, base high).
            entry["stolen_nll"] = {"best_attack": qa_nll(recovered / best, stolen_rows), "copy-1": qa_nll(outbox / "copy-1", stolen_rows)}
            shutil.rmtree(recovered, ignore_errors=True)
        hp, training = method_options(method)
        started = time.perf_counter()
        unlearn_copies(outbox, forget, retain, method, hp, training, returns)
        seconds = time.perf_counter() - started
        result = {"client_seconds": round(seconds, 1)}
        if name in MIA_SETTINGS:
            result["membership"] = membership(info, workdir, returns, baselines[method]["dir"], mia_rows)
        aggregate(workdir, returns, progress=False)
        model_dir = export(workdir, root / method / "model", progress=False)
        result["utility"] = utility(model_dir, Path(info["data"]), eval_rows)
        result["distance_to_noise_free"] = weights_delta(model_dir, baselines[method]["dir"], Path(info["theta"]))
        entry["methods"][method] = result
        shutil.rmtree(returns, ignore_errors=True)
        shutil.rmtree(outbox, ignore_errors=True)
        shutil.rmtree(workdir / "models", ignore_errors=True)
    return entry


# Table ---------------------------------------------------------------------------------------------


def summarise(results: dict) -> str:
    settings = results["settings"]
    methods = list(results["baselines"])
    lines = [
        "| setting | one copy: TV error, top-1 | best client attack | its TV error | ÷ one copy | its top-1, mean KL | its FT-QA NLL | "
        + " | ".join(f"{m}: Δ forget / Δ retain NLL, Δ MU" for m in methods) + " |",
        "|" + "---|" * (7 + len(methods)),
    ]
    for name, entry in settings.items():
        audit = entry["audit"]
        summary, one = audit["summary"], audit["attacks"]["single-copy"]
        best = audit["attacks"][summary["best_attack"]]
        noisy = entry["config"]["kappa"] > 0  # without noise a "ratio to one copy" is round-off over round-off
        row = [entry["label"], f"{summary['single_copy']:.1e}, {one['logits']['top1_agreement']:.1%}", summary["best_attack"],
               f"{summary['best_error']:.1e}", f"{summary['best_over_single_copy']:.2g}" if noisy else "-",
               f"{best['logits']['top1_agreement']:.1%}, {best['logits']['mean_kl']:.0e}", _num(entry.get("stolen_nll", {}).get("best_attack"), 4)]
        for method in methods:
            got, base = entry["methods"][method]["utility"], results["baselines"][method]["utility"]
            row.append(f"{got['forget_nll'] - base['forget_nll']:+.2f} / {got['retain_nll'] - base['retain_nll']:+.2f}, "
                       f"{_delta(got.get('model_utility'), base.get('model_utility'))}")
        lines.append("| " + " | ".join(row) + " |")
    ref = results.get("stolen_reference")
    if ref:
        lines += ["", f"FT-QA NLL: mean answer NLL on the {ref['items']} QA that only the fine-tuning taught (theta {ref['theta']:.3f}, "
                      f"the public base {ref['base']:.3f}): how much of theta's fine-tuning a stolen model keeps."]
    lines += ["", "Noise-free baselines (theta before unlearning: " + _fmt_utility(results["theta_utility"]) + "):"]
    for method, base in results["baselines"].items():
        lines.append(f"- {method}: " + _fmt_utility(base["utility"]))
    lines += ["", "Distance of the MPU result from the noise-free result, ||theta_MPU - theta_nf|| / ||theta_nf - theta||:", ""]
    lines.append("| setting | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for name, entry in settings.items():
        lines.append(f"| {entry['label']} | " + " | ".join(f"{entry['methods'][m]['distance_to_noise_free']:.3f}" for m in methods) + " |")
    mia = [(name, entry) for name, entry in settings.items() if any("membership" in r for r in entry["methods"].values())]
    if mia:
        lines += ["", "Server-side membership inference on the updates (AUC; score = loss increase on the item):", "",
                  "| setting | method | update | forget vs holdout | forget vs unused retain |",
                  "|---|---|---|---|---|"]
        for name, entry in mia:
            for method, result in entry["methods"].items():
                for update, aucs in result.get("membership", {}).items():
                    lines.append(f"| {entry['label']} | {method} | {update} | {aucs['forget_vs_holdout']:.3f} | "
                                 f"{aucs['forget_vs_unused_retain']:.3f} |")
    return "\n".join(lines)


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(value, base) -> str:
    return "-" if value is None or base is None else f"{value - base:+.3f}"


def _fmt_utility(u: dict) -> str:
    mu = u.get("model_utility")
    return (f"retain NLL {u['retain_nll']:.3f}, forget NLL {u['forget_nll']:.3f}, holdout NLL {u['holdout_nll']:.3f}, "
            f"model_utility {mu:.3f}" if mu is not None else f"retain NLL {u['retain_nll']:.3f}, forget NLL {u['forget_nll']:.3f}")


# The hardened preset's price across methods and seeds ---------------------------------------------

# The 8 methods of docs/results.md's claim sweep (their default hyperparameters; one learning rate here).
COST_METHODS = ("GradAscent", "GradDiff", "NPO", "SimNPO", "DPO", "UNDIAL", "SatImp", "WGA")
COST_PRESETS = ("default", "hardened")
COST_KEYS = ("forget_nll", "retain_nll", "forget_Q_A_ROUGE", "model_utility")


def preset_config(preset: str, kappa: float, seed: int):
    """ServerConfig of the named ``mpu server init --privacy`` preset at ``kappa``, fixed seed ``seed``."""
    from mpu.server.config import PRESETS

    return server_config({**copy.deepcopy(PRESETS[preset]), "kappa": kappa, "fixed_seed": seed})


def cost_run(info: dict, out: Path, method: str, preset: str, kappa: float, seed: int, forget, retain, eval_rows) -> dict:
    """One MPU round (m copies) under ``preset`` at ``kappa``; the client trains with ``seed`` and the
    server's noise uses fixed seed ``seed + 1``. Returns the exported model's forgetting and utility."""
    from mpu.client.unlearn import unlearn_copies
    from mpu.server.aggregate import aggregate
    from mpu.server.export import export
    from mpu.server.init import init_server
    from mpu.server.publish import publish

    root = out / "cost-scratch" / f"{method}-{preset}-k{kappa:g}-s{seed}"
    shutil.rmtree(root, ignore_errors=True)
    workdir, outbox, returns = root / "server", root / "outbox", root / "returns"
    started = time.perf_counter()
    init_server(workdir, info["theta"], info["base"], preset_config(preset, kappa, seed + 1), progress=False)
    publish(workdir, outbox, progress=False)
    from mpu.methods import TrainingOptions

    training = TrainingOptions(epochs=EPOCHS, learning_rate=LEARNING_RATE, batch_size=BATCH, seed=seed, logging_steps=5)
    hp = method_hparams_default(method)
    unlearn_copies(outbox, forget, retain, method, hp, training, returns)
    aggregate(workdir, returns, progress=False)
    model_dir = export(workdir, root / "model", progress=False)
    result = utility(model_dir, Path(info["data"]), eval_rows)
    result["seconds"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(root, ignore_errors=True)
    return result


def method_hparams_default(method: str):
    from mpu.methods import method_hparams

    return method_hparams(method, {})


def cost_table(runs: list[dict]) -> str:
    """Markdown: per method and kappa, the default preset's result and hardened - default (mean ± sample
    std over the seeds both presets ran), from ``runs`` rows {method, preset, kappa, seed, <COST_KEYS>}."""
    import statistics

    def spread(values):
        return statistics.stdev(values) if len(values) > 1 else 0.0

    index = {(r["method"], r["preset"], float(r["kappa"]), int(r["seed"])): r for r in runs}
    methods = [m for m in COST_METHODS if any(r["method"] == m for r in runs)]
    methods += sorted({r["method"] for r in runs} - set(methods))
    kappas = sorted({float(r["kappa"]) for r in runs})
    lines = ["| method | κ | seeds | default: forget NLL, forget ROUGE, MU | Δ forget NLL | Δ retain NLL | Δ forget ROUGE | Δ MU |",
             "|---|---|---|---|---|---|---|---|"]
    for method in methods:
        for kappa in kappas:
            seeds = sorted(s for (m, p, k, s) in index if m == method and p == "default" and k == kappa
                           and (m, "hardened", k, s) in index)
            if not seeds:
                continue
            pairs = [(index[(method, "default", kappa, s)], index[(method, "hardened", kappa, s)]) for s in seeds]
            cells = []
            for key in COST_KEYS:
                deltas = [h[key] - d[key] for d, h in pairs if h.get(key) is not None and d.get(key) is not None]
                cells.append(f"{statistics.fmean(deltas):+.3f} ± {spread(deltas):.3f}" if deltas else "-")
            means = {key: statistics.fmean(d[key] for d, _ in pairs if d.get(key) is not None) for key in COST_KEYS}
            lines.append(f"| {method} | {kappa:g} | {len(seeds)} | {means['forget_nll']:.2f}, {means['forget_Q_A_ROUGE']:.3f}, "
                         f"{means['model_utility']:.3f} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines)


def cost_summary(record: dict) -> str:
    """:func:`cost_table` of a cost.json, after a line with theta's own values when recorded."""
    theta = record.get("theta_utility")
    head = ""
    if theta:
        head = (f"θ before unlearning: forget NLL {theta['forget_nll']:.2f}, retain NLL {theta['retain_nll']:.3f}, forget ROUGE "
                f"{theta['forget_Q_A_ROUGE']:.3f}, MU {theta['model_utility']:.3f}.\n\n")
    return head + cost_table(record["runs"])


def run_cost(args, out: Path) -> int:
    """--cost: default vs hardened preset for each method x kappa x seed, resumable (OUT/cost.json)."""
    info = prepare(out)
    data = Path(info["data"])
    forget = qa_rows(data, "forget10")
    retain_all = qa_rows(data, "retain90")
    retain = retain_all[-40:]
    eval_rows = {"forget": forget, "retain": retain_all, "holdout": qa_rows(data, "holdout10")}
    path = out / "cost.json"
    record = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    record.update({"m": M, "epochs": EPOCHS, "learning_rate": LEARNING_RATE, "batch_size": BATCH, "models": info})
    if "theta_utility" not in record:
        record["theta_utility"] = utility(Path(info["theta"]), data, eval_rows)
    done = {(r["method"], r["preset"], float(r["kappa"]), int(r["seed"])) for r in record["runs"]}
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(COST_METHODS)
    seeds = [int(s) for s in args.seeds.split(",")]
    kappas = [float(k) for k in args.kappas.split(",")]
    started = time.perf_counter()
    for seed in seeds:  # seed-major: an interrupted run still covers every method
        for method in methods:
            for kappa in kappas:
                for preset in COST_PRESETS:
                    if (method, preset, kappa, seed) in done:
                        continue
                    result = cost_run(info, out, method, preset, kappa, seed, forget, retain, eval_rows)
                    row = {"method": method, "preset": preset, "kappa": kappa, "seed": seed, **result}
                    record["runs"].append(row)
                    log.info("cost %s", row)
                    path.write_text(json.dumps(record, indent=1))
    record["seconds"] = round(record.get("seconds", 0) + time.perf_counter() - started, 1)
    path.write_text(json.dumps(record, indent=1))
    table = cost_summary(record)
    (out / "cost.md").write_text(table + "\n")
    print(table)
    return 0


# Main ------------------------------------------------------------------------------------------------


METHODS_USED = list(METHODS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/audit_table", help="output folder (models are cached there)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} and GradDiff")
    parser.add_argument("--settings", default=None, help="comma-separated subset of: " + ", ".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--table-only", action="store_true", help="only rewrite OUT/table.md from OUT/results.json")
    parser.add_argument("--cost", action="store_true",
                        help="the hardened preset's price: default vs hardened for --methods x --kappas x --seeds (OUT/cost.json, cost.md)")
    parser.add_argument("--methods", default=None, help="--cost: comma-separated methods (default: the 8 of the claim sweep)")
    parser.add_argument("--seeds", default="0,1,2", help="--cost: comma-separated seeds")
    parser.add_argument("--kappas", default="0.01,0.1", help="--cost: comma-separated kappas")
    args = parser.parse_args(argv)
    if args.table_only and args.cost:
        table = cost_summary(json.loads((Path(args.out) / "cost.json").read_text()))
        (Path(args.out) / "cost.md").write_text(table + "\n")
        print(table)
        return 0
    if args.table_only:
        table = summarise(json.loads((Path(args.out) / "results.json").read_text()))
        (Path(args.out) / "table.md").write_text(table + "\n")
        print(table)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mpu", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    import mpu.audit  # noqa: F401  (fail early if the package is missing)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cost:
        return run_cost(args, out)
    names = list(QUICK) if args.quick else list(SETTINGS)
    if args.settings:
        names = [name.strip() for name in args.settings.split(",")]
        unknown = [name for name in names if name not in SETTINGS]
        if unknown:
            parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    if args.quick:
        METHODS_USED[:] = ["GradDiff"]

    started = time.perf_counter()
    info = prepare(out)
    data = Path(info["data"])
    forget = qa_rows(data, "forget10")
    retain_all = qa_rows(data, "retain90")
    retain = retain_all[-40:]  # the client's retain set: 4 authors the base never saw
    eval_rows = {"forget": forget, "retain": retain_all, "holdout": qa_rows(data, "holdout10")}
    mia_rows = {"forget": forget, "holdout": qa_rows(data, "holdout10"), "unused_retain": retain_all[-80:-40]}

    # QA that only the fine-tuning taught (authors the base never saw): what a stolen theta is worth
    stolen_rows = retain_all[public_authors_qa(retain_all):] + forget
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results.update({"models": info, "m": M, "epochs": EPOCHS, "learning_rate": LEARNING_RATE, "batch_size": BATCH, "rounds": 1})
    results.setdefault("theta_utility", utility(Path(info["theta"]), data, eval_rows))
    results.setdefault("stolen_reference", {"theta": qa_nll(Path(info["theta"]), stolen_rows), "base": qa_nll(Path(info["base"]), stolen_rows),
                                            "items": len(stolen_rows)})
    results.setdefault("baselines", {})
    baselines = {}
    for method in METHODS_USED:
        target = noise_free(info, method, out, forget, retain)
        if method not in results["baselines"]:
            results["baselines"][method] = {"utility": utility(target, data, eval_rows)}
        baselines[method] = {"dir": target, **results["baselines"][method]}
    results["baselines"] = {m: results["baselines"][m] for m in METHODS_USED}
    results.setdefault("settings", {})
    for name in names:
        log.info("setting %s", name)
        t = time.perf_counter()
        results["settings"][name] = run_setting(name, info, out, forget, retain, eval_rows, mia_rows, baselines, stolen_rows)
        log.info("setting %s done in %.0f s: %s", name, time.perf_counter() - t, results["settings"][name]["audit"]["summary"])
        results_path.write_text(json.dumps(results, indent=1))
    results["settings"] = {name: results["settings"][name] for name in SETTINGS if name in results["settings"]
                           and all(m in results["settings"][name]["methods"] for m in METHODS_USED)}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results_path.write_text(json.dumps(results, indent=1))
    table = summarise(results)
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"\n{len(names)} settings in {results['seconds']:.0f} s; results in {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
