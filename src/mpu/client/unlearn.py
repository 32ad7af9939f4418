"""``mpu client unlearn``: run one unlearning method on each published copy, independently."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpu.client.inbox import MANIFEST, Publication, PublishedCopy, read_publication
from mpu.errors import InputError, MPUError
from mpu.client.update import loss_summary, write_dense_update, write_lora_update
from mpu.methods import TrainingOptions, run_unlearning
from mpu.methods.run import frozen_gc

log = logging.getLogger(__name__)


@dataclass
class CopyResult:
    copy_id: int
    out_dir: Path
    steps: int
    seconds: float
    loss: dict


def unlearn_copies(
    inbox: str | Path,
    forget_rows: list[dict],
    retain_rows: list[dict] | None,
    method: str,
    hparams,
    training: TrainingOptions,
    out_dir: str | Path,
    copy_ids: list[int] | None = None,
    return_lora: bool = False,
    reference_inbox: str | Path | None = None,
) -> list[CopyResult]:
    """Train each selected copy of the publication in ``inbox`` and write its update under ``out_dir``.

    ``reference_inbox``: an earlier publication of the same run (normally round 1's). Reference-model
    methods then compare copy k with copy k *as received in that round* instead of with this round's
    copy, so the reference stays fixed across rounds as in noise-free unlearning, where it is the
    original model. Without it, every round's reference is that round's copy and multi-round methods
    (DPO, NPO with R > 1) keep pushing away from a moving reference.
    """
    publication = read_publication(inbox)
    references = _reference_publication(reference_inbox, publication) if reference_inbox is not None else None
    results = []
    with frozen_gc():
        for copy in publication.select(copy_ids):
            results.append(_unlearn_one(publication, copy, forget_rows, retain_rows, method, hparams, training, Path(out_dir), return_lora, references))
    return results


_TOKENIZERS: dict[str, object] = {}  # sha256 of a copy's non-weight files -> its tokenizer


def _tokenizer(copy_dir: Path):
    """The copy's tokenizer, one object for all copies and rounds that ship the same tokenizer files, so
    that the rows are encoded once per run instead of once per copy and round (``encode_rows`` caches
    per tokenizer object)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in copy_dir.iterdir() if p.is_file() and not p.name.endswith((".safetensors", ".safetensors.index.json"))):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    key = digest.hexdigest()
    if key not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 4:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(copy_dir)
    return _TOKENIZERS[key]


def _reference_publication(reference_inbox, publication) -> Publication:
    references = read_publication(reference_inbox)
    manifest = references.inbox / MANIFEST
    if references.manifest.get("architecture") != publication.manifest.get("architecture"):
        raise InputError(manifest, f"reference publication is a {references.manifest.get('architecture')} model, "
                                   f"this round's copies are {publication.manifest.get('architecture')}")
    if references.round > publication.round:
        raise InputError(manifest, f"reference publication is from round {references.round}, after this round ({publication.round})")
    return references


def _load_reference(references: Publication, copy: PublishedCopy, model) -> torch.nn.Module:
    (reference_copy,) = references.select([copy.id])
    reference_copy.verify()
    reference = AutoModelForCausalLM.from_pretrained(reference_copy.path, dtype=torch.float32)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if {name: tuple(p.shape) for name, p in reference.named_parameters()} != shapes:
        raise InputError(reference_copy.path, f"reference copy {copy.id} does not have the parameters (names, shapes) of copy {copy.id} in {copy.path.parent}")
    return reference


def _unlearn_one(publication, copy: PublishedCopy, forget_rows, retain_rows, method, hparams, training, out_dir, return_lora,
                 references: Publication | None = None) -> CopyResult:
    copy.verify()
    model = AutoModelForCausalLM.from_pretrained(copy.path, dtype=torch.float32)
    tokenizer = _tokenizer(copy.path)
    copy_training = replace(training, seed=copy_seed(training.seed, publication.round, copy.id))
    reference = (lambda: _load_reference(references, copy, model)) if references is not None else None
    with tempfile.TemporaryDirectory(prefix="mpu-client-") as scratch:
        result = run_unlearning(model, tokenizer, forget_rows, retain_rows, method, hparams, copy_training, scratch, reference)
    target = out_dir / f"update-{copy.id}"
    manifest = {
        "round": publication.round,
        "reference_round": references.round if references is not None else publication.round,
        "publication_id": publication.publication_id,
        "copy_id": copy.id,
        "copy_sha256": copy.sha256,
        "method": method,
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "loss": loss_summary(result.losses),
    }
    if is_main_process():
        if return_lora:
            if not result.lora_factors:
                raise MPUError("--return-lora needs --lora-rank > 0")
            write_lora_update(result.lora_factors, target, manifest)
        else:
            write_dense_update(model, copy.path, target, manifest)
        log.info("copy %d: %d steps, loss %s -> %s, wrote %s", copy.id, result.steps, manifest["loss"]["first"], manifest["loss"]["last"], target)
    return CopyResult(copy.id, target, result.steps, result.seconds, manifest["loss"])


ROUND_SEED_STRIDE = 1000  # seeds of one round: seed + round offset + copy id (1..m), distinct across rounds for m <= 1000


def copy_seed(seed: int, round_number: int, copy_id: int) -> int:
    """The training seed of copy ``copy_id`` in round ``round_number``: its data order, retain pairing
    and dropout. Each copy is an independent job, so copies differ. Rounds differ too: a new
    ``train()`` with the same seed would replay round 1's batches every round, whereas the noise-free
    baseline's R·E epochs each see a fresh shuffle and fresh retain pairs."""
    return seed + ROUND_SEED_STRIDE * (round_number - 1) + copy_id


def is_main_process() -> bool:
    """Under torchrun/accelerate every rank trains; only rank 0 writes the update."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
