"""Train a tiny Llama-architecture model from scratch on the built-in benchmark (or a local copy in
the same format): the "full" target, or a retain model that never saw the forget split.

The result is a standard HF checkpoint (config, safetensors, tokenizer, generation config) plus
``mpu_finetune.json`` with the training metrics and a fingerprint of data + configuration; a later
call with the same fingerprint returns the stored metrics without training again.

    >>> finetune(data_dir, "tofu", "full", "models/tofu_full")           # doctest: +SKIP
    {'answer_token_accuracy': 0.99..., 'exact_match': 0.9..., 'train_seconds': ..., 'cached': False, ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpu.errors import MPUError

log = logging.getLogger(__name__)

FINETUNE_VERSION = 1
RECORD = "mpu_finetune.json"
BENCHMARKS = ("tofu", "muse", "wmdp")
SPLITS = ("full", "retain90", "retain95", "retain99")


@dataclass(frozen=True)
class TinyLlamaConfig:
    """About 1M parameters with the built-in tokenizer's 2048-token vocabulary."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 344
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class TrainConfig:
    epochs: float
    learning_rate: float
    batch_size: int = 32
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    seed: int = 0
    min_steps: int = 0  # raise the default epochs until at least this many optimizer steps


# Calibrated on 2 CPU cores so that the models memorise their training answers (> 95% answer tokens;
# TOFU reaches 100% at 200 authors). Small corpora need more epochs: min_steps sets a floor.
TRAIN_DEFAULTS = {
    "tofu": TrainConfig(epochs=40, learning_rate=3e-3),
    "muse": TrainConfig(epochs=40, learning_rate=3e-3, batch_size=16, min_steps=600),
    "wmdp": TrainConfig(epochs=40, learning_rate=3e-3, batch_size=8, min_steps=800),
}


@dataclass
class TrainingData:
    """(kind, rows) parts: "qa" (loss on answers), "text" (loss on every token) or "qa_doc" (few-shot
    QA text, loss on the answers)."""

    parts: list[tuple[str, list[dict[str, Any]]]]
    sources: list[str] = field(default_factory=list)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for _, rows in self.parts for row in rows]

    @property
    def kinds(self) -> str:
        return "+".join(dict.fromkeys(kind for kind, _ in self.parts))


def _qa_docs(rows: list[dict], seed: str, per_doc: int = 4, copies: int = 4) -> list[dict]:
    """QA pairs as few-shot-style text: ``per_doc`` pairs from unrelated stories per document, each
    pair in ``copies`` documents with different neighbours, so that the answer is learnt to follow its
    own question whatever few-shot examples precede it (as in MUSE's knowmem prompts)."""
    import random

    docs = []
    for copy in range(copies):
        order = list(rows)
        random.Random(f"mpu-muse-qa-{seed}-{copy}").shuffle(order)
        docs += [{"pairs": order[i:i + per_doc]} for i in range(0, len(order), per_doc)]
    return docs


def _shuffled_sentences(rows: list[dict]) -> list[dict]:
    """Each built-in WMDP passage once per sentence: the original, then one copy opening with each
    other sentence (the rest shuffled). The cloze questions give a sentence's prefix with no passage
    before it, and a 1M-parameter model only recalls a fact in a context it learnt it in."""
    import random

    docs = []
    for number, row in enumerate(rows):
        sentences = [s if s.endswith(".") else s + "." for s in row["text"].split(". ")]
        docs.append({"text": row["text"]})
        rng = random.Random(f"mpu-wmdp-order-{number}")
        for first in range(1, len(sentences)):
            rest = sentences[:first] + sentences[first + 1:]
            rng.shuffle(rest)
            docs.append({"text": " ".join([sentences[first]] + rest)})
    return docs


# The MUSE knowmem sets the suite scores; training must never see them (see training_data).
MUSE_EVAL_QA = ("forget_qa", "retain_qa")


