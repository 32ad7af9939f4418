"""Where a run's data and models come from: the built-in benchmark with its tiny target/retain models
(built, trained and cached on first use, the same cache as ``mpu demo``), local files and
directories, or the Hugging Face hub."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpu.errors import MPUError
from mpu.experiments.config import BUILTIN, ExperimentConfig

log = logging.getLogger(__name__)

# model.train.<bench> keys that mpu.experiments.finetune.finetune takes; the others must keep its defaults.
_FINETUNE_ARGS = {"epochs": "epochs", "learning_rate": "lr", "batch_size": "batch_size", "seed": "seed"}


@dataclass
class Prepared:
    target: str
    retain: str | None
    base: str | None
    forget_rows: list[dict[str, Any]]
    retain_rows: list[dict[str, Any]] | None
    eval_data: str | None  # what mpu.eval.evaluate takes as ``data``
    data_description: str


def split_spec(spec: str) -> tuple[str, str]:
    """``"forget10"`` -> (forget10, train) (TOFU: one config per split); ``"raw/forget"`` -> (raw, forget) (MUSE)."""
    config, sep, split = str(spec).partition("/")
    return (config, split) if sep else (config, "train")


def text_rows_to_qa(rows: list[dict[str, Any]], chunk_words: int, prompt_words: int) -> list[dict[str, Any]]:
    """Raw-text rows (MUSE corpora) as QA rows the methods train on: each text is cut into chunks of
    ``chunk_words`` words; the first ``prompt_words`` words of a chunk are the prompt, the rest the
    target. An approximation of OpenUnlearning's every-token loss: the prompt words carry no loss."""
    if chunk_words <= prompt_words:
        raise MPUError(f"data.text_chunk_words ({chunk_words}) must exceed data.text_prompt_words ({prompt_words})")
    out = []
    for row in rows:
        words = str(row.get("text", "")).split()
        for start in range(0, len(words), chunk_words):
            chunk = words[start:start + chunk_words]
            if len(chunk) <= prompt_words:
                continue
            out.append({"question": " ".join(chunk[:prompt_words]), "answer": " ".join(chunk[prompt_words:])})
    if not out:
        raise MPUError("the text corpus gave no training chunks")
    return out


def _rows(resolved, spec: str, settings: ExperimentConfig, what: str) -> list[dict[str, Any]]:
    config, split = split_spec(spec)
    rows = resolved.rows(config, split)
    if rows and "question" not in rows[0] and "text" in rows[0]:
        rows = text_rows_to_qa(rows, int(settings.data["text_chunk_words"]), int(settings.data["text_prompt_words"]))
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise MPUError(f"{what} ({resolved.description}, {spec}) row {number}: needs string fields question and answer")
    return rows


def builtin_root(settings: ExperimentConfig) -> Path:
    from mpu.data.builtin import BuildConfig, ensure_builtin

    return ensure_builtin(BuildConfig(**settings.builtin))


def builtin_base(settings: ExperimentConfig, root: Path) -> Path:
    """The built-in base model (general data, no fictitious entity), cached as ``mpu demo`` caches it."""
    from mpu.experiments.finetune import ensure_base

    return ensure_base(root, settings.benchmark, model_config=settings.model_config, progress=settings.progress)


def builtin_model(settings: ExperimentConfig, root: Path, split: str, name: str, base: str | None = None) -> Path:
    """The tiny model fine-tuned from ``base`` (None: trained from scratch) on ``split`` of the
    built-in benchmark, cached as ``mpu demo`` caches it."""
    from mpu.data.builtin import cache_root
    from mpu.experiments.finetune import FROM_BASE, TRAIN_DEFAULTS, finetune

    defaults = (FROM_BASE if base else TRAIN_DEFAULTS)[settings.benchmark]
    section = "from_base" if base else "train"
    kwargs: dict[str, Any] = {}
    for key, value in ((settings.finetune_from_base if base else settings.finetune) or {}).items():
        default = getattr(defaults, key, None)
        if key in _FINETUNE_ARGS:
            if key == "epochs" and value == default:
                continue  # keep finetune's calibrated default (it may raise epochs for small corpora)
            kwargs[_FINETUNE_ARGS[key]] = value
        elif value != default:
            raise MPUError(f"model.{section}.{settings.benchmark}.{key}={value!r}: only epochs, learning_rate, batch_size "
                           f"and seed can be changed for the built-in models (default {default!r})")
    path = cache_root() / "models" / root.name / (name if base is None else f"{name}-from-base")
    finetune(root, settings.benchmark, split, path, model_config=None if base else settings.model_config,
             progress=settings.progress, base=base, **kwargs)
    return path


def prepare(settings: ExperimentConfig) -> Prepared:
    """Build/fetch what the run needs and load the forget and retain rows."""
    from mpu.data.loaders import resolve_source
    from mpu.data.qa import load_qa_rows

    data = settings.data
    target, retain, base = settings.model["target"], settings.model["retain"], settings.model["base"]
    eval_data: str | None
    needs_source = not data.get("forget_file") or (not data.get("retain_file") and data.get("retain_split")) \
        or settings.evaluation.get("enabled", True)
    resolved = None
    if str(data["source"]) == BUILTIN:
        root = builtin_root(settings)
        eval_data = str(root)
        if base == BUILTIN:   # the general-data base the built-in target/retain are fine-tuned from
            base = str(builtin_base(settings, root))
        # the built-in target/retain models are fine-tuned from the built-in base when model.base is builtin
        tuned = {"base": base} if settings.model["base"] == BUILTIN else {}
        if settings.benchmark == "muse":
            # MUSE format: one target on all news, one retain model without the forget stories; named
            # apart from the TOFU models that share the cache folder.
            if target == BUILTIN:
                target = str(builtin_model(settings, root, "full", "muse-target", **tuned))
            if retain == BUILTIN:
                retain = str(builtin_model(settings, root, "retain", "muse-retain", **tuned))
        else:
            if target == BUILTIN:
                target = str(builtin_model(settings, root, "full", "target", **tuned))
            if retain == BUILTIN:
                retain_split = data.get("retain_split")
                if not retain_split or not str(retain_split).startswith("retain"):
                    raise MPUError(f"model.retain builtin needs data.retain_split retain90/95/99, got {retain_split!r}")
                retain = str(builtin_model(settings, root, str(retain_split), str(retain_split), **tuned))
        resolved = resolve_source(root, settings.benchmark)
    elif data.get("source") is None:
        eval_data = None
        if settings.evaluation.get("enabled", True):
            raise MPUError("evaluation needs benchmark data: set data.source (or evaluation.enabled=false)")
    else:
        eval_data = str(data["source"])
        if needs_source:
            resolved = resolve_source(eval_data, settings.benchmark)

    if data.get("forget_file"):
        forget_rows = load_qa_rows(data["forget_file"])
    else:
        if not data.get("forget_split"):
            raise MPUError("set data.forget_split (or data.forget_file)")
        if resolved is None:
            raise MPUError("set data.source (benchmark data) or data.forget_file")
        forget_rows = _rows(resolved, data["forget_split"], settings, "forget set")
    if data.get("retain_file"):
        retain_rows = load_qa_rows(data["retain_file"])
    elif data.get("retain_split") and resolved is not None:
        retain_rows = _rows(resolved, data["retain_split"], settings, "retain set")
    else:
        retain_rows = None
    description = resolved.description if resolved is not None else "local files"
    return Prepared(target, retain, base, forget_rows, retain_rows, eval_data, description)
