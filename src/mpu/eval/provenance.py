"""Which data a model should be evaluated on: the training data its records name, else the cached
built-in dataset whose tokenizer it uses, else the default built-in benchmark.

``mpu finetune`` writes ``mpu_finetune.json`` beside the model (its training data and benchmark);
``mpu unlearn`` writes ``unlearn_summary.json`` naming the model it started from, whose record counts.
"""

from __future__ import annotations

import json
from pathlib import Path

from mpu.errors import InputError

FINETUNE_RECORD = "mpu_finetune.json"      # written by `mpu finetune` beside the model: its training data
UNLEARN_SUMMARY = "unlearn_summary.json"   # written by `mpu unlearn`: names the model it started from


def _recorded(model_dir: Path) -> tuple[dict, Path] | None:
    """The finetune record of ``model_dir``, or of the model its ``unlearn_summary.json`` names."""
    for folder in (model_dir, None):
        if folder is None:
            summary = model_dir / UNLEARN_SUMMARY
            if not summary.is_file():
                return None
            try:
                base = json.loads(summary.read_text(encoding="utf-8")).get("base_model")
            except (OSError, ValueError):
                return None
            if not isinstance(base, str):
                return None
            folder = Path(base)
        record = folder / FINETUNE_RECORD
        if record.is_file():
            try:
                content = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InputError(record, f"unreadable training record ({err})") from None
            if isinstance(content, dict):
                return content, record
    return None


def _vocab(tokenizer_json: Path) -> dict | None:
    """The vocabulary (token -> id) of a ``tokenizer.json``; None when missing or unreadable."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer_json)).get_vocab()
    except Exception:  # a missing or foreign tokenizer file simply does not match
        return None


def _builtin_with_tokenizer(model_dir: Path) -> Path | None:
    """The cached built-in dataset (under ``$MPU_CACHE``) whose tokenizer ``model_dir`` uses: every
    model trained on a built-in dataset shares its tokenizer, and the datasets' tokenizers differ."""
    from mpu.data.builtin import cache_root, read_manifest

    ours = _vocab(model_dir / "tokenizer.json")
    if not ours:
        return None
    root = cache_root()
    candidates = sorted(root.glob("builtin-v*"), key=lambda path: (len(path.name), path.name)) if root.is_dir() else []
    for folder in candidates:
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest and _vocab(folder / manifest.get("tokenizer", "tokenizer") / "tokenizer.json") == ours:
            return folder
    return None


def model_data(model_dir: str | Path, benchmark: str, data: str | Path | None = None) -> tuple[str | None, str]:
    """Which data to evaluate ``model_dir`` on, and a line saying which and why.

    In order: ``data`` when given; the data recorded in the model's ``mpu_finetune.json`` (or in
    that of the model its ``unlearn_summary.json`` names), when it was trained on ``benchmark``; the
    cached built-in dataset whose tokenizer the model uses (an exported or unlearned model carries no
    record, but keeps its tokenizer); else the default built-in benchmark (None). Raises InputError
    when the recorded data no longer exists.
    """
    if data is not None:
        return str(data), f"data: {data} (--data)"
    model_dir = Path(model_dir)
    found = _recorded(model_dir)
    if found is not None:
        record, path = found
        trained_on = (record.get("metrics") or {}).get("benchmark")
        recorded = record.get("data")
        if isinstance(recorded, str) and trained_on in (None, benchmark):
            if not Path(recorded).expanduser().is_dir():
                raise InputError(path, f"records its training data at {recorded}, which does not exist any more; "
                                       "pass --data")
            return recorded, f"data: {recorded} (recorded in {path})"
    if model_dir.is_dir():
        builtin = _builtin_with_tokenizer(model_dir)
        if builtin is not None:
            return str(builtin), (f"data: {builtin} (the cached built-in dataset whose tokenizer {model_dir} uses; "
                                  "pass --data to choose another)")
    return None, (f"data: the default built-in benchmark ({model_dir} records no training data and uses no cached "
                  "built-in dataset's tokenizer; pass --data to choose)")
