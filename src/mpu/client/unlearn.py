"""``mpu client unlearn``: run one unlearning method on each published copy, independently."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpu.client.inbox import PublishedCopy, read_publication
from mpu.errors import MPUError
from mpu.client.update import loss_summary, write_dense_update, write_lora_update
from mpu.methods import TrainingOptions, run_unlearning

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
) -> list[CopyResult]:
    publication = read_publication(inbox)
    results = []
    for copy in publication.select(copy_ids):
        results.append(_unlearn_one(publication, copy, forget_rows, retain_rows, method, hparams, training, Path(out_dir), return_lora))
    return results


def _unlearn_one(publication, copy: PublishedCopy, forget_rows, retain_rows, method, hparams, training, out_dir, return_lora) -> CopyResult:
    copy.verify()
    model = AutoModelForCausalLM.from_pretrained(copy.path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(copy.path)
    # Each copy is an independent job: its own optimizer and its own data order.
    copy_training = replace(training, seed=training.seed + copy.id)
    with tempfile.TemporaryDirectory(prefix="mpu-client-") as scratch:
        result = run_unlearning(model, tokenizer, forget_rows, retain_rows, method, hparams, copy_training, scratch)
    target = out_dir / f"update-{copy.id}"
    manifest = {
        "round": publication.round,
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


def is_main_process() -> bool:
    """Under torchrun/accelerate every rank trains; only rank 0 writes the update."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
