"""One unlearning run as a value: :class:`UnlearnJob`, and :func:`unlearn_model` ("load, unlearn, save").

An ``UnlearnJob`` holds everything a run needs besides the model: the method, its hyperparameters,
the training options, the forget and retain rows and, optionally, the reference model. It is what the
noise-free baseline (``mpu unlearn``, :func:`unlearn_model`) and the MPU client
(:func:`mpu.client.unlearn.unlearn_publication`, one job per copy) run::

    job = UnlearnJob("NPO", {"beta": 0.1}, TrainingConfig(epochs=2), forget_rows, retain_rows)
    result = job.run(model, tokenizer, scratch_dir)        # unlearns ``model`` in place -> UnlearnResult
    unlearn_model("target/", job, "unlearned/")            # load, unlearn, save (the noise-free baseline)

:func:`mpu.methods.run_unlearning` and :func:`mpu.methods.prepare_unlearning` keep their positional
signatures as thin adapters over a job.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import set_seed

from mpu.errors import InputError, MPUError
from mpu.methods.base import METHODS, UnlearnTrainer
from mpu.methods.data import ForgetRetainCollator, ForgetRetainDataset
from mpu.methods.lora import add_lora
from mpu.methods.options import TrainingConfig
from mpu.methods.training import (
    UnlearnResult, _private_steps, _resolve_hparams, _retain_reason, finish_unlearning, frozen_gc, run_max_length,
    run_prompt_format, training_arguments,
)
from mpu.quiet import quiet_transformers

logger = logging.getLogger(__name__)

SUMMARY = "unlearn_summary.json"  # beside the model files that unlearn_model writes: method, settings, steps, losses
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class UnlearnJob:
    """What one unlearning run needs besides the model.

    ``method``: a registered method name (:data:`mpu.methods.METHODS`, matched case-insensitively);
    ``hparams``: the method's hyperparameter dataclass, a dict of overrides of its defaults, or None
    for the defaults; ``training``: the Trainer settings; ``forget_rows``/``retain_rows``: question/answer
    rows (``{"question", "answer", ...}``), the retain rows optional; ``reference``: the frozen
    reference model of reference-model methods (NPO, DPO, UNDIAL, the KL retain term, RMU), a model or a
    callable that loads one, called only when the method needs it (None: a deep copy of the model as
    received); ``dp_runs``: with DP-SGD, how many runs on the same data one epsilon covers (the MPU
    client trains the round's m copies on the same rows, and the server sees all m updates).

    Raises MPUError for an unknown method or hyperparameters that are not the method's, TypeError for
    ``training`` that is not a TrainingConfig, ValueError for ``dp_runs`` below 1.
    """

    method: str
    hparams: Any = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    forget_rows: Sequence[dict[str, Any]] = ()
    retain_rows: Sequence[dict[str, Any]] | None = None
    reference: Any = None  # torch.nn.Module | Callable[[], torch.nn.Module] | None
    dp_runs: int = 1

    def __post_init__(self) -> None:
        METHODS.get(self.method)  # MPUError for an unknown name, before any model is loaded
        if not isinstance(self.training, TrainingConfig):
            raise TypeError(f"training must be TrainingConfig, got {type(self.training).__name__}")
        if not isinstance(self.dp_runs, int) or isinstance(self.dp_runs, bool) or self.dp_runs < 1:
            raise ValueError(f"dp_runs counts runs on the same data, an integer >= 1, got {self.dp_runs!r}")
        _check_retain_apart(self.forget_rows, self.retain_rows)

    def resolved_hparams(self):
        """The validated hyperparameter dataclass of the method (defaults changed by a dict of overrides).
        Raises MPUError for an unknown key, a bad value or a dataclass of another method."""
        return _resolve_hparams(self.method, self.hparams)

    def settings(self) -> dict[str, Any]:
        """The job's settings as JSON-ready data: ``{"method", "hparams", "training"}`` (hyperparameters
        resolved, tuples as lists)."""
        record = {"method": self.method, "hparams": dataclasses.asdict(self.resolved_hparams()),
                  "training": dataclasses.asdict(self.training)}
        return json.loads(json.dumps(record))

    def prepare(self, model: torch.nn.Module, tokenizer, output_dir: str | Path) -> UnlearnTrainer:
        """Everything before ``train()``: the reference model, LoRA, the data, the Trainer (its scratch
        folder ``output_dir``, where nothing is saved). :func:`mpu.methods.training.finish_unlearning` trains.

        Raises MPUError when the method needs retain rows and has none, when no parameter is trainable,
        when the tokenizer has neither a pad nor an EOS token, and for DP-SGD settings the method or the
        launch cannot honour.
        """
        cls = METHODS.get(self.method)
        hp = self.resolved_hparams()
        training = self.training
        retain_rows = list(self.retain_rows or [])
        if cls.needs_retain(hp) and not retain_rows:
            raise MPUError(f"{self.method} needs retain data ({_retain_reason(hp)}); give a retain set (--retain)")
        with_retain = bool(retain_rows) and cls.uses_retain(hp)
        if retain_rows and not with_retain:
            logger.warning("%s: the retain set is not used (%s)", self.method,
                           "the method has no retain term" if cls.retain_use == "none" else "alpha=0")
        elif not retain_rows and cls.uses_retain(hp):
            logger.warning("%s: no retain set, so the retain term (alpha=%s) is left out", self.method, hp.alpha)

        set_seed(training.seed)
        ref_model = self._reference_model(model) if cls.needs_reference(hp, with_retain) else None
        saved = {"requires_grad": {n: p.requires_grad for n, p in model.named_parameters()}, "training": model.training}
        train_model = add_lora(model, training) if training.lora_rank > 0 else model
        cls.prepare_model(train_model, hp)
        if not any(p.requires_grad for p in train_model.parameters()):
            raise MPUError(f"{self.method}: no parameter is trainable")

        pad_id = padding_id(tokenizer)
        dataset = self.dataset(model, tokenizer)
        trainer = cls(model=train_model, args=training_arguments(training, str(output_dir)), train_dataset=dataset,
                      data_collator=ForgetRetainCollator(pad_id), hparams=hp, ref_model=ref_model)
        if training.private:
            trainer.dp = _private_steps(cls, self.method, training, len(dataset), self.dp_runs)
        trainer.mpu_restore = (model, saved)
        return trainer

    def dataset(self, model, tokenizer) -> ForgetRetainDataset:
        """The rows the run trains on, encoded as :meth:`prepare` encodes them: the forget rows, the retain
        rows when the method uses them, the preferred answers of DPO-style methods checked; the run's
        prompt format and ``max_length`` (default: the context of ``model``, anything with a ``config``).
        Encodings are cached per tokenizer, so a later :meth:`prepare` with the same tokenizer reuses them.
        Raises MPUError for a row that does not encode (a chat template that fails, a row too long)."""
        cls = METHODS.get(self.method)
        hp = self.resolved_hparams()
        training = self.training
        retain_rows = list(self.retain_rows or [])
        with_retain = bool(retain_rows) and cls.uses_retain(hp)
        return ForgetRetainDataset(
            tokenizer, self.forget_rows, retain_rows if with_retain else None,
            seed=training.seed, max_length=run_max_length(training, model, tokenizer), with_alternates=cls.uses_alternate,
            prompt_format=run_prompt_format(training, model, tokenizer), truncate=training.truncate,
        )

    def _reference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The frozen reference: the given one (loaded now if it is a callable), else a deep copy of
        ``model`` as received, taken before anything touches it. Only its function matters (logits,
        residual activations)."""
        if self.reference is None:
            return copy.deepcopy(model)
        return self.reference if isinstance(self.reference, torch.nn.Module) else self.reference()

    def run(self, model: torch.nn.Module, tokenizer, output_dir: str | Path) -> UnlearnResult:
        """Unlearn the forget rows from ``model`` in place: :meth:`prepare`, ``train()``, merge LoRA, put
        the model's flags back (:func:`mpu.methods.training.finish_unlearning`). With ``training.lora_rank > 0``
        the adapters are merged into ``model`` and returned as ``lora_factors``. Raises as :meth:`prepare`."""
        with frozen_gc():
            return finish_unlearning(self.prepare(model, tokenizer, output_dir))


