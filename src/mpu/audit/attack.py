"""The audit: run the attacks a curious client could run on one round's published copies, and score them.

Only the copies and the public manifest feed the attacks. ``true_weights`` (theta, the server's model
the attacker tries to reconstruct) and ``base`` (theta_base) are used to score, and ``base`` also for one client-side step (aligning the result to the
public base model, which a client usually has too). Attacks:

- ``average``: the plain mean of the copies;
- ``harmonic-public``: weights 1/alpha_k with the paper's public schedule alpha_k = 1 + (k-1)/(m-1);
- ``harmonic-estimated``: weights 1/alpha_k with alpha estimated from the copies' pairwise distances;
- ``aligned-*``: the same after aligning every copy to copy 1's coordinates (``align.py``);
- ``aligned-oracle`` (only when the true alphas/tau are given, for scoring): the best linear
  combination of the aligned copies, a bound on every attack of this family.

Each result is compared with theta three ways: ``raw`` (as it is: in copy 1's coordinates for the
aligned attacks), ``scored`` (after aligning it to theta with the same alignment code: a scorer's
step that uses theta), and ``base_aligned`` (after aligning it to the public base instead: what a
client can do without theta). Logits need no alignment: every copy computes the same function.

Memory: one layer group of the m copies at a time, plus the recovered models written to a scratch
folder (needed for the logit comparison).
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from mpu.audit.align import Aligner, LayerAlignment
from mpu.audit.alphas import AlphaEstimate, combined_noise_std, estimate_alphas, harmonic_weights, optimal_weights
from mpu.checkpoint import CheckpointReader, ShardedWriter, copy_model_files, layer_groups
from mpu.client.inbox import read_publication
from mpu.errors import InputError, MPUError
from mpu.protocol import PUBLICATION_MANIFEST

log = logging.getLogger(__name__)

F64 = torch.float64
FORMAT = "mpu-audit/2"  # /2: true_weights, public_schedule, anchor_copy, harmonic-public (were reference*)
SINGLE = "single-copy"


@dataclass
class Attack:
    """One attack on the copies: its name, whether it aligns the copies first, and how it weights them
    (``rule``: equal | public | estimated | oracle; ``weights``/``alphas`` per copy where the rule fixes them)."""

    name: str
    aligned: bool
    rule: str  # equal | public | estimated | oracle
    weights: list[float] | None = None
    alphas: list[float] | None = None
    note: str = ""


@dataclass
class AuditResult:
    """The audit's JSON-ready ``report``, the fitted alignments, and the folder of the recovered models (if kept)."""

    report: dict
    # copy id -> layer -> fitted map from that copy's coordinates to copy 1's
    alignments: dict[int, dict[int, LayerAlignment]] = field(default_factory=dict)
    recovered_dir: Path | None = None


def public_alphas(m: int) -> list[float]:
    """The paper's public alpha schedule for m copies: evenly spaced on [1, 2] (m >= 2)."""
    return [1.0 + k / (m - 1) for k in range(m)]


