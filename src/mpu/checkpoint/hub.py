"""Resolve a model argument: a local directory, or a Hugging Face hub id downloaded to the cache."""

from __future__ import annotations

import os
from pathlib import Path

from mpu.errors import MPUError

# Only what a model directory needs; never pickled weights or remote code.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def resolve_model_dir(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MPUError(f"{name_or_path}: not a model directory")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise MPUError(f"{name_or_path}: no such model directory")
    return _download(name_or_path)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    how_to = (
        f"download it where the hub is reachable (`hf download {repo_id} --local-dir DIR`), "
        "copy DIR here and pass the directory instead of the hub name"
    )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        try:
            return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
        except Exception:
            raise MPUError(f"{repo_id}: not in the local cache and HF_HUB_OFFLINE=1; {how_to}") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, etag_timeout=5))
    except Exception as err:
        raise MPUError(f"{repo_id}: could not fetch from the Hugging Face hub ({type(err).__name__}); {how_to}") from None
