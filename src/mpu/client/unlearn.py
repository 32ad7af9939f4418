"""``mpu client unlearn``: run one unlearning job on each published copy, independently.

:func:`unlearn_publication` takes an :class:`mpu.methods.UnlearnJob` (method, hyperparameters,
training options, forget and retain rows) and trains every selected copy of a publication with its own
run of it; :func:`unlearn_copies` is the positional form of the same call.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mpu.checkpoint import read_json
from mpu.checkpoint.files import MAX_MANIFEST_BYTES, check_output
from mpu.checkpoint.received import remove_leftovers, shown_bytes
from mpu.client.inbox import RECEIVED_INBOX, Publication, PublishedCopy, read_publication
from mpu.client.launch import copy_sharing, is_main_process
from mpu.client.update import loss_summary, write_dense_update, write_lora_update
from mpu.data.isolated import first_line, is_other_partys, load_other_partys, moved_other_partys
from mpu.data.qa import QACollator
from mpu.errors import InputError, MPUError
from mpu.methods import TrainingConfig
from mpu.methods.job import UnlearnJob, padding_id
from mpu.methods.memory import physical_memory_bytes, processes_sharing_memory
from mpu.methods.training import frozen_gc
from mpu.protocol import PUBLICATION_MANIFEST, UPDATE_MANIFEST, UpdateManifest, update_folder
from mpu.quiet import quiet_transformers

log = logging.getLogger(__name__)


@dataclass
class CopyResult:
    """One copy's training: its 1-based id, the update folder, optimizer steps, wall seconds, the loss summary."""

    copy_id: int
    out_dir: Path
    steps: int
    seconds: float
    loss: dict
    skipped: bool = False  # --resume found this copy's update already finished