def run_audit(
    inbox: str | Path,
    true_weights: str | Path | None = None,
    base: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    align: bool = True,
    oracle_alphas: list[float] | None = None,
    oracle_tau: float = 0.0,
    logit_sequences: int = 16,
    logit_length: int = 32,
    seed: int = 0,
    keep_recovered: str | Path | None = None,
    verify: bool = True,
    progress: bool = False,
) -> AuditResult:
    """Run every attack a curious client could run on the publication in ``inbox`` and score it
    against ``true_weights`` (theta, the server's model, a checkpoint folder; optional) and ``base``.
    ``reference`` is ``true_weights``' old, deprecated name. Raises InputError naming the manifest for
    fewer than 2 copies, MPUError when both ``true_weights`` and ``reference`` are given, and whatever
    ``PublishedCopy.verify`` refuses when ``verify``."""
    if reference is not None:
        if true_weights is not None:
            raise MPUError("give true_weights, not also its old name reference")
        true_weights = reference
    publication = read_publication(inbox)
    copies = sorted(publication.copies, key=lambda c: c.id)
    m = len(copies)
    if m < 2:
        raise InputError(Path(inbox) / PUBLICATION_MANIFEST, f"needs at least 2 copies, the manifest lists {m}")
    if verify:
        for copy in copies:
            copy.verify()
    readers = [CheckpointReader(copy.path) for copy in copies]
    names = readers[0].names()
    for copy, reader in zip(copies[1:], readers[1:]):
        _check_same(readers[0], reader, copy.path)
    theta = _open_scorer(true_weights, readers[0], "true weights") if true_weights else None
    base_reader = _open_scorer(base, readers[0], "base") if base else None
    config = AutoConfig.from_pretrained(copies[0].path)

    aligner, align_note = None, ""
    if align:
        try:
            aligner = Aligner(config)
        except MPUError as err:
            align_note = str(err)
            log.warning("%s; the aligned attacks are skipped", err)
    else:
        align_note = "alignment switched off"
    groups = layer_groups(names)

    # Pass 1: align every copy to copy 1, layer by layer; pairwise distances, raw and aligned.
    alignments: dict[int, dict[int, LayerAlignment]] = {copy.id: {} for copy in copies[1:]}
    dist_raw, dist_aligned = np.zeros((m, m)), np.zeros((m, m))
    for layer, group in tqdm(groups, desc="audit: align", disable=not progress):
        tensors = [_read(reader, group) for reader in readers]
        if aligner is not None and layer is not None:
            for k in range(1, m):
                alignments[copies[k].id][layer] = aligner.fit(layer, tensors[0], tensors[k])
        aligned = _aligned(aligner, layer, tensors, alignments, copies)
        _add_distances(dist_raw, tensors)
        _add_distances(dist_aligned, aligned)

    alpha_public = public_alphas(m)
    est_raw, est_aligned = estimate_alphas(dist_raw), estimate_alphas(dist_aligned)
    attacks = [
        Attack("average", False, "equal", [1.0 / m] * m),
        Attack("harmonic-public", False, "public", harmonic_weights(alpha_public), alpha_public),
        _estimated_attack("harmonic-estimated", False, est_raw, m),
    ]
    if aligner is not None:
        attacks += [
            Attack("aligned-average", True, "equal", [1.0 / m] * m),
            Attack("aligned-harmonic-public", True, "public", harmonic_weights(alpha_public), alpha_public),
            _estimated_attack("aligned-harmonic-estimated", True, est_aligned, m),
        ]
        if oracle_alphas is not None:
            if len(oracle_alphas) != m:
                raise MPUError(f"give {m} oracle alphas (one per copy), got {len(oracle_alphas)}")
            attacks.append(Attack("aligned-oracle", True, "oracle", optimal_weights(oracle_alphas, oracle_tau), list(oracle_alphas),
                                  note=f"scoring only: best linear combination if the client knew alpha and tau={oracle_tau:g}"))

    scratch_ctx = tempfile.TemporaryDirectory(prefix="mpu-audit-") if keep_recovered is None else None
    scratch = Path(scratch_ctx.name) if scratch_ctx else Path(keep_recovered)
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        writers = {attack.name: ShardedWriter(scratch / attack.name) for attack in attacks}
        scores = _Scores()
        scorer_fits: dict[int, dict[int, LayerAlignment]] = {copy.id: {} for copy in copies}

        # Pass 2: combine, write the recovered models, score them and the single copies.
        for layer, group in tqdm(groups, desc="audit: attack", disable=not progress):
            tensors = [_read(reader, group) for reader in readers]
            aligned = _aligned(aligner, layer, tensors, alignments, copies)
            truth = _read(theta, group) if theta else None
            base_t = _read(base_reader, group) if base_reader else None
            block = f"layer.{layer}" if layer is not None else group[0]
            if truth is not None:
                scores.add_norms(block, truth, base_t)
            for attack in attacks:
                source = aligned if attack.aligned else tensors
                recovered = {name: sum(w * t[name] for w, t in zip(attack.weights, source)) for name in group}
                writers[attack.name].write_shard({name: value.to(torch.float32) for name, value in recovered.items()})
                if truth is not None:
                    scores.add(attack.name, block, layer, recovered, truth, base_t, aligner)
            if truth is not None:
                for k, copy in enumerate(copies):
                    fit = scores.add(f"copy-{copy.id}", block, layer, tensors[k], truth, base_t, aligner)
                    if fit is not None:
                        scorer_fits[copy.id][layer] = fit
        for attack in attacks:
            writers[attack.name].finish()
            copy_model_files(copies[0].path, scratch / attack.name, {"dtype": "float32"})

        logits = {}
        if theta is not None:
            logits = _logit_scores(true_weights, [(a.name, scratch / a.name) for a in attacks] + [(f"copy-{c.id}", c.path) for c in copies],
                                   config, logit_sequences, logit_length, seed)
    finally:
        if scratch_ctx is not None:
            scratch_ctx.cleanup()

    report = {
        "format": FORMAT,
        "inbox": str(inbox),
        "round": publication.round,
        "copies": [copy.id for copy in copies],
        "architecture": publication.manifest.architecture,
        "dtype": publication.manifest.dtype,
        "true_weights": str(true_weights) if true_weights else None,
        "base": str(base) if base else None,
        "scored": theta is not None,
        "alphas": {
            "public_schedule": alpha_public,
            "estimated_unaligned": _alpha_json(est_raw),
            "estimated_aligned": _alpha_json(est_aligned) if aligner else None,
            "oracle": {"alphas": list(oracle_alphas), "tau": oracle_tau} if oracle_alphas is not None else None,
        },
        "alignment": _alignment_json(aligner, align_note, alignments, scorer_fits if theta else None, copies),
        "attacks": {},
    }
    for attack in attacks:
        entry = {"aligned": attack.aligned, "weights": attack.weights, "alphas": attack.alphas}
        if attack.note:
            entry["note"] = attack.note
        if attack.rule == "oracle":
            entry["expected_noise_std_in_sigma"] = combined_noise_std(attack.weights, oracle_alphas, oracle_tau)
        if theta is not None:
            entry.update(scores.result(attack.name))
            entry["logits"] = logits[attack.name]
        report["attacks"][attack.name] = entry
    if theta is not None:
        per_copy = {str(copy.id): {**scores.result(f"copy-{copy.id}"), "logits": logits[f"copy-{copy.id}"]} for copy in copies}
        report["attacks"][SINGLE] = {**_mean_entries(list(per_copy.values())), "per_copy": per_copy,
                                     "note": "a single copy, for scale (mean over the copies)"}
        report["summary"] = _summary(report)
    return AuditResult(_finite(report), alignments, Path(keep_recovered) if keep_recovered else None)