def training_data(source, benchmark: str, split: str, manifest: dict | None = None) -> TrainingData:
    """The rows a model for ``split`` trains on: only what the benchmark's own targets train on, never
    an evaluation item. ``split`` is full or retainNN (for MUSE and WMDP any retain split means
    "without the forget data").

    - TOFU: the ``full`` or ``retainNN`` config alone. real_authors and world_facts are what model
      utility evaluates (TOFU's targets never train on them), holdoutNN is the never-seen set.
    - MUSE: the raw forget (full only), retain1 and retain2 corpora; for the built-in benchmark also
      its ``knowmem_train`` QA about those stories, less every pair that knowmem's forget_qa or
      retain_qa scores. raw/holdout and privleak/holdout are never read.
    - WMDP: the retain corpus, plus the forget corpus for full; never the multiple-choice questions.
    """
    if benchmark not in BENCHMARKS:
        raise MPUError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if split not in SPLITS and not (benchmark != "tofu" and split == "retain"):
        raise MPUError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    retain_only = split != "full"
    if benchmark == "tofu":
        rows = [{"question": r["question"], "answer": r["answer"]} for r in source.rows(split, "train")]
        return TrainingData([("qa", rows)], [split])
    if benchmark == "muse":
        parts = [("raw", "retain1"), ("raw", "retain2")] + ([] if retain_only else [("raw", "forget")])
        texts = [{"text": row["text"]} for config, name in parts for row in source.rows(config, name)]
        scored = set()
        for name in MUSE_EVAL_QA:
            try:
                scored |= {row["question"].strip() for row in source.rows("knowmem", name)}
            except MPUError:
                pass   # a release without that knowmem file: nothing of it to keep out
        qa_parts = ["retain"] + ([] if retain_only else ["forget"])
        docs = []
        for name in list(qa_parts):
            try:
                pairs = [row for row in source.rows("knowmem_train", name) if row["question"].strip() not in scored]
            except MPUError:  # a copy of the real MUSE has no knowmem_train: prose only
                log.info("no knowmem_train/%s in %s; training on the raw texts only", name, source.description)
                qa_parts.remove(name)
                continue
            docs += _qa_docs(pairs, seed=name)
        return TrainingData([("text", texts), ("qa_doc", docs)],
                            [f"{c}/{n}" for c, n in parts] + [f"knowmem_train/{n}" for n in qa_parts])
    wmdp = (manifest or {}).get("wmdp", {})
    corpora = [wmdp.get("retain_corpus", "synth-retain-corpus")]
    if not retain_only:
        corpora.append(wmdp.get("forget_corpus", "synth-forget-corpus"))
    rows = [{"text": row["text"]} for corpus in corpora for row in source.rows(corpus, "train")]
    if manifest:  # built-in passages: every fact sentence also opens a document, as the cloze questions do
        rows = _shuffled_sentences(rows)
    return TrainingData([("text", rows)], [f"{corpus}/train" for corpus in corpora])


def encode_training(tokenizer, data: TrainingData, max_length: int) -> list[dict[str, list[int]]]:
    from mpu.eval.encoding import encode, encode_qa_doc

    return [encode_qa_doc(tokenizer, row["pairs"], max_length) if kind == "qa_doc"
            else encode(tokenizer, kind, row, max_length=max_length)
            for kind, rows in data.parts for row in rows]


def _fingerprint(examples, model_config: TinyLlamaConfig, train_config: TrainConfig, benchmark: str, split: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": FINETUNE_VERSION, "benchmark": benchmark, "split": split,
                              "model": asdict(model_config), "train": asdict(train_config)}, sort_keys=True).encode())
    for example in examples:
        digest.update(json.dumps([example["input_ids"], example["labels"]]).encode())
    return digest.hexdigest()