def unlearn_publication(inbox: str | Path, job: UnlearnJob, out_dir: str | Path, *, copy_ids: list[int] | None = None,
                        return_lora: bool = False, reference_model_inbox: str | Path | None = None, overwrite: bool = False,
                        resume: bool = False, private: bool = True) -> list[CopyResult]:
    """Run ``job`` on each selected copy of the publication in ``inbox`` and write its update under ``out_dir``.

    Each copy is an independent run of ``job``: its own training seed (:func:`copy_seed`), DP-SGD's
    epsilon counted over the round's m copies, and ``job.reference`` replaced by the copy's reference
    model (below). ``copy_ids``: the 1-based copies to train (default: all). ``return_lora``: return the
    LoRA factors instead of the dense Delta' (needs ``training.lora_rank > 0``).

    ``reference_model_inbox``: an earlier publication of the same run (normally round 1's). Reference-model
    methods then compare copy k with copy k *as received in that round* instead of with this round's
    copy, so the reference stays fixed across rounds as in noise-free unlearning, where it is the
    original model. Without it, every round's reference is that round's copy and multi-round methods
    (DPO, NPO with R > 1) keep pushing away from a moving reference.

    An existing ``update-K`` folder is refused (InputError) unless ``overwrite``; with ``resume`` a
    copy whose finished update is for this publication, method and settings is skipped. Every copy
    (and reference-model copy) is checked before anything is loaded or trained (``PublishedCopy.verify``),
    and then again on a private copy of it (``private``, :meth:`Publication.received`: a folder in
    :func:`private_folder`, removed at the end; the server cannot change a file between its check and
    its load) unless the caller wrote the inbox itself (``private=False``: ``mpu run``, the Flower client),
    and every copy's tokenizer and chat template must encode the job's rows (:func:`check_encoding`)
    before the first copy trains; a hostile publication raises InputError naming the file, with
    nothing written. Returns one result per selected copy, in copy order.
    """
    if private:   # a killed run's copy is as large as a publication: gone before anything can be refused
        remove_leftovers(private_folder(), RECEIVED_INBOX)
    publication = read_publication(inbox)
    references = _reference_publication(reference_model_inbox, publication) if reference_model_inbox is not None else None
    if references is None and publication.round > 1 and _uses_reference(job):
        log.warning("%s compares with a reference model, and this is round %d: without --reference-model-inbox (round 1's "
                    "publication) the reference is this round's copy, already partly unlearned, so the method "
                    "forgets less than noise-free unlearning would", job.method, publication.round)
    settings = update_settings(job, return_lora)
    out_dir = Path(out_dir)
    # the returns next to the publication, never in it (an update-K inside copy-1 was written and returned)
    check_output(out_dir, keep=[publication.inbox] + ([references.inbox] if references is not None else []), replace=True)
    results, todo = [], []
    for copy in publication.select(copy_ids):
        finished = _existing_update(out_dir / update_folder(copy.id), publication, copy, settings, overwrite=overwrite, resume=resume)
        if finished is not None:
            results.append(finished)
        else:
            todo.append(copy)
    if not todo:
        return sorted(results, key=lambda result: result.copy_id)
    # every check on the received files first: nothing is copied of a publication that is refused
    limit = memory_limit(references is not None and _uses_reference(job))
    _verified(publication, todo, references, limit)
    with ExitStack() as received:
        if private:   # check again and train a copy of our own: the server cannot swap a file after its check
            ids, parent, sharing = [copy.id for copy in todo], private_folder(), copy_sharing()
            publication = received.enter_context(publication.received(todo, parent, sharing))
            todo = publication.select(ids)
            if references is not None:
                references = received.enter_context(references.received(references.select(ids), parent, sharing))
            _verified(publication, todo, references, limit)
        with frozen_gc(), once_per_run("mpu.methods"):   # a warning about the job (no retain set, ...) once, not once per copy
            for copy in todo:   # a copy refused for its tokenizer, template or model stops the run before any copy trains
                check_model(copy, check_encoding(copy, job), references, _uses_reference(job))
            for copy in todo:
                results.append(_unlearn_one(publication, copy, job, out_dir, return_lora, references, settings))
    return sorted(results, key=lambda result: result.copy_id)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def copy_line(copy_id: int, steps: int, seconds: float, loss: dict, target: Path) -> str:
    """The one line that reports a trained copy: steps, seconds, first and last loss to 4 significant
    digits, the update folder. E.g. ``copy 1: 5 steps in 2.3 s, loss 13.94 -> 1.262; wrote U/update-1``."""
    return (f"copy {copy_id}: {steps} step{'' if steps == 1 else 's'} in {seconds:.1f} s, "
            f"loss {_number(loss.get('first'))} -> {_number(loss.get('last'))}; wrote {target}")