# Pieces ------------------------------------------------------------------------------------------


def _estimated_attack(name: str, aligned: bool, estimate: AlphaEstimate, m: int) -> Attack:
    if estimate.alphas is None:
        return Attack(name, aligned, "estimated", [1.0 / m] * m, None, note=f"{estimate.note}; fell back to equal weights")
    return Attack(name, aligned, "estimated", harmonic_weights(estimate.alphas), estimate.alphas)


def _alpha_json(estimate: AlphaEstimate) -> dict:
    return {"alphas": estimate.alphas, "relative_residual": estimate.relative_residual, "note": estimate.note or None}


def _open_scorer(path, like: CheckpointReader, what: str) -> CheckpointReader:
    reader = CheckpointReader(path)
    _check_same(like, reader, path, what)
    return reader


def _check_same(a: CheckpointReader, b: CheckpointReader, where, what: str = "copy") -> None:
    if set(a.names()) != set(b.names()):
        different = sorted(set(a.names()) ^ set(b.names()))
        raise InputError(where, f"the {what}'s tensors differ from copy 1's: {', '.join(different[:5])}")
    for name in a.names():
        if a.shape(name) != b.shape(name):
            raise InputError(where, f"{what} tensor {name} has shape {b.shape(name)}, copy 1 has {a.shape(name)}")


def _read(reader: CheckpointReader, names: list[str]) -> dict[str, torch.Tensor]:
    return {name: reader.get(name).to(F64) for name in names}


def _aligned(aligner, layer, tensors, alignments, copies) -> list[dict[str, torch.Tensor]]:
    if aligner is None or layer is None:
        return tensors
    return [tensors[0]] + [aligner.apply(alignments[copy.id][layer].transform, t) for copy, t in zip(copies[1:], tensors[1:])]


