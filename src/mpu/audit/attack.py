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
The scoring itself is in ``scoring.py``.

Memory: one layer group of the m copies at a time, plus the recovered models written to a scratch
folder (needed for the logit comparison).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from mpu.audit.align import Aligner, LayerAlignment
from mpu.audit.alphas import AlphaEstimate, combined_noise_std, estimate_alphas, harmonic_weights, optimal_weights
from mpu.audit.scoring import SINGLE, Scores, logit_scores, mean_entries, scorer_agreement, summarise
from mpu.checkpoint import CheckpointReader, ShardedWriter, copy_model_files, layer_groups
from mpu.client.inbox import Publication, PublishedCopy, read_publication
from mpu.errors import InputError, MPUError
from mpu.protocol import PUBLICATION_MANIFEST

log = logging.getLogger(__name__)

F64 = torch.float64
FORMAT = "mpu-audit/2"  # /2: true_weights, public_schedule, anchor_copy, harmonic-public (were reference*)


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


@dataclass
class _Published:
    """The publication under audit, opened: its copies sorted by id, one reader per copy (same order),
    the model config and the layer groups every pass walks through (one group of tensors at a time)."""

    publication: Publication
    copies: list[PublishedCopy]
    readers: list[CheckpointReader]
    config: object  # transformers.PretrainedConfig of copy 1
    groups: list[tuple[int | None, list[str]]]

    @property
    def m(self) -> int:
        return len(self.copies)

    def read(self, group: list[str]) -> list[dict[str, torch.Tensor]]:
        """Every copy's tensors of one group, float64, in copy order."""
        return [_read(reader, group) for reader in self.readers]


