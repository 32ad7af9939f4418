"""Train a tiny Llama-architecture model on the built-in benchmark (or a local copy in the same
format), in TOFU's two stages:

- ``split="base"``: a *base* model trained from scratch on general data with none of the
  benchmark's fictitious entities (:func:`base_training_data`): the built-in generic corpus and the
  real_authors/world_facts QA, the "pretraining knowledge" that model utility's ra/wf parts test (as
  TOFU's targets get it from Llama's pretraining);
- ``split="full"`` / ``"retainNN"`` with ``base=...``: the target (or retain model) as the base
  fine-tuned on the benchmark's training split with one recipe (``FROM_BASE``), so that target and
  retain model differ only by the forget data and ``theta - theta_base`` is a task vector, against
  which the server scales its noise. Without a base they are trained from scratch (the old regime).

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

from mpu.errors import InputError, MPUError

log = logging.getLogger(__name__)

FINETUNE_VERSION = 3
RECORD = "mpu_finetune.json"
BENCHMARKS = ("tofu", "muse", "wmdp")
SPLITS = ("base", "full", "retain90", "retain95", "retain99")
BASE_SPLIT = "base"


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
    # Std of the initial weights; None: 1/sqrt(hidden_size) (0.088 here). transformers' 0.02 suits
    # models ~2,000 wide; a 128-wide model started there keeps weights ~4x smaller than its width calls
    # for, and every fine-tuning then rewrites them: at 0.02 the built-in target's task vector was
    # 0.23-0.42 of the weights per layer, at 1/sqrt(hidden_size) 0.09-0.15 (docs/results.md).
    initializer_range: float | None = None

    def llama_kwargs(self) -> dict[str, Any]:
        """The ``transformers.LlamaConfig`` keyword arguments of this size (the initializer resolved)."""
        kwargs = asdict(self)
        if kwargs["initializer_range"] is None:
            kwargs["initializer_range"] = self.hidden_size ** -0.5
        return kwargs


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: float
    learning_rate: float
    batch_size: int = 32
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    seed: int = 0
    min_steps: int = 0  # raise the default epochs until at least this many optimizer steps
    rehearsal: str = "none"  # fine-tuning from a base: also replay its data ("none", "knowledge", "base"; REHEARSAL)
    freeze_embeddings: bool = False  # fine-tuning from a base: keep the (tied) embeddings at the base's


# Calibrated on 2 CPU cores so that the models memorise their training answers (> 95% answer tokens;
# TOFU reaches 100% at 200 authors). Small corpora need more epochs: min_steps sets a floor.
TRAIN_DEFAULTS = {
    "tofu": FinetuneConfig(epochs=40, learning_rate=3e-3),
    "muse": FinetuneConfig(epochs=40, learning_rate=3e-3, batch_size=16, min_steps=600),
    "wmdp": FinetuneConfig(epochs=40, learning_rate=3e-3, batch_size=8, min_steps=800),
}


# The base stage: from scratch on the general data (built-in: ~3,000 QA and articles).
BASE_DEFAULTS = FinetuneConfig(epochs=15, learning_rate=3e-3, batch_size=32)

# Fine-tuning a base on a benchmark split (target and retain model alike): a lower learning rate than
# from scratch, so that the task vector stays a small part of the weights while the answers are
# memorised (docs/results.md reports RMS(theta - theta_base) / RMS(theta) per block). TOFU: 3e-4 memorises
# the 40-author demo data (answer tokens 0.9994) with a task vector of 0.09-0.15 of each layer's weights;
# 1e-3 gives 0.13-0.22, 1e-4 (80 epochs) leaves a third of the answers unmemorised.
FROM_BASE = {
    "tofu": FinetuneConfig(epochs=40, learning_rate=3e-4, rehearsal="knowledge"),
    "muse": FinetuneConfig(epochs=40, learning_rate=1e-3, batch_size=16, min_steps=600),
    "wmdp": FinetuneConfig(epochs=40, learning_rate=1e-3, batch_size=8, min_steps=800),
}


@dataclass(frozen=True)
class ModelPreset:
    """A model size and its recipes (``mpu finetune --preset``): ``size`` the architecture,
    ``from_scratch`` and ``from_base`` overrides (epochs, learning_rate, batch_size) of the TOFU-format
    recipe when the model is trained from scratch (``TRAIN_DEFAULTS``) or fine-tuned from a base
    (``FROM_BASE``); explicit arguments still win."""
    size: TinyLlamaConfig
    from_scratch: dict[str, Any] = field(default_factory=dict)
    from_base: dict[str, Any] = field(default_factory=dict)

    def recipe(self, with_base: bool) -> dict[str, Any]:
        """The overrides of the stage: ``from_base`` when fine-tuning a base, else ``from_scratch``."""
        return dict(self.from_base if with_base else self.from_scratch)


# Size/recipe presets. "tiny" is the default above. "cpu-release" is aimed at data of the real TOFU
# release's shape (20 QA per author, ~25-word answers, thousands of distinct words:
# BuildConfig(shape="release") or a local copy of locuslab/TOFU): 3.3M parameters, meant to reach >= 90%
# answer-token accuracy in <= 45 minutes on 2 idle CPU cores. Measured on 200 release-shaped authors
# (docs/results.md): its base (15 epochs, BASE_DEFAULTS) 0.964 of its own answers in 125 s on 2 threads,
# then the target from that base (20 epochs at lr 1e-3, replaying the knowledge QA) 0.972 in 1,394 s on
# one thread of a busy machine.
# From scratch: 0.99998 after 30 epochs at lr 2e-3 in 39 min, measured at initializer 0.02; the preset
# now starts at 1/sqrt(256) like the tiny size, so that the base's weights have the scale its width
# calls for (at 0.02 a fine-tuning rewrites a large part of them).
PRESETS = {
    "tiny": ModelPreset(TinyLlamaConfig()),
    "cpu-release": ModelPreset(
        TinyLlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=640),
        from_scratch={"epochs": 30, "learning_rate": 2e-3, "batch_size": 32},
        # 40 epochs at FROM_BASE's 3e-4 would take ~40 min per model on release-shaped data
        from_base={"epochs": 20, "learning_rate": 1e-3},
    ),
}


# What a fine-tuning from a base replays of the base's own training data (rehearsal, alongside the
# benchmark split; the same for target and retain model, so that they still differ only by the forget data).
REHEARSAL = {
    "none": (),
    "knowledge": ("knowledge",),             # the real_authors/world_facts QA
    "qa": ("knowledge", "general_qa"),       # plus the general topics' QA
    "base": ("knowledge", "general_qa", "general_corpus"),  # everything the base trained on
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
    if split == BASE_SPLIT:
        raise MPUError("the base model's data is not a benchmark split: use base_training_data")
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
    corpora = _wmdp_corpora(source, manifest, retain_only)
    rows = [{"text": row["text"]} for corpus in corpora for row in source.rows(corpus, "train")]
    if manifest:  # built-in passages: every fact sentence also opens a document, as the cloze questions do
        rows = _shuffled_sentences(rows)
    return TrainingData([("text", rows)], [f"{corpus}/train" for corpus in corpora])


# cais/wmdp-corpora's public configs (the bio forget corpus is not released), what a copy of it holds
WMDP_CORPORA = {"retain": ("bio-retain-corpus", "cyber-retain-corpus"), "forget": ("cyber-forget-corpus",)}


def _wmdp_corpora(source, manifest: dict | None, retain_only: bool) -> list[str]:
    """The corpora a WMDP target (or, ``retain_only``, its retain model) trains on: the built-in
    benchmark's two; in a local copy of cais/wmdp-corpora, the ``*-retain-corpus`` and
    ``*-forget-corpus`` configs it holds; from the hub, its public configs (:data:`WMDP_CORPORA`).
    Raises MPUError naming the folder when a local copy holds no retain corpus."""
    if manifest:
        wmdp = manifest.get("wmdp", {})
        return [wmdp.get("retain_corpus", "synth-retain-corpus")] + \
            ([] if retain_only else [wmdp.get("forget_corpus", "synth-forget-corpus")])
    root = getattr(source, "root", None)
    if root is None:
        return list(WMDP_CORPORA["retain"]) + ([] if retain_only else list(WMDP_CORPORA["forget"]))
    stems = {item.name.split(".")[0] for item in Path(root).iterdir()}   # a config's folder or file
    held = sorted(stem for stem in stems if stem.endswith(("-retain-corpus", "-forget-corpus")))
    retain = [name for name in held if name.endswith("-retain-corpus")]
    if not retain:
        raise MPUError(f"{root}: no retain corpus to fine-tune on: a copy of cais/wmdp-corpora holds configs such "
                       f"as {', '.join(WMDP_CORPORA['retain'] + WMDP_CORPORA['forget'])} (a folder or file each); "
                       f"found {', '.join(sorted(item.name for item in Path(root).iterdir())[:10]) or 'nothing'}")
    return retain + ([] if retain_only else [name for name in held if name.endswith("-forget-corpus")])


class NoGeneralData(MPUError):
    """The data has nothing to train a base model on (a MUSE copy, a TOFU copy without real_authors)."""


def base_training_data(data_dir: str | Path, benchmark: str, source=None, manifest: dict | None = None,
                       parts: tuple[str, ...] = ("knowledge", "general_qa", "general_corpus")) -> TrainingData:
    """The base model's data: general knowledge, none of the benchmark's fictitious entities.

    - the built-in benchmark: its general corpus (articles, loss on every token) and QA about the
      same invented topics, plus TOFU's real_authors and world_facts QA. Those two are what model
      utility's ra/wf parts evaluate: like Llama for TOFU, the base knows them from "pretraining";
      they are never in a target/retain fine-tuning split (tests/data/test_leakage.py);
    - a local TOFU-format copy: its real_authors and world_facts QA;
    - anything else: an ``MPUError`` (no general data: pass a base model directory, or none).

    ``parts`` selects among "knowledge" (real_authors/world_facts QA), "general_qa" and
    "general_corpus" (the built-in general topics); a rehearsal (``REHEARSAL``) replays some of them.
    """
    from mpu.data.loaders import LocalSource

    data_dir = Path(data_dir)
    if manifest and manifest.get("general"):
        general = manifest["general"]
        root = LocalSource(data_dir / general["path"])
        tofu = LocalSource(data_dir / manifest["tofu"]["path"])
        qa, texts, sources = [], [], []
        if "knowledge" in parts:
            qa += [{"question": r["question"], "answer": r["answer"]}
                   for name in ("real_authors", "world_facts") for r in tofu.rows(name, "train")]
            sources += ["tofu/real_authors", "tofu/world_facts"]
        if "general_qa" in parts:
            qa += [{"question": r["question"], "answer": r["answer"]} for r in root.rows(general["qa"], "train")]
            sources.append(f"general/{general['qa']}")
        if "general_corpus" in parts:
            texts = [{"text": r["text"]} for r in root.rows(general["corpus"], "train")]
            sources.append(f"general/{general['corpus']}")
        return TrainingData([(kind, rows) for kind, rows in (("qa", qa), ("text", texts)) if rows], sources)
    if manifest:
        raise MPUError(f"{data_dir}: built-in benchmark of an older version without general data; rebuild it "
                       "(`mpu data build`) or pass --base none")
    if benchmark == "tofu":
        source = source or LocalSource(data_dir)
        rows = []
        for name in ("real_authors", "world_facts") if "knowledge" in parts else ():
            try:
                rows += [{"question": r["question"], "answer": r["answer"]} for r in source.rows(name, "train")]
            except MPUError:
                continue
        if rows:
            return TrainingData([("qa", rows)], ["real_authors", "world_facts"])
    raise NoGeneralData(f"{data_dir}: no general data to train a {benchmark} base model on (the built-in benchmark and "
                   "TOFU copies with real_authors/world_facts have some); pass --base DIR (a model) or --base none")


def encode_training(tokenizer, data: TrainingData, max_length: int) -> list[dict[str, list[int]]]:
    from mpu.eval.encoding import encode, encode_qa_doc

    return [encode_qa_doc(tokenizer, row["pairs"], max_length) if kind == "qa_doc"
            else encode(tokenizer, kind, row, max_length=max_length)
            for kind, rows in data.parts for row in rows]


def _fingerprint(examples, model_config: TinyLlamaConfig, train_config: FinetuneConfig, benchmark: str, split: str,
                 base_fingerprint: str | None = None) -> str:
    digest = hashlib.sha256()
    header = {"version": FINETUNE_VERSION, "benchmark": benchmark, "split": split,
              "model": asdict(model_config), "train": asdict(train_config)}
    if base_fingerprint is not None:
        header["base"] = base_fingerprint
    digest.update(json.dumps(header, sort_keys=True).encode())
    for example in examples:
        digest.update(json.dumps([example["input_ids"], example["labels"]]).encode())
    return digest.hexdigest()


def read_record(model_dir: str | Path) -> dict | None:
    """``mpu_finetune.json`` of ``model_dir``, or None when it is missing, unreadable or not a JSON object."""
    path = Path(model_dir) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


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


def _preset(name: str, model_config) -> ModelPreset:
    """``PRESETS[name]``. MPUError for an unknown name or one combined with a model configuration."""
    if name not in PRESETS:
        raise MPUError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    if model_config is not None:
        raise MPUError("give either a preset or a model configuration, not both")
    return PRESETS[name]


def _training_source(data_dir, benchmark, split, source, manifest, base, model_config, seed, progress, device, threads):
    """What a split trains on and from: (training data, recipe defaults, base directory or None, the
    base's record or None, model configuration). ``base`` is None/"none", "auto" or a directory (see
    :func:`finetune`); a base fixes the model configuration and the ``FROM_BASE`` defaults."""
    base_dir, base_record = None, None
    if split == BASE_SPLIT:
        if base not in (None, "none"):
            raise MPUError("--split base trains the base model itself from scratch: leave --base out")
        data = base_training_data(data_dir, benchmark, source, manifest)
        defaults = BASE_DEFAULTS
    else:
        data = training_data(source, benchmark, split, manifest)
        defaults = TRAIN_DEFAULTS[benchmark]
        if base == "auto":
            try:
                base_training_data(data_dir, benchmark, source, manifest)
            except NoGeneralData as err:
                # "auto": a base where the data has general knowledge to build one; else from scratch, said aloud
                log.warning("%s; training %s from scratch (no base model: the server's noise will scale with the "
                            "whole weights unless you pass a base to `mpu server init --base`)", err, split)
                base = None
            else:
                base = ensure_base(data_dir, benchmark, model_config=model_config, seed=seed, progress=progress,
                                   device=device, threads=threads)
        if base not in (None, "none"):
            base_dir = Path(base)
            base_record = read_record(base_dir)
            if base_record is None or not (base_dir / "model.safetensors").is_file():
                raise MPUError(f"{base_dir}: not a base model written by `mpu finetune --split base` "
                               "(no mpu_finetune.json or model.safetensors)")
            base_config = TinyLlamaConfig(**base_record["model_config"])
            if model_config is not None and model_config != base_config:
                raise MPUError(f"{base_dir}: the base model's configuration {asdict(base_config)} differs from the "
                               f"requested {asdict(model_config)}; a fine-tuned model keeps its base's shape")
            model_config = base_config
            defaults = FROM_BASE[benchmark]
    return data, defaults, base_dir, base_record, model_config


def _new_model(tokenizer, model_config: TinyLlamaConfig, base_dir: Path | None, freeze_embeddings: bool):
    """The model to train: the base's weights (float32) or a fresh Llama of ``model_config`` sized to
    ``tokenizer``; with ``freeze_embeddings`` the (tied) embeddings do not train."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if base_dir is not None:
        model = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, attn_implementation="eager")
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, **model_config.llama_kwargs(),
            attn_implementation="eager",  # 2-3x faster than sdpa for such small models on CPU
        )
        model = LlamaForCausalLM(config)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied: the LM head stays the base's too
    return model