def _add_distances(total: np.ndarray, tensors: list[dict[str, torch.Tensor]]) -> None:
    m = len(tensors)
    for i in range(m):
        for j in range(i + 1, m):
            value = sum(float((tensors[i][n] - tensors[j][n]).square().sum()) for n in tensors[i])
            total[i, j] += value
            total[j, i] += value


class _Scores:
    """Squared errors per (attack, view, block), and the norms they are divided by."""

    VIEWS = ("raw", "scored", "base_aligned")

    def __init__(self):
        self.norm = {}  # block -> ||theta||^2
        self.task = {}  # block -> ||theta - base||^2
        self.err: dict[str, dict[str, dict[str, float]]] = {}

    def add_norms(self, block, truth, base_t) -> None:
        self.norm[block] = sum(float(t.square().sum()) for t in truth.values())
        if base_t is not None:
            self.task[block] = sum(float((truth[n] - base_t[n]).square().sum()) for n in truth)

    def add(self, key, block, layer, recovered, truth, base_t, aligner) -> LayerAlignment | None:
        views = self.err.setdefault(key, {view: {} for view in self.VIEWS})
        views["raw"][block] = _sq_err(recovered, truth)
        fit = None
        if aligner is not None and layer is not None:
            fit = aligner.fit(layer, truth, recovered)
            views["scored"][block] = _sq_err(aligner.apply(fit.transform, recovered), truth)
            if base_t is not None:
                to_base = aligner.fit(layer, base_t, recovered)
                views["base_aligned"][block] = _sq_err(aligner.apply(to_base.transform, recovered), truth)
        else:
            views["scored"][block] = views["raw"][block]
            if base_t is not None:
                views["base_aligned"][block] = views["raw"][block]
        return fit

    def result(self, key) -> dict:
        out = {"weights_error": {}, "task_vector_error": {} if self.task else None}
        for view, blocks in self.err[key].items():
            if not blocks:
                continue
            out["weights_error"][view] = _relative_errors(blocks, self.norm)
            if self.task:
                out["task_vector_error"][view] = _relative_errors(blocks, self.task)
        return out


def _sq_err(x: dict, y: dict) -> float:
    return sum(float((x[n].to(F64) - y[n]).square().sum()) for n in y)


def _relative_errors(errors: dict[str, float], norms: dict[str, float]) -> dict:
    blocks = {block: (math.sqrt(e / norms[block]) if norms.get(block) else (0.0 if e == 0 else math.inf)) for block, e in errors.items()}
    total_norm = sum(norms[b] for b in errors)
    overall = math.sqrt(sum(errors.values()) / total_norm) if total_norm else 0.0
    return {"overall": overall, "blocks": blocks}


def _mean_entries(entries: list[dict]) -> dict:
    """Element-wise mean of nested dicts of numbers (the single-copy row)."""
    first = entries[0]
    if isinstance(first, dict):
        return {key: _mean_entries([e[key] for e in entries]) for key in first if all(isinstance(e, dict) and key in e for e in entries)}
    if first is None:
        return None
    return float(np.mean(entries))


def _logit_scores(true_weights, models, config, sequences: int, length: int, seed: int) -> dict:
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


def _finite(value):
    """JSON has no inf/NaN: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _alignment_json(aligner, note, alignments, scorer_fits, copies) -> dict:
    if aligner is None:
        return {"available": False, "note": note}
    out = {"available": True, "anchor_copy": copies[0].id, "per_copy": {}}
    for copy in copies[1:]:
        layers = alignments[copy.id]
        entry = {"layers": {str(layer): fit.summary() for layer, fit in sorted(layers.items())}}
        if layers:
            entry["residual_before"] = float(np.mean([fit.residual_before for fit in layers.values()]))
            entry["residual_after"] = float(np.mean([fit.residual_after for fit in layers.values()]))
        if scorer_fits:
            entry["agreement_with_scorer"] = _agreement(layers, scorer_fits[copies[0].id], scorer_fits[copy.id])
        out["per_copy"][str(copy.id)] = entry
    return out


def _agreement(fits, to_theta_1, to_theta_k) -> dict:
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


def _summary(report: dict) -> dict:
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