@dataclass
class _Alignment:
    """What a client learns by aligning every copy to copy 1: the ``aligner`` (None when the
    architecture has none or alignment is off, ``note`` says which) and, per copy id (2..m) and
    layer, the fitted map from that copy's coordinates to copy 1's."""

    aligner: Aligner | None
    note: str
    fits: dict[int, dict[int, LayerAlignment]]

    def apply(self, layer: int | None, tensors: list[dict], copies: list[PublishedCopy]) -> list[dict[str, torch.Tensor]]:
        """The copies' tensors of one group in copy 1's coordinates (unchanged outside the layers)."""
        if self.aligner is None or layer is None:
            return tensors
        return [tensors[0]] + [self.aligner.apply(self.fits[copy.id][layer].transform, t) for copy, t in zip(copies[1:], tensors[1:])]


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
    fewer than 2 copies, MPUError when both ``true_weights`` and ``reference`` are given or
    ``oracle_alphas`` does not hold one alpha per copy, and whatever ``PublishedCopy.verify`` refuses
    when ``verify``."""
    if reference is not None:
        if true_weights is not None:
            raise MPUError("give true_weights, not also its old name reference")
        true_weights = reference
    published = _open_publication(inbox, verify)
    # The scorers' checkpoints must match copy 1 tensor for tensor; theta is never shown to the attacks.
    theta = _open_scorer(true_weights, published.readers[0], "true weights") if true_weights else None
    base_reader = _open_scorer(base, published.readers[0], "base") if base else None

    # Pass 1 (client side): align the copies, measure their pairwise distances, estimate alpha.
    alignment = _client_alignment(published.config, align, published.copies)
    dist_raw, dist_aligned = _align_copies(published, alignment, progress)
    est_raw, est_aligned = estimate_alphas(dist_raw), estimate_alphas(dist_aligned)
    attacks = _attacks(published.m, est_raw, est_aligned, alignment.aligner is not None, oracle_alphas, oracle_tau)

    # Pass 2: combine, write the recovered models (the logit comparison loads them), score them.
    with _scratch_folder(keep_recovered) as scratch:
        scores, scorer_fits = _recover_and_score(published, alignment, attacks, theta, base_reader, scratch, progress)
        logits = {}
        if theta is not None:
            models = [(a.name, scratch / a.name) for a in attacks] + [(f"copy-{c.id}", c.path) for c in published.copies]
            logits = logit_scores(true_weights, models, published.config, logit_sequences, logit_length, seed)

    report = {
        **_header_json(inbox, published, true_weights, base, scored=theta is not None),
        "alphas": _alphas_json(published.m, est_raw, est_aligned if alignment.aligner else None, oracle_alphas, oracle_tau),
        "alignment": _alignment_json(alignment.aligner, alignment.note, alignment.fits, scorer_fits if theta else None, published.copies),
        "attacks": _attack_entries(attacks, scores if theta else None, logits, oracle_alphas, oracle_tau),
    }
    if theta is not None:
        report["attacks"][SINGLE] = _single_copy_entry(published.copies, scores, logits)
        report["summary"] = summarise(report)
    return AuditResult(_finite(report), alignment.fits, Path(keep_recovered) if keep_recovered else None)


# Steps of run_audit ------------------------------------------------------------------------------


def _open_publication(inbox: str | Path, verify: bool) -> _Published:
    """Read the manifest, check there is something to combine (m >= 2), verify every copy's hashes
    (when asked) and that all copies hold the same tensor names and shapes as copy 1."""
    publication = read_publication(inbox)
    copies = sorted(publication.copies, key=lambda c: c.id)
    if len(copies) < 2:
        raise InputError(Path(inbox) / PUBLICATION_MANIFEST, f"needs at least 2 copies, the manifest lists {len(copies)}")
    if verify:
        for copy in copies:
            copy.verify()
    readers = [CheckpointReader(copy.path) for copy in copies]
    for copy, reader in zip(copies[1:], readers[1:]):
        _check_same(readers[0], reader, copy.path)
    config = AutoConfig.from_pretrained(copies[0].path)
    return _Published(publication, copies, readers, config, layer_groups(readers[0].names()))


def _client_alignment(config, align: bool, copies: list[PublishedCopy]) -> _Alignment:
    """An empty alignment (no fits yet); without an aligner the aligned attacks are skipped, and the
    note (the architecture's refusal, or "switched off") goes into the report."""
    aligner, note = None, ""
    if align:
        try:
            aligner = Aligner(config)
        except MPUError as err:
            note = str(err)
            log.warning("%s; the aligned attacks are skipped", err)
    else:
        note = "alignment switched off"
    return _Alignment(aligner, note, {copy.id: {} for copy in copies[1:]})


def _align_copies(published: _Published, alignment: _Alignment, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fit every copy's map to copy 1, layer by layer (filling ``alignment.fits``), and sum the
    pairwise squared distances between the copies, as published and once aligned: two [m, m] arrays,
    the input of the alpha estimate."""
    copies, m = published.copies, published.m
    dist_raw, dist_aligned = np.zeros((m, m)), np.zeros((m, m))
    for layer, group in tqdm(published.groups, desc="audit: align", disable=not progress):
        tensors = published.read(group)
        if alignment.aligner is not None and layer is not None:
            for k in range(1, m):
                alignment.fits[copies[k].id][layer] = alignment.aligner.fit(layer, tensors[0], tensors[k])
        _add_distances(dist_raw, tensors)
        _add_distances(dist_aligned, alignment.apply(layer, tensors, copies))
    return dist_raw, dist_aligned


def _attacks(m: int, est_raw: AlphaEstimate, est_aligned: AlphaEstimate, can_align: bool,
             oracle_alphas: list[float] | None, oracle_tau: float) -> list[Attack]:
    """The attacks, in report order: the three weightings on the copies as published, the same on the
    aligned copies (when an aligner exists), and the scorer's oracle (when the true alphas are given)."""
    alpha_public = public_alphas(m)
    attacks = [
        Attack("average", False, "equal", [1.0 / m] * m),
        Attack("harmonic-public", False, "public", harmonic_weights(alpha_public), alpha_public),
        _estimated_attack("harmonic-estimated", False, est_raw, m),
    ]
    if not can_align:
        return attacks
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
    return attacks


@contextmanager
def _scratch_folder(keep: str | Path | None) -> Iterator[Path]:
    """Where the recovered models are written: ``keep`` (created, left in place) or a temporary
    folder removed on exit."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="mpu-audit-") as tmp:
        yield Path(tmp)


def _recover_and_score(published: _Published, alignment: _Alignment, attacks: list[Attack], theta, base_reader,
                       scratch: Path, progress: bool) -> tuple[Scores, dict[int, dict[int, LayerAlignment]]]:
    """Combine the copies with every attack's weights group by group, write each recovered model to
    ``scratch/<attack>`` (float32, copy 1's config), and, when theta is given, score every attack and
    every single copy. Returns the scores and the scorer's fits of each copy to theta (copy id ->
    layer -> fit; empty without theta)."""
    copies = published.copies
    for attack in attacks:   # a kept folder's earlier model would leave its shards beside the new ones
        shutil.rmtree(scratch / attack.name, ignore_errors=True)
    writers = {attack.name: ShardedWriter(scratch / attack.name) for attack in attacks}
    scores = Scores()
    scorer_fits: dict[int, dict[int, LayerAlignment]] = {copy.id: {} for copy in copies}
    for layer, group in tqdm(published.groups, desc="audit: attack", disable=not progress):
        tensors = published.read(group)
        aligned = alignment.apply(layer, tensors, copies)
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
                scores.add(attack.name, block, layer, recovered, truth, base_t, alignment.aligner)
        if truth is not None:
            for k, copy in enumerate(copies):
                fit = scores.add(f"copy-{copy.id}", block, layer, tensors[k], truth, base_t, alignment.aligner)
                if fit is not None:
                    scorer_fits[copy.id][layer] = fit
    for attack in attacks:
        writers[attack.name].finish()
        copy_model_files(copies[0].path, scratch / attack.name, {"dtype": "float32"})
    return scores, scorer_fits


def _header_json(inbox, published: _Published, true_weights, base, scored: bool) -> dict:
    """The report's first keys: what was audited (format tag, inbox, round, copy ids, architecture,
    dtype) and against what (the scorers' paths, or None)."""
    return {
        "format": FORMAT,
        "inbox": str(inbox),
        "round": published.publication.round,
        "copies": [copy.id for copy in published.copies],
        "architecture": published.publication.manifest.architecture,
        "dtype": published.publication.manifest.dtype,
        "true_weights": str(true_weights) if true_weights else None,
        "base": str(base) if base else None,
        "scored": scored,
    }


def _alphas_json(m: int, est_raw: AlphaEstimate, est_aligned: AlphaEstimate | None, oracle_alphas, oracle_tau: float) -> dict:
    """The alpha schedules the attacks used: public, estimated from the distances (aligned: None
    without an aligner) and the scorer's oracle (None unless given)."""
    return {
        "public_schedule": public_alphas(m),
        "estimated_unaligned": _alpha_json(est_raw),
        "estimated_aligned": _alpha_json(est_aligned) if est_aligned is not None else None,
        "oracle": {"alphas": list(oracle_alphas), "tau": oracle_tau} if oracle_alphas is not None else None,
    }


def _attack_entries(attacks: list[Attack], scores: Scores | None, logits: dict, oracle_alphas, oracle_tau: float) -> dict:
    """The report's row per attack: its weights and alphas, the oracle's expected noise (in units of
    sigma), and, when scored (``scores`` given), its errors and logit agreement."""
    entries = {}
    for attack in attacks:
        entry = {"aligned": attack.aligned, "weights": attack.weights, "alphas": attack.alphas}
        if attack.note:
            entry["note"] = attack.note
        if attack.rule == "oracle":
            entry["expected_noise_std_in_sigma"] = combined_noise_std(attack.weights, oracle_alphas, oracle_tau)
        if scores is not None:
            entry.update(scores.result(attack.name))
            entry["logits"] = logits[attack.name]
        entries[attack.name] = entry
    return entries


def _single_copy_entry(copies: list[PublishedCopy], scores: Scores, logits: dict) -> dict:
    """The scale every attack is read against: each copy scored alone, and their mean."""
    per_copy = {str(copy.id): {**scores.result(f"copy-{copy.id}"), "logits": logits[f"copy-{copy.id}"]} for copy in copies}
    return {**mean_entries(list(per_copy.values())), "per_copy": per_copy,
            "note": "a single copy, for scale (mean over the copies)"}


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


def _add_distances(total: np.ndarray, tensors: list[dict[str, torch.Tensor]]) -> None:
    m = len(tensors)
    for i in range(m):
        for j in range(i + 1, m):
            value = sum(float((tensors[i][n] - tensors[j][n]).square().sum()) for n in tensors[i])
            total[i, j] += value
            total[j, i] += value


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
            entry["agreement_with_scorer"] = scorer_agreement(layers, scorer_fits[copies[0].id], scorer_fits[copy.id])
        out["per_copy"][str(copy.id)] = entry
    return out