class _Once(logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextmanager
def once_per_run(logger_name: str):
    """Within the block, a message of logger ``logger_name`` (or a logger below it) that repeats word for
    word is logged once: every copy runs the same job, so its warnings would otherwise come m times."""
    once = _Once()
    loggers = [logging.getLogger(logger_name)] + [logger for name, logger in logging.Logger.manager.loggerDict.items()
                                                  if name.startswith(logger_name + ".") and isinstance(logger, logging.Logger)]
    for logger in loggers:
        logger.addFilter(once)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(once)


def unlearn_copies(inbox: str | Path, forget_rows: list[dict], retain_rows: list[dict] | None, method: str, hparams,
                   training: TrainingConfig, out_dir: str | Path, copy_ids: list[int] | None = None, return_lora: bool = False,
                   reference_model_inbox: str | Path | None = None, *, overwrite: bool = False, resume: bool = False,
                   private: bool = True) -> list[CopyResult]:
    """The positional form of :func:`unlearn_publication`, kept for its callers: the job is
    ``UnlearnJob(method, hparams, training, forget_rows, retain_rows)``."""
    job = UnlearnJob(method, hparams, training, forget_rows, retain_rows)
    return unlearn_publication(inbox, job, out_dir, copy_ids=copy_ids, return_lora=return_lora, reference_model_inbox=reference_model_inbox,
                               overwrite=overwrite, resume=resume, private=private)


# Training options that do not change the update (only its logging, speed or memory), left out of the
# settings that --resume and the server's aggregate compare; the seed differs per copy by design.
UNCOMPARED_TRAINING = ("seed", "progress_bar", "logging_steps", "gradient_checkpointing")


def update_settings(job: UnlearnJob, return_lora: bool = False) -> dict:
    """What an update records of how it was trained, as the manifest will hold it: ``method``,
    ``hparams`` (resolved), ``training`` (without ``UNCOMPARED_TRAINING``) and ``kind`` (full | lora)."""
    settings = job.settings()
    settings["training"] = {key: value for key, value in settings["training"].items() if key not in UNCOMPARED_TRAINING}
    settings["kind"] = "lora" if return_lora else "full"
    return settings


def _existing_update(target: Path, publication: Publication, copy: PublishedCopy, settings: dict, *, overwrite: bool, resume: bool) -> CopyResult | None:
    """None when ``target`` may be (re)written; the finished copy's result when ``resume`` skips it.
    Raises InputError when ``target`` exists and neither flag allows going on."""
    if not os.path.lexists(target):
        return None
    manifest = None
    try:
        manifest = read_json(target / UPDATE_MANIFEST, "update manifest", MAX_MANIFEST_BYTES)
    except InputError:
        pass
    same = (isinstance(manifest, dict) and manifest.get("publication_id") == publication.publication_id
            and manifest.get("copy_sha256") == copy.sha256 and manifest.get("round") == publication.round
            and {key: manifest.get(key) for key in settings} == settings)
    if resume and same:
        log.debug("copy %d: finished update in %s, skipped (--resume)", copy.id, target)   # the caller reports it
        return CopyResult(copy.id, target, int(manifest.get("steps", 0)), float(manifest.get("seconds", 0.0)), manifest.get("loss", {}), skipped=True)
    if overwrite:
        return None
    what = ("a finished update of this copy with these settings" if same
            else "an update of another publication, copy or settings" if isinstance(manifest, dict) else "an unfinished or unreadable update")
    hint = "pass --overwrite to replace it" + (" or --resume to skip finished copies" if same else "")
    raise InputError(target, f"already holds {what}; {hint}")


_TOKENIZERS: dict[str, object] = {}  # sha256 of a copy's non-weight files -> its tokenizer


def _tokenizer(copy: PublishedCopy):
    """The copy's tokenizer, one object for all copies and rounds that ship the same tokenizer files, so
    that the rows are encoded once per run instead of once per copy and round (``encode_rows`` caches
    per tokenizer object). Loaded from ``copy.path`` (the private copy), named after the folder it was
    received in (``copy.shown_path``), on which the shipped prompt formats are matched."""
    digest = hashlib.sha256()
    for path in sorted(p for p in copy.path.iterdir() if p.is_file() and not p.name.endswith((".safetensors", ".safetensors.index.json"))):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    key = digest.hexdigest()
    if key not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 4:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        vocabulary = AutoConfig.from_pretrained(copy.path, trust_remote_code=False).get_text_config().vocab_size   # verified
        # loaded in the child process only: loading runs the file's normalizer on its added tokens, and
        # every text is tokenized there; this process holds what the encoder needs (special tokens, template)
        _TOKENIZERS[key] = load_other_partys(copy.path, key, vocabulary, shown=copy.shown_path)
    elif is_other_partys(_TOKENIZERS[key]):   # the same files, maybe in another run's private copy, since removed
        moved_other_partys(_TOKENIZERS[key], copy.path, shown=copy.shown_path)
    return _TOKENIZERS[key]


def check_encoding(copy: PublishedCopy, job: UnlearnJob) -> dict[str, torch.Tensor] | None:
    """Refuse ``copy`` when its tokenizer and chat template cannot give the job its training data: the
    tokenizer does not load (or is no tokenizer), has neither a pad nor an EOS token, its template does
    not render a row (``raise_exception``, a runaway loop), a row does not fit, or the ids fall outside
    the model's vocabulary. Run for every copy before the first trains, so that a refusal leaves nothing
    written; the encodings are cached per tokenizer, so training reuses them. Raises InputError naming
    the copy. Returns the rows :func:`check_model` runs through the model (the shortest and the longest
    forget row, the longest retain row: the longest reach the highest positions, the others are padded),
    as one right-padded batch; None for no forget rows. Called after ``PublishedCopy.verify``."""
    if not job.forget_rows:
        return None   # the job refuses an empty forget set itself, before anything is written
    tokenizer = _tokenizer(copy)
    config = AutoConfig.from_pretrained(copy.path, trust_remote_code=False)   # verified: the model's config
    try:
        pad_id = padding_id(tokenizer)
        dataset = job.dataset(SimpleNamespace(config=config), tokenizer)   # the model's context is its config's
    except MPUError as err:
        raise InputError(copy.path, f"copy {copy.id}: its tokenizer and chat template cannot encode this run's rows ({err})") from None
    except Exception as err:   # transformers on a hostile tokenizer: an empty unk token recurses, ...
        raise InputError(copy.path, f"copy {copy.id}: its tokenizer and chat template cannot encode this run's rows "
                                    f"({type(err).__name__}: {first_line(err)})") from None
    vocabulary = config.get_text_config().vocab_size
    ids = [pad_id] + [token for row in dataset.forget + (dataset.retain or []) for token in row["input_ids"]]
    outside = [token for token in ids if not 0 <= token < vocabulary]
    if outside:
        raise InputError(copy.path, f"copy {copy.id}: its tokenizer gives token id {outside[0]}, outside the model's vocabulary "
                                    f"of {vocabulary} (config.json vocab_size)")
    length = lambda row: len(row["input_ids"])
    rows = [min(dataset.forget, key=length), max(dataset.forget, key=length)] + \
        ([max(dataset.retain, key=length)] if dataset.retain else [])
    return QACollator(pad_id)([{key: row[key] for key in ("input_ids", "labels", "attention_mask")} for row in rows])


def check_model(copy: PublishedCopy, probe: dict[str, torch.Tensor] | None, references: Publication | None,
                uses_reference: bool) -> None:
    """Refuse ``copy`` when its model fails on the run's rows: ``probe`` (from :func:`check_encoding`: the
    shortest and the longest forget row and the longest retain row, right-padded as training pads them)
    through the model in train mode, forward and backward, must give a finite loss and finite gradients;
    and, when the method compares with a reference model (``uses_reference``) and ``references`` is given,
    the reference copy must have the copy's parameters and give finite logits. Config values that every
    parse check accepts can still fail there (a dropout of 5, ``return_dict: false``, key/value heads that
    do not divide the heads) or overflow (a negative norm epsilon, a rope theta of 0, weights near the
    float32 maximum, a poisoned pad or late-position embedding): they were a traceback, or an all-NaN
    update returned as a normal run, after earlier copies had trained. The probe is the LM loss on one
    batch, not the method's own loss on every batch: what fails only there is refused when the copy's
    update is not finite (:func:`mpu.client.update.write_dense_update`), after earlier copies were
    written. Costs one more load of each copy (and reference) and one forward and backward, on the GPU
    when there is one. Raises InputError naming the copy's (or reference copy's) folder."""
    if probe is None:
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = {key: value.to(device) for key, value in probe.items()}
    model = _load_model(copy.path).to(device)
    try:
        model.train()
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise InputError(copy.path, f"copy {copy.id}: its model gives the loss {loss.item()} on the run's rows "
                                        "(config.json or the weights overflow); refusing it")
        loss.backward()
        broken = next((name for name, param in model.named_parameters()
                       if param.grad is not None and not torch.isfinite(param.grad).all()), None)
        if broken is not None:
            raise InputError(copy.path, f"copy {copy.id}: its model's gradient of {broken} is not finite on the run's "
                                        "rows (config.json or the weights overflow); refusing it")
    except MPUError:
        raise
    except Exception as err:   # transformers on a config it parsed but cannot run
        raise InputError(copy.path, f"copy {copy.id}: its model fails on the run's rows ({type(err).__name__}: "
                                    f"{first_line(err)}); config.json or the weights") from None
    if references is None or not uses_reference:
        return
    shapes = _parameter_shapes(model)
    del model, loss   # one model in memory at a time
    reference = _load_reference(references, copy, shapes).to(device)
    where = _reference_copy(references, copy).path
    try:
        with torch.no_grad():
            logits = reference.eval()(**batch).logits
    except Exception as err:
        raise InputError(where, f"reference copy {copy.id}: its model fails on the run's rows ({type(err).__name__}: "
                                f"{first_line(err)}); config.json or the weights") from None
    if not torch.isfinite(logits).all():
        raise InputError(where, f"reference copy {copy.id}: its model gives non-finite logits on the run's rows "
                                "(config.json or the weights overflow); refusing it")


def _verified(publication: Publication, copies: list[PublishedCopy], references: Publication | None,
              limit: tuple[int | None, str]) -> None:
    """:meth:`Publication.verify` of ``copies`` and of their reference copies, within ``limit``
    (:func:`memory_limit`)."""
    publication.verify(copies, *limit)
    for copy in copies:
        if references is not None:
            _reference_copy(references, copy).verify(*limit)


def private_folder() -> Path:
    """Where the client makes its private copies of publications: ``received/`` in the mpu cache
    (``$MPU_CACHE``, default ``~/.cache/mpu`` or ``$XDG_CACHE_HOME/mpu``), created mode 0700, a folder
    no other party can write or rename (``private_copy`` refuses one that others could);
    never beside ``--out``, which is often the folder shared with the server."""
    from mpu.data.builtin import cache_root

    return cache_root() / "received"


def memory_limit(with_reference: bool) -> tuple[int | None, str]:
    """The most parameters a copy may have here, and why: its float32 weights (4 bytes per parameter, as
    the client loads every copy; twice that when the method loads the copy's reference model too) must
    fit the machine's physical memory. A lower bound of what training needs (the gradients and the
    optimizer's moments come on top, counted once the model is loaded:
    :func:`mpu.methods.memory.check_training_memory`), so it refuses no model that could train: it
    turns the kill by the out-of-memory killer, minutes into the run, into a refusal before anything is
    read in full or copied (:meth:`PublishedCopy.verify`). (None, "") where the system does not say its memory."""
    memory = physical_memory_bytes()
    if memory is None:
        return None, ""
    per_parameter = 4 * (2 if with_reference else 1)
    processes = processes_sharing_memory()   # every process of a launch loads the copy on the CPU first
    share = f" shared by {processes} processes" if processes > 1 else ""
    return memory // processes // per_parameter, (
        f"its float32 weights{' and its reference model' if with_reference else ''} take {per_parameter} bytes a "
        f"parameter, and this machine has {shown_bytes(memory)} of memory{share}; train it on a larger machine")