def _check_retain_apart(forget_rows, retain_rows) -> None:
    """Refuse a retain set made of the forget set's rows (the same file given twice: the retain term then
    undoes the forgetting, and the run returned an update that changed nothing, without a word); warn
    about retain rows that are also forget rows. Rows are compared by question and answer."""
    if not forget_rows or not retain_rows:
        return
    pair = lambda row: (str(row.get("question", "")), str(row.get("answer", "")))
    forget = {pair(row) for row in forget_rows}
    shared = sum(1 for row in retain_rows if pair(row) in forget)
    if shared == len(retain_rows):
        raise MPUError(f"every one of the {len(retain_rows)} retain rows is also a forget row (the same file twice?): "
                       "the retain term would undo the forgetting; give rows the model must keep")
    if shared:
        logger.warning("%d of the %d retain rows are also forget rows: the retain term works against forgetting them",
                    shared, len(retain_rows))


def padding_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS. Raises MPUError when it has neither."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise MPUError("the tokenizer has neither a pad nor an EOS token")
    return pad_id


def load_model_and_tokenizer(path: str | Path, dtype: str = "float32"):
    """The causal LM and tokenizer of the Hugging Face folder ``path``, the model in ``dtype`` (one of
    ``DTYPES``; ``auto``: the checkpoint's). Raises InputError naming ``path`` for a folder without
    ``config.json`` or one transformers cannot load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(path, "not a Hugging Face model directory (no config.json)")
    try:
        with quiet_transformers():   # the caller reports the step; transformers' warnings stay
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot load the model or its tokenizer ({err})") from None
    return model, tokenizer


def unlearn_model(model_dir: str | Path, job: UnlearnJob, out_dir: str | Path, *, dtype: str = "float32",
                  summary: dict[str, Any] | None = None) -> UnlearnResult:
    """The noise-free baseline: load the model in ``model_dir``, run ``job`` on it, save it to ``out_dir``.

    ``out_dir`` is written in a sibling temporary folder and renamed, so it is complete or absent; an
    existing ``out_dir`` is replaced (callers refuse it first if they must). It holds the weights,
    config and tokenizer (:func:`mpu.checkpoint.save_model`: nothing of ``model_dir``'s own metadata)
    and, when ``summary`` is given, ``unlearn_summary.json``: the job's settings, ``summary``'s entries,
    the row counts, steps, training seconds, losses and the encoding. Under torchrun every process
    trains and only the main one writes. ``dtype``: the dtype to load and train in (``DTYPES``).
    Raises InputError for a model folder that cannot be loaded, and as :meth:`UnlearnJob.prepare`.
    """
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype)
    with tempfile.TemporaryDirectory(prefix="mpu-unlearn-") as scratch:
        result = job.run(model, tokenizer, scratch)
    if not result.is_main_process:
        return result
    record = None
    if summary is not None:
        record = {**job.settings(), **summary, "forget_rows": len(job.forget_rows),
                  "retain_rows": len(job.retain_rows) if job.retain_rows else 0, "steps": result.steps,
                  "seconds": round(result.seconds, 3), "encoding": result.encoding,
                  "losses": [loss if math.isfinite(loss) else None for loss in result.losses]}   # JSON has no NaN
    save_unlearned(model, tokenizer, Path(out_dir), record)
    return result


def save_unlearned(model, tokenizer, out: Path, summary: dict[str, Any] | None = None) -> None:
    """Write ``model`` and ``tokenizer`` (and ``summary`` as ``unlearn_summary.json``) to ``out`` through a
    sibling temporary folder and a rename, replacing an existing ``out``; on any error nothing is left."""
    from mpu.checkpoint import save_model

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with quiet_transformers():   # no "Writing model shards" bar: the caller reports the saved model
            save_model(model, tokenizer, tmp)   # only the allow-listed model files: no metadata of the source
        if summary is not None:
            (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
