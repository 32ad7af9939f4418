"""Atomic writes, directory checksums and copying a model's non-weight files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

from mpu.errors import InputError

# Files of a HF model directory that are not weights and are safe to pass on. Everything else
# (pickled weights, remote code, READMEs that may describe the private model) stays behind.
WEIGHT_INDEX = "model.safetensors.index.json"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary sibling, fsync, then rename over ``path``: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any, mode: int = 0o644) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file we did not write ourselves; every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"{what} is truncated or not valid JSON ({err.msg} at line {err.lineno})") from None


@contextlib.contextmanager
def staging_dir(final: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Build a directory next to ``final`` and rename it into place only if the block succeeds.

    On any error the partial directory is removed, so ``final`` is either absent, the old one,
    or complete.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise InputError(final, "already exists (remove it or choose another path)")
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.with_name(f".{final.name}.partial-{secrets.token_hex(4)}")
    stage.mkdir()
    try:
        yield stage
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dir_sha256(path: str | Path) -> str:
    """One checksum for every regular file under ``path`` (names and contents), order-independent.

    Server and client compute it the same way, so a return can name the exact copy it came from.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        digest.update(f"{relative}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


# What a model folder may carry on into a published copy, the server's work directory or an export:
# the model's config and its tokenizer. Anything else (mpu_finetune.json with the owner's training
# fingerprint and metrics, unlearn_summary.json, Trainer's trainer_state.json / all_results.json,
# eval logs) is the owner's metadata and stays behind.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
               "chat_template.jinja", "chat_template.json")
MODEL_FILE_PATTERNS = ("*.model", "*.tiktoken")


def is_model_file(name: str) -> bool:
    """Whether a file of a model folder is part of the model (config, tokenizer), not metadata."""
    import fnmatch

    return name in MODEL_FILES or any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def copy_model_files(src: str | Path, dst: str | Path, config_updates: dict | None = None) -> list[str]:
    """Copy config, generation config and tokenizer files (not weights, no metadata: see
    :func:`is_model_file`) from ``src`` to ``dst``.

    ``config.json`` is rewritten: ``config_updates`` applied, local paths (``_name_or_path``) dropped.
    """
    src, dst = Path(src), Path(dst)
    copied = []
    for file in sorted(src.iterdir()):
        if not file.is_file() or file.name == WEIGHT_INDEX or not is_model_file(file.name):
            continue
        if file.name == "config.json":
            config = read_json(file, "model config")
            config.pop("_name_or_path", None)
            config.update(config_updates or {})
            (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copyfile(file, dst / file.name)
        copied.append(file.name)
    if "config.json" not in copied:
        raise InputError(src, "no config.json: not a Hugging Face model directory")
    return copied