def _load_model(copy_dir: Path) -> torch.nn.Module:
    """The copy's model, never running code shipped with it. Called after ``PublishedCopy.verify``."""
    try:
        with quiet_transformers(warnings=False):   # no "Loading weights" bar per copy: one log line per copy says what ran
            return AutoModelForCausalLM.from_pretrained(copy_dir, dtype=torch.float32, trust_remote_code=False)
    except Exception as err:  # a config or weights that transformers rejects
        raise InputError(copy_dir, f"cannot load the model ({type(err).__name__}: {str(err)[:300]})") from None


def _uses_reference(job: UnlearnJob) -> bool:
    """Whether the job's method compares with a reference model (with or without a retain term)."""
    from mpu.methods import METHODS

    cls, hp = METHODS.get(job.method), job.resolved_hparams()
    return cls.needs_reference(hp, with_retain=True) or cls.needs_reference(hp, with_retain=False)


def _reference_publication(reference_model_inbox, publication) -> Publication:
    references = read_publication(reference_model_inbox)
    manifest = references.inbox / PUBLICATION_MANIFEST
    if references.manifest.architecture != publication.manifest.architecture:
        raise InputError(manifest, f"reference publication is a {references.manifest.architecture} model, "
                                   f"this round's copies are {publication.manifest.architecture}")
    if references.round > publication.round:
        raise InputError(manifest, f"reference publication is from round {references.round}, after this round ({publication.round})")
    return references