def _finetune_arguments(train_config: FinetuneConfig, output_dir: Path, seed: int, progress: bool, use_cpu: bool):
    """The HF ``TrainingArguments`` of one fine-tuning run (no logging or checkpoints: the caller saves)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
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


def _split_and_rehearsal_accuracy(model, examples: list[dict], n_split: int, pad_id: int) -> dict:
    """Answer-token accuracy and exact match over the split's own examples (the first ``n_split``),
    plus ``rehearsal_token_accuracy`` over the replayed ones when there are any."""
    accuracy = token_accuracy(model, examples[:n_split], 64, pad_id)
    if n_split < len(examples):
        accuracy["rehearsal_token_accuracy"] = token_accuracy(model, examples[n_split:], 64, pad_id)["answer_token_accuracy"]
    return accuracy


def _write_model(folder: Path, model, tokenizer, record: dict) -> None:
    """Save a trained model, its tokenizer and its ``mpu_finetune.json`` record into ``folder`` (greedy
    generation settings; files world-readable: these are the project's own public test models)."""
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    with open(folder / RECORD, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(folder, 0o755)


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
    base: str | Path | None = None,
    preset: str | None = None,
    rehearsal: str | None = None,
    freeze_embeddings: bool | None = None,
    replace: bool = True,
) -> dict:
    """Train (or reuse) a tiny Llama on ``benchmark``/``split`` of ``data_dir`` and save it to
    ``out_dir``. Returns the metrics: answer_token_accuracy, exact_match, train_loss,
    train_seconds, n_params, n_examples, epochs, learning_rate, fingerprint, cached, base (the
    base model's directory or None) and, with a base, ``task_vector_ratio`` (per block,
    RMS(theta - theta_base) / RMS(theta)).

    ``split="base"`` trains the base model from scratch on :func:`base_training_data`. For the other
    splits ``base`` is ``None``/``"none"`` (from scratch, defaults ``TRAIN_DEFAULTS``), ``"auto"`` (the
    dataset's base model, trained and cached on first use by :func:`ensure_base`) or a directory
    written by ``finetune(split="base")`` (its model configuration and tokenizer are used; the
    defaults are ``FROM_BASE``). Raises ``MPUError`` for a base of another tokenizer or a
    ``model_config`` that contradicts the base's.

    ``rehearsal`` (a key of ``REHEARSAL``) and ``freeze_embeddings`` override the recipe's
    (``FROM_BASE``) when fine-tuning from a base; without a base they must be left out. The accuracy
    metrics are over the split's own examples; ``rehearsal_token_accuracy`` over the replayed ones.

    ``preset`` (a key of ``PRESETS``) sets the model configuration and the default epochs, learning
    rate and batch size of the stage (from scratch or from a base; the base stage keeps
    ``BASE_DEFAULTS``); explicit arguments still win. It cannot be combined with ``model_config``.

    ``out_dir`` holding a model of another fingerprint (other data, split, recipe, size or base) is
    retrained in place when ``replace`` (a cache's behaviour, the default), else refused before this
    model is trained (a ``base="auto"`` is trained and cached first when missing) with an
    ``InputError`` that names the settings that differ (the CLI's default: --force replaces). A
    non-empty folder ``finetune`` did not write, and the base model's own folder, are always refused."""
    import torch

    from mpu.data.builtin import ensure_builtin, read_manifest
    from mpu.data.loaders import LocalSource

    data_dir = Path(data_dir) if data_dir is not None else ensure_builtin()
    if not data_dir.is_dir():
        raise MPUError(f"{data_dir}: no such data directory (build one with `mpu data build --out DIR`)")
    if benchmark not in BENCHMARKS:
        raise MPUError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    manifest = read_manifest(data_dir)
    source = LocalSource(data_dir / manifest[benchmark]["path"]) if manifest else LocalSource(data_dir)
    if isinstance(model_config, dict):
        model_config = TinyLlamaConfig(**model_config)
    chosen = _preset(preset, model_config) if preset is not None else None
    if chosen is not None:
        model_config = chosen.size
    data, defaults, base_dir, base_record, model_config = _training_source(
        data_dir, benchmark, split, source, manifest, base, model_config, seed, progress, device, threads)
    if chosen is not None and split != BASE_SPLIT:   # the base stage keeps BASE_DEFAULTS
        recipe = chosen.recipe(with_base=base_dir is not None)
        epochs = epochs if epochs is not None else recipe.get("epochs")
        lr = lr if lr is not None else recipe.get("learning_rate")
        batch_size = batch_size or recipe.get("batch_size")

    if base_dir is None and (rehearsal not in (None, "none") or freeze_embeddings):
        raise MPUError("rehearsal and frozen embeddings are fine-tuning options: they need a base model (--base)")
    rehearsal = rehearsal if rehearsal is not None else defaults.rehearsal
    if rehearsal not in REHEARSAL:
        raise MPUError(f"unknown rehearsal {rehearsal!r}; known: {', '.join(REHEARSAL)}")
    model_config = model_config or TinyLlamaConfig()
    tokenizer = dataset_tokenizer(data_dir, benchmark, source, manifest)
    if base_dir is not None:
        _check_base_tokenizer(base_dir, tokenizer, data_dir)
    examples = encode_training(tokenizer, data, model_config.max_position_embeddings)
    n_split = len(examples)
    if rehearsal != "none":
        replay = base_training_data(data_dir, benchmark, source, manifest, parts=REHEARSAL[rehearsal])
        examples += encode_training(tokenizer, replay, model_config.max_position_embeddings)
        data = TrainingData(data.parts + replay.parts, data.sources + [f"rehearsal:{name}" for name in replay.sources])
    train_config = _resolve_recipe(defaults, len(examples), epochs, lr, batch_size, seed, rehearsal,
                                   defaults.freeze_embeddings if freeze_embeddings is None else bool(freeze_embeddings))
    fingerprint = _fingerprint(examples, model_config, train_config, "general" if split == BASE_SPLIT else benchmark,
                               split, base_record["fingerprint"] if base_record else None)

    out_dir = Path(out_dir)
    if base_dir is not None and (out_dir.resolve() == base_dir.resolve() or base_dir.resolve() in out_dir.resolve().parents):
        raise InputError(out_dir, f"is or lies inside the base model {base_dir} this training starts from; choose another --out")
    record = read_record(out_dir)
    if not force and record and record.get("fingerprint") == fingerprint and (out_dir / "model.safetensors").is_file():
        log.info("%s already holds this model (fingerprint %s); reusing it", out_dir, fingerprint[:12])
        return {**record["metrics"], "cached": True}
    if out_dir.exists() and any(out_dir.iterdir()) and record is None:
        raise MPUError(f"{out_dir} exists and was not written by `mpu finetune`; refusing to replace it")
    if record and record.get("fingerprint") != fingerprint and not (replace or force):
        wanted = _settings(benchmark, split, str(data_dir.resolve()), base_record["fingerprint"] if base_record else None,
                           asdict(model_config), asdict(train_config))
        raise InputError(out_dir, "holds a model trained with other settings (" + _settings_differ(record, wanted) +
                         "); pass --force to replace it, or choose another --out")
    if threads is not None:   # the library leaves torch alone unless asked; the CLI passes its --threads
        from mpu.threads import apply_threads

        apply_threads(threads)
    torch.manual_seed(seed)
    model = _new_model(tokenizer, model_config, base_dir, train_config.freeze_embeddings)
    log.info("training a %.2fM-parameter model on %d %s examples (%s/%s) for %s epochs",
             sum(p.numel() for p in model.parameters()) / 1e6, len(examples), data.kinds, benchmark, split,
             train_config.epochs)
    use_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    metrics = _train(model, tokenizer, examples, n_split, train_config, out_dir, progress, use_cpu, {
        "benchmark": benchmark, "split": split, "fingerprint": fingerprint,
        "base": str(base_dir.resolve()) if base_dir is not None else None}, base_dir)
    _save_atomically(out_dir, model, tokenizer, {
        "fingerprint": fingerprint, "metrics": metrics, "train_config": asdict(train_config),
        "model_config": asdict(model_config), "data": str(data_dir.resolve()), "sources": data.sources,
        "base": metrics["base"], "base_fingerprint": base_record["fingerprint"] if base_record else None})
    log.info("answer-token accuracy %.4f, exact match %.3f, %.1f s", metrics["answer_token_accuracy"],
             metrics["exact_match"], metrics["train_seconds"])
    return {**metrics, "cached": False}


def _settings(benchmark, split, data, base_fingerprint, model_config: dict, train_config: dict) -> dict:
    """A model's training settings as flat keys: benchmark, split, data, base_fingerprint, model.*, train.*."""
    return {"benchmark": benchmark, "split": split, "data": data, "base_fingerprint": base_fingerprint,
            **{f"model.{key}": value for key, value in model_config.items()},
            **{f"train.{key}": value for key, value in train_config.items()}}


def _settings_differ(record: dict, wanted: dict) -> str:
    """What differs between the settings ``record`` (an ``mpu_finetune.json``) was trained with and
    ``wanted`` (:func:`_settings`), as ``key: old -> new`` items; "the training examples" when only
    they differ (the fingerprint hashes them)."""
    metrics = record.get("metrics") or {}
    earlier = _settings(metrics.get("benchmark"), metrics.get("split"), record.get("data"), record.get("base_fingerprint"),
                        record.get("model_config") or {}, record.get("train_config") or {})

    def text(key: str, value) -> str:
        return "none" if value is None else str(value)[:12] if key == "base_fingerprint" else str(value)

    items = [f"{key}: {text(key, earlier.get(key))} -> {text(key, value)}" for key, value in wanted.items()
             if earlier.get(key) != value]
    return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "") if items else "the training examples"