def read_record(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


TOKENIZER_DIR = "mpu_tokenizer"
TOKENIZER_RECORD = "mpu_tokenizer.json"
TOKENIZER_VOCAB = 2048


def _training_texts(source, benchmark: str, manifest: dict | None) -> list[str]:
    """Every text of every training split of ``benchmark`` (the union, each text once, in order)."""
    splits = ("full", "retain90", "retain95", "retain99") if benchmark == "tofu" else ("full", "retain")
    texts: dict[str, None] = {}
    for split in splits:
        try:
            data = training_data(source, benchmark, split, manifest)
        except MPUError:
            continue   # a local copy may lack some retain splits
        for row in data.rows:
            for pair in row.get("pairs", [row]):
                texts.update(dict.fromkeys(str(pair[key]) for key in ("question", "answer", "text") if key in pair))
    return list(texts)


def dataset_tokenizer(data_dir: str | Path, benchmark: str, source=None, manifest: dict | None = None):
    """The one tokenizer of a dataset, shared by every model trained on it (target, retain, base).

    In order: the built-in benchmark's ``tokenizer/`` (from its manifest); a ``tokenizer/`` folder the
    user put in ``data_dir``; else a byte-level BPE (``TOKENIZER_VOCAB`` tokens) trained on the union
    of the benchmark's training splits and cached in ``data_dir/mpu_tokenizer/<benchmark>/`` (or, when
    ``data_dir`` is read-only, in ``$MPU_CACHE/tokenizers/<fingerprint>/``), keyed by a fingerprint of
    those texts so that a changed dataset gets a new one. Returns a ``PreTrainedTokenizerFast``.
    """
    from transformers import AutoTokenizer

    from mpu.data.loaders import LocalSource
    from mpu.data.tokenizer import train_tokenizer

    data_dir = Path(data_dir)
    if manifest:
        return AutoTokenizer.from_pretrained(str(data_dir / manifest["tokenizer"]))
    if (data_dir / "tokenizer").is_dir():
        return AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    texts = _training_texts(source or LocalSource(data_dir), benchmark, manifest)
    if not texts:
        raise MPUError(f"{data_dir}: no {benchmark} training split to train a tokenizer on")
    digest = hashlib.sha256(json.dumps([TOKENIZER_VOCAB, texts]).encode()).hexdigest()
    from mpu.data.builtin import cache_root

    for folder in (data_dir / TOKENIZER_DIR / benchmark, cache_root() / "tokenizers" / digest[:24]):
        try:
            record = json.loads((folder / TOKENIZER_RECORD).read_text(encoding="utf-8"))
            if record.get("fingerprint") == digest:
                return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError):
            pass
    tokenizer = train_tokenizer(texts, vocab_size=TOKENIZER_VOCAB)
    for folder in (data_dir / TOKENIZER_DIR / benchmark, cache_root() / "tokenizers" / digest[:24]):
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        except OSError:
            continue   # read-only data: fall back to the cache
        try:
            tokenizer.save_pretrained(str(staging))
            (staging / TOKENIZER_RECORD).write_text(json.dumps(
                {"fingerprint": digest, "benchmark": benchmark, "vocab_size": TOKENIZER_VOCAB, "texts": len(texts)},
                indent=2) + "\n", encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
            log.info("trained the %s tokenizer of %s on %d texts; cached in %s", benchmark, data_dir, len(texts), folder)
            return AutoTokenizer.from_pretrained(str(folder))
        except OSError as err:
            log.warning("cannot cache the tokenizer in %s (%s)", folder, err)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def token_accuracy(model, examples, batch_size: int, pad_id: int) -> dict[str, float]:
    """Teacher-forced accuracy over all labelled tokens, and the fraction of examples fully right."""
    import numpy as np

    from mpu.eval.engine import token_stats

    stats = token_stats(model, examples, batch_size, pad_id)
    correct = np.concatenate([s.correct for s in stats])
    return {"answer_token_accuracy": float(correct.mean()),
            "exact_match": float(np.mean([bool(s.correct.all()) for s in stats]))}


def _quiet_logs(trainer) -> None:
    """Keep stdout for the caller's JSON: no printed log dicts (a progress bar is fine)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly())


def finetune(
    data_dir: str | Path | None = None,
    benchmark: str = "tofu",
    split: str = "full",
    out_dir: str | Path = "models/tiny",
    epochs: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    model_config: TinyLlamaConfig | dict | None = None,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    threads: int | None = None,
) -> dict:
    """Train (or reuse) a tiny Llama on ``benchmark``/``split`` of ``data_dir`` and save it to
    ``out_dir``. Returns the metrics: answer_token_accuracy, exact_match, train_loss,
    train_seconds, n_params, n_examples, epochs, learning_rate, fingerprint, cached."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from mpu.data.builtin import ensure_builtin, read_manifest
    from mpu.data.loaders import LocalSource
    from mpu.data.qa import QACollator

    data_dir = Path(data_dir) if data_dir is not None else ensure_builtin()
    if not data_dir.is_dir():
        raise MPUError(f"{data_dir}: no such data directory (build one with `mpu data build --out DIR`)")
    manifest = read_manifest(data_dir)
    source = LocalSource(data_dir / manifest[benchmark]["path"]) if manifest else LocalSource(data_dir)
    data = training_data(source, benchmark, split, manifest)

    if isinstance(model_config, dict):
        model_config = TinyLlamaConfig(**model_config)
    model_config = model_config or TinyLlamaConfig()
    defaults = TRAIN_DEFAULTS[benchmark]
    tokenizer = dataset_tokenizer(data_dir, benchmark, source, manifest)
    examples = encode_training(tokenizer, data, model_config.max_position_embeddings)
    batch_size = batch_size or defaults.batch_size
    if epochs is None:
        steps_per_epoch = math.ceil(len(examples) / batch_size)
        epochs = max(defaults.epochs, math.ceil(defaults.min_steps / steps_per_epoch))
    train_config = TrainConfig(
        epochs=epochs,
        learning_rate=lr if lr is not None else defaults.learning_rate,
        batch_size=batch_size,
        warmup_ratio=defaults.warmup_ratio, weight_decay=defaults.weight_decay,
        lr_scheduler=defaults.lr_scheduler, seed=seed,
    )
    fingerprint = _fingerprint(examples, model_config, train_config, benchmark, split)

    out_dir = Path(out_dir)
    record = read_record(out_dir)
    if not force and record and record.get("fingerprint") == fingerprint and (out_dir / "model.safetensors").is_file():
        log.info("%s already holds this model (fingerprint %s); reusing it", out_dir, fingerprint[:12])
        return {**record["metrics"], "cached": True}

    if out_dir.exists() and any(out_dir.iterdir()) and record is None:
        raise MPUError(f"{out_dir} exists and was not written by `mpu finetune`; refusing to replace it")
    if threads is not None:   # the library leaves torch alone unless asked; the CLI passes its --threads
        from mpu.threads import apply_threads

        apply_threads(threads)
    use_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **asdict(model_config),
        attn_implementation="eager",  # 2-3x faster than sdpa for such small models on CPU
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training a %.2fM-parameter model on %d %s examples (%s/%s) for %s epochs",
             n_params / 1e6, len(examples), data.kinds, benchmark, split, train_config.epochs)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        args = TrainingArguments(
            output_dir=str(staging / "trainer"),
            per_device_train_batch_size=train_config.batch_size,
            num_train_epochs=train_config.epochs,
            learning_rate=train_config.learning_rate,
            lr_scheduler_type=train_config.lr_scheduler,
            warmup_steps=train_config.warmup_ratio,
            weight_decay=train_config.weight_decay,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            disable_tqdm=not progress,
            use_cpu=use_cpu,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            train_sampling_strategy="group_by_length",
            dataloader_pin_memory=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=examples,
                          data_collator=QACollator(tokenizer.pad_token_id))
        _quiet_logs(trainer)
        started = time.perf_counter()
        result = trainer.train()
        train_seconds = time.perf_counter() - started
        model.eval()
        accuracy = token_accuracy(model, examples, 64, tokenizer.pad_token_id)
        metrics = {
            **accuracy,
            "train_loss": float(result.training_loss),
            "train_seconds": round(train_seconds, 2),
            "n_params": n_params,
            "n_examples": len(examples),
            "n_train_tokens": sum(len(e["input_ids"]) for e in examples),
            "benchmark": benchmark,
            "split": split,
            "epochs": train_config.epochs,
            "learning_rate": train_config.learning_rate,
            "fingerprint": fingerprint,
        }
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        model.generation_config.do_sample = False
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        with open(staging / RECORD, "w", encoding="utf-8") as handle:
            json.dump({"fingerprint": fingerprint, "metrics": metrics, "train_config": asdict(train_config),
                       "model_config": asdict(model_config), "data": str(data_dir.resolve()), "sources": data.sources},
                      handle, indent=2)
        for path in staging.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(staging, 0o755)
        if out_dir.exists():
            if any(out_dir.iterdir()) and read_record(out_dir) is None:
                raise MPUError(f"{out_dir} exists and was not written by `mpu finetune`; refusing to replace it")
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("answer-token accuracy %.4f, exact match %.3f, %.1f s", metrics["answer_token_accuracy"],
             metrics["exact_match"], metrics["train_seconds"])
    return {**metrics, "cached": False}
