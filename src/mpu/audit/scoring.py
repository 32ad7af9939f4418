"""How the audit scores an attack against theta (the server's model), a scorer's step no client can take.

- weights: the relative error ||recovered - theta|| / ||theta|| per block and overall, and the same
  over the task vector (divided by ||theta - base||), in three views (``raw``, ``scored``: after
  aligning the result to theta, ``base_aligned``: after aligning it to the public base instead);
- logits: top-1 agreement and KL(theta || model) on random token sequences (no alignment needed);
- alignment: how often the client's copy-to-copy matching equals the one implied by the scorer's
  alignments to theta;
- the summary: the best client attack against a single copy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpu.audit.align import LayerAlignment

F64 = torch.float64
SINGLE = "single-copy"  # the report's row of one copy alone (the scale every attack is read against)


class Scores:
    """Squared errors per (attack, view, block), and the norms they are divided by."""

    VIEWS = ("raw", "scored", "base_aligned")

    def __init__(self):
        self.norm = {}  # block -> ||theta||^2
        self.task = {}  # block -> ||theta - base||^2
        self.err: dict[str, dict[str, dict[str, float]]] = {}

    def add_norms(self, block, truth, base_t) -> None:
        """Record block's ||theta||^2 and, with a base, ||theta - base||^2 (the error denominators)."""
        self.norm[block] = sum(float(t.square().sum()) for t in truth.values())
        if base_t is not None:
            self.task[block] = sum(float((truth[n] - base_t[n]).square().sum()) for n in truth)

    def add(self, key, block, layer, recovered, truth, base_t, aligner) -> LayerAlignment | None:
        """Record ``recovered``'s squared error against theta in block, in every view the inputs allow
        (``scored``/``base_aligned`` equal ``raw`` outside the layers or without an aligner); returns
        the fit of ``recovered`` to theta (None when nothing was aligned)."""
        views = self.err.setdefault(key, {view: {} for view in self.VIEWS})
        views["raw"][block] = _squared_error(recovered, truth)
        fit = None
        if aligner is not None and layer is not None:
            fit = aligner.fit(layer, truth, recovered)
            views["scored"][block] = _squared_error(aligner.apply(fit.transform, recovered), truth)
            if base_t is not None:
                to_base = aligner.fit(layer, base_t, recovered)
                views["base_aligned"][block] = _squared_error(aligner.apply(to_base.transform, recovered), truth)
        else:
            views["scored"][block] = views["raw"][block]
            if base_t is not None:
                views["base_aligned"][block] = views["raw"][block]
        return fit

    def result(self, key) -> dict:
        """``key``'s relative errors: {"weights_error": {view: {"overall", "blocks"}}, "task_vector_error":
        the same over the task vector, or None without a base}."""
        out = {"weights_error": {}, "task_vector_error": {} if self.task else None}
        for view, blocks in self.err[key].items():
            if not blocks:
                continue
            out["weights_error"][view] = _relative_errors(blocks, self.norm)
            if self.task:
                out["task_vector_error"][view] = _relative_errors(blocks, self.task)
        return out


def _squared_error(x: dict, y: dict) -> float:
    return sum(float((x[n].to(F64) - y[n]).square().sum()) for n in y)


def _relative_errors(errors: dict[str, float], norms: dict[str, float]) -> dict:
    blocks = {block: (math.sqrt(e / norms[block]) if norms.get(block) else (0.0 if e == 0 else math.inf)) for block, e in errors.items()}
    total_norm = sum(norms[b] for b in errors)
    overall = math.sqrt(sum(errors.values()) / total_norm) if total_norm else 0.0
    return {"overall": overall, "blocks": blocks}


def mean_entries(entries: list[dict]) -> dict:
    """Element-wise mean of nested dicts of numbers (the single-copy row)."""
    first = entries[0]
    if isinstance(first, dict):
        return {key: mean_entries([e[key] for e in entries]) for key in first if all(isinstance(e, dict) and key in e for e in entries)}
    if first is None:
        return None
    return float(np.mean(entries))


def logit_scores(true_weights, models, config, sequences: int, length: int, seed: int) -> dict:
    """Top-1 agreement and mean KL(theta || model) on random token sequences (no alignment needed:
    every copy and every aligned combination computes a function close to theta's)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model is noise here
    try:
        with torch.no_grad():
            return _compare_logits(true_weights, models, config, sequences, length, seed)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _compare_logits(true_weights, models, config, sequences: int, length: int, seed: int) -> dict:
    from transformers import AutoModelForCausalLM

    generator = torch.Generator().manual_seed(seed)
    vocab = int(config.vocab_size)
    length = min(length, int(getattr(config, "max_position_embeddings", length) or length))
    tokens = torch.randint(0, vocab, (sequences, length), generator=generator)

    def log_probs(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        logits = torch.cat([model(input_ids=batch).logits.to(F64) for batch in tokens.split(8)])
        return torch.log_softmax(logits, dim=-1)

    ref = log_probs(true_weights)
    ref_top = ref.argmax(-1)
    results = {}
    for name, path in models:
        other = log_probs(path)
        kl = (ref.exp() * (ref - other)).sum(-1)
        results[name] = {"top1_agreement": float((other.argmax(-1) == ref_top).double().mean()), "mean_kl": float(kl.mean()),
                         "max_kl": float(kl.max())}
    return results


def scorer_agreement(fits, to_theta_1, to_theta_k) -> dict:
    """How often the client's copy-k -> copy-1 matching equals the one implied by the scorer's
    alignments of both copies to theta (FFN units and KV groups)."""
    ffn, kv = [], []
    for layer, fit in fits.items():
        t, v1, vk = fit.transform, to_theta_1.get(layer), to_theta_k.get(layer)
        if v1 is None or vk is None:
            continue
        if t.ffn_perm is not None and v1.transform.ffn_perm is not None and vk.transform.ffn_perm is not None:
            implied = vk.transform.ffn_perm[torch.argsort(v1.transform.ffn_perm)]
            ffn.append(float((implied == t.ffn_perm).double().mean()))
        if t.kv_perm is not None and v1.transform.kv_perm is not None and vk.transform.kv_perm is not None:
            implied = vk.transform.kv_perm[torch.argsort(v1.transform.kv_perm)]
            kv.append(float((implied == t.kv_perm).double().mean()))
    return {"ffn_units": float(np.mean(ffn)) if ffn else None, "kv_groups": float(np.mean(kv)) if kv else None}


def summarise(report: dict) -> dict:
    """The headline of a scored report: the best client attack (the oracle excluded) by scored error
    (over the task vector when there is a base), against a single copy's error and top-1 agreement."""
    attacks = {name: entry for name, entry in report["attacks"].items() if name != SINGLE}
    has_task = report["attacks"][SINGLE].get("task_vector_error") is not None
    metric = "task_vector_error" if has_task else "weights_error"
    single = report["attacks"][SINGLE][metric]["scored"]["overall"]
    client_attacks = {name: e for name, e in attacks.items() if "oracle" not in name}
    best = min(client_attacks, key=lambda name: client_attacks[name][metric]["scored"]["overall"])
    best_err = client_attacks[best][metric]["scored"]["overall"]
    return {
        "metric": f"{metric} (scored)",
        "single_copy": single,
        "best_attack": best,
        "best_error": best_err,
        "best_over_single_copy": best_err / single if single else None,
        "best_top1_agreement": client_attacks[best]["logits"]["top1_agreement"],
        "single_copy_top1_agreement": report["attacks"][SINGLE]["logits"]["top1_agreement"],
    }