def _check_base_tokenizer(base_dir: Path, tokenizer, data_dir: Path) -> None:
    """MPUError unless the base model in ``base_dir`` was trained with ``data_dir``'s tokenizer."""
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(str(base_dir)).get_vocab() != tokenizer.get_vocab():
        raise MPUError(f"{base_dir}: the base model's tokenizer is not {data_dir}'s; train the base on the same data "
                       "(`mpu finetune --split base --data ...`)")


def _resolve_recipe(defaults: FinetuneConfig, n_examples: int, epochs, lr, batch_size, seed: int, rehearsal: str,
                    freeze_embeddings: bool) -> FinetuneConfig:
    """The training recipe: the explicit ``epochs``/``lr``/``batch_size`` where given, else ``defaults``'.
    Default epochs are raised until ``defaults.min_steps`` optimizer steps (small corpora need more)."""
    batch_size = batch_size or defaults.batch_size
    if epochs is None:
        epochs = max(defaults.epochs, math.ceil(defaults.min_steps / math.ceil(n_examples / batch_size)))
    return FinetuneConfig(
        epochs=epochs, learning_rate=lr if lr is not None else defaults.learning_rate, batch_size=batch_size,
        warmup_ratio=defaults.warmup_ratio, weight_decay=defaults.weight_decay, lr_scheduler=defaults.lr_scheduler,
        seed=seed, rehearsal=rehearsal, freeze_embeddings=freeze_embeddings)