def _reference_copy(references: Publication, copy: PublishedCopy) -> PublishedCopy:
    (reference_copy,) = references.select([copy.id])
    return reference_copy


def _parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def _load_reference(references: Publication, copy: PublishedCopy, shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """Copy ``copy.id`` of the reference publication, refused (InputError) unless its parameters have the
    names and ``shapes`` of the copy's model (:func:`_parameter_shapes`)."""
    reference_copy = _reference_copy(references, copy)
    reference = _load_model(reference_copy.path)
    if _parameter_shapes(reference) != shapes:
        raise InputError(reference_copy.path, f"reference copy {copy.id} does not have the parameters (names, shapes) of copy {copy.id} in {copy.path.parent}")
    return reference


def _unlearn_one(publication: Publication, copy: PublishedCopy, job: UnlearnJob, out_dir: Path, return_lora: bool,
                 references: Publication | None, settings: dict) -> CopyResult:
    """Train copy ``copy`` with its own run of ``job`` and write ``out_dir/update-<id>`` (main process only)."""
    model = _load_model(copy.path)
    tokenizer = _tokenizer(copy)
    copy_job = replace(
        job, training=replace(job.training, seed=copy_seed(job.training.seed, publication.round, copy.id)),
        reference=(lambda: _load_reference(references, copy, _parameter_shapes(model))) if references is not None else None,
        dp_runs=len(publication.copies),  # one epsilon covers every copy of the round: the server sees all m updates of the same data
    )
    with tempfile.TemporaryDirectory(prefix="mpu-client-") as scratch:
        result = copy_job.run(model, tokenizer, scratch)
    diverged = next((step for step, loss in enumerate(result.losses, start=1) if not math.isfinite(loss)), None)
    if diverged is not None:
        raise MPUError(f"copy {copy.id}: the training loss is {result.losses[diverged - 1]} at logged step {diverged}: "
                       "training diverged; lower the learning rate, or the copy's config or weights overflow. Nothing "
                       "written for this copy")
    target = out_dir / update_folder(copy.id)
    manifest = UpdateManifest(
        round=publication.round,
        reference_round=references.round if references is not None else publication.round,
        publication_id=publication.publication_id,
        copy_id=copy.id,
        copy_sha256=copy.sha256,
        **settings,   # method, hparams, training, kind
        steps=result.steps,
        seconds=round(result.seconds, 3),
        loss=loss_summary(result.losses),
        encoding=result.encoding,   # prompt format arguments, length policy, rows/tokens truncated
        dp=result.dp,   # the guarantee the server received (None without DP-SGD), and nothing else about the data
    )
    if is_main_process():
        if return_lora:
            if not result.lora_factors:
                raise MPUError("--return-lora needs --lora-rank > 0")
            write_lora_update(result.lora_factors, target, manifest, model)
        else:
            write_dense_update(model, copy.path, target, manifest)
        log.info("%s", copy_line(copy.id, result.steps, result.seconds, manifest.loss, target))
    return CopyResult(copy.id, target, result.steps, result.seconds, manifest.loss)


ROUND_SEED_STRIDE = 1000  # seeds of one round: seed + round offset + copy id (1..m), distinct across rounds for m <= 1000


def copy_seed(seed: int, round_number: int, copy_id: int) -> int:
    """The training seed of copy ``copy_id`` in round ``round_number``: its data order, retain pairing
    and dropout. Each copy is an independent job, so copies differ. Rounds differ too: a new
    ``train()`` with the same seed would replay round 1's batches every round, whereas the noise-free
    baseline's R·E epochs each see a fresh shuffle and fresh retain pairs."""
    return seed + ROUND_SEED_STRIDE * (round_number - 1) + copy_id