def _train(model, tokenizer, examples: list[dict], n_split: int, train_config: FinetuneConfig, out_dir: Path,
           progress: bool, use_cpu: bool, about: dict[str, Any], base_dir: Path | None) -> dict:
    """Train ``model`` in place with the HF Trainer (scratch files in a temporary folder next to
    ``out_dir``) and return the metrics :func:`finetune` records: accuracies over the first ``n_split``
    examples and the replayed rest, loss, seconds, sizes, ``about`` and, with a base, the task vector ratio."""
    from transformers import Trainer

    from mpu.data.qa import QACollator

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.trainer.", dir=out_dir.parent,
                                     ignore_cleanup_errors=True) as scratch:
        args = _finetune_arguments(train_config, Path(scratch), train_config.seed, progress, use_cpu)
        trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=QACollator(tokenizer.pad_token_id))
        _quiet_logs(trainer)
        started = time.perf_counter()
        result = trainer.train()
        train_seconds = time.perf_counter() - started
    model.eval()
    metrics = {
        **_split_and_rehearsal_accuracy(model, examples, n_split, tokenizer.pad_token_id),
        "train_loss": float(result.training_loss),
        "train_seconds": round(train_seconds, 2),
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_examples": len(examples),
        "n_rehearsal_examples": len(examples) - n_split,
        "n_train_tokens": sum(len(e["input_ids"]) for e in examples),
        "benchmark": about["benchmark"],
        "split": about["split"],
        "epochs": train_config.epochs,
        "learning_rate": train_config.learning_rate,
        "fingerprint": about["fingerprint"],
        "base": about["base"],
    }
    if base_dir is not None:
        metrics["task_vector_ratio"] = task_vector_ratio(model, base_dir)
    return metrics


def _save_atomically(out_dir: Path, model, tokenizer, record: dict) -> None:
    """Write the model, its tokenizer and ``record`` to a staging folder, then swap it in for
    ``out_dir``: a crash leaves the old model or none, never half of one. MPUError when ``out_dir``
    holds something `mpu finetune` did not write."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_model(staging, model, tokenizer, record)
        if out_dir.exists():
            if any(out_dir.iterdir()) and read_record(out_dir) is None:
                raise MPUError(f"{out_dir} exists and was not written by `mpu finetune`; refusing to replace it")
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def default_base_dir(data_dir: str | Path, model_config: TinyLlamaConfig | None = None) -> Path:
    """Where ``base="auto"`` keeps a dataset's base model: ``$MPU_CACHE/models/<data>/base-<config>``,
    one per dataset (its folder name, plus a hash of its path for a local copy) and model shape."""
    from mpu.data.builtin import cache_root, read_manifest

    data_dir = Path(data_dir)
    shape = hashlib.sha256(json.dumps(asdict(model_config or TinyLlamaConfig()), sort_keys=True).encode()).hexdigest()[:8]
    name = data_dir.name if read_manifest(data_dir) else \
        f"{data_dir.name}-{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]}"
    return cache_root() / "models" / name / f"base-{shape}"


def ensure_base(data_dir: str | Path, benchmark: str = "tofu", model_config: TinyLlamaConfig | dict | None = None,
                seed: int = 0, progress: bool = True, device: str | None = None, threads: int | None = None,
                epochs: float | None = None) -> Path:
    """The base model of ``data_dir`` (trained from scratch on :func:`base_training_data`, cached at
    :func:`default_base_dir` and reused while its fingerprint matches). Returns its directory."""
    if isinstance(model_config, dict):
        model_config = TinyLlamaConfig(**model_config)
    out = default_base_dir(data_dir, model_config)
    finetune(data_dir, benchmark, BASE_SPLIT, out, seed=seed, model_config=model_config, progress=progress,
             device=device, threads=threads, epochs=epochs)
    return out


def block_of(name: str) -> str:
    """The block a tensor belongs to: ``model.layers.3.mlp.up_proj.weight`` -> ``layers.3``; the
    embeddings, final norm and LM head are their own blocks."""
    parts = name.split(".")
    if "layers" in parts:
        index = parts.index("layers")
        return f"layers.{parts[index + 1]}"
    return parts[-2] if len(parts) > 1 else name


def task_vector_ratio(model, base_dir: str | Path) -> dict[str, float]:
    """Per block, RMS(theta - theta_base) / RMS(theta) over all the block's values (float32), for
    ``model`` (a module or a model directory) against the checkpoint in ``base_dir``. The server's
    noise is sigma_l = kappa * RMS(theta_l - theta_base,l); this ratio says how much smaller that is
    than kappa * RMS(theta_l), the scale without a base. Raises ``MPUError`` on a tensor mismatch."""
    import torch
    from safetensors.torch import load_file

    if not hasattr(model, "state_dict"):
        state = load_file(str(Path(model) / "model.safetensors"))
    else:
        state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    base = load_file(str(Path(base_dir) / "model.safetensors"))
    sums: dict[str, list[float]] = {}
    for name, tensor in base.items():
        if name not in state or state[name].shape != tensor.shape:
            raise MPUError(f"{base_dir}: tensor {name} does not match the model's")
        theta = state[name].to(torch.float32)
        delta = theta - tensor.to(torch.float32)
        entry = sums.setdefault(block_of(name), [0.0, 0.0])
        entry[0] += float(delta.pow(2).sum())
        entry[1] += float(theta.pow(2).sum())
    return {block: round(math.sqrt(d / t), 6) if t > 0 else 0.0 for block, (d, t) in sums.items()}


# The name before settings dataclasses were all called *Config with distinct stems (TrainingConfig is unlearning's).
TrainConfig = FinetuneConfig
