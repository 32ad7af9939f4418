"""What the server published: the public manifest and the copies it lists, checked as hostile input.

Before anything of a copy is loaded, the client checks (``PublishedCopy.verify``): the manifest's
every field by type, range and length; that each copy folder is a real folder inside the inbox and
holds only regular data files (weights, config, generation config, tokenizer: no code, no pickles,
no symlinks, FIFOs or devices); that no config carries ``auto_map`` (the hook that would make
transformers import Python shipped with the copy); that the files match the manifest's checksum; and
that the weight headers declare no more tensors than the config's architecture has. Models and
tokenizers are then loaded with ``trust_remote_code=False``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpu.checkpoint import dir_sha256, read_json
from mpu.checkpoint.files import (
    CONFIG, MAX_MANIFEST_BYTES, MAX_MODEL_FILE_BYTES, TOKENIZER_CONFIG, check_data_folder, checked_path, is_model_file,
)
from mpu.errors import InputError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mpu-publication/1"
MAX_COPIES = 1000
MAX_ROUNDS = 10_000
PUBLISH_DTYPES = ("float32", "bfloat16", "float16")
MANIFEST_KEYS = {"format", "round", "rounds", "publication_id", "architecture", "dtype", "copies"}
COPY_KEYS = {"id", "path", "sha256"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a copy folder, a publication id, an architecture
# A header may declare at most this many tensors per parameter of the architecture (MoE checkpoints
# store per-expert tensors that transformers fuses), plus a constant: a bound against crafted headers,
# not a validity check (loading checks the names).
TENSORS_PER_PARAMETER = 64
TENSOR_SLACK = 4096


@dataclass(frozen=True)
class PublishedCopy:
    id: int
    path: Path
    sha256: str
    inbox: Path

    def verify(self) -> None:
        """Refuse a copy that is unsafe to load or not the one the manifest names, before loading it.

        Raises InputError naming the offending file: a symlinked/FIFO/device entry, a code or pickle
        file or any other non-data file, ``auto_map`` in a config, a checksum mismatch (corrupt or
        swapped copy), an unknown architecture, or a weight header larger than the architecture needs.
        """
        names = check_data_folder(self.path, self.inbox, "published copy", is_model_file)
        if CONFIG not in names:
            raise InputError(self.path / CONFIG, "missing: a copy is a Hugging Face model folder")
        for name in (CONFIG, TOKENIZER_CONFIG):
            if name in names:
                data = read_json(self.path / name, name, MAX_MODEL_FILE_BYTES)
                if not isinstance(data, dict):
                    raise InputError(self.path / name, "expected a JSON object")
                if "auto_map" in data:
                    raise InputError(self.path / name, "carries auto_map (custom code shipped with the copy); "
                                                       "the client never runs code from the server")
        if dir_sha256(self.path) != self.sha256:
            raise InputError(self.path, "checksum does not match the publication manifest (corrupt or modified copy)")
        self.check_weights()

    def check_weights(self) -> None:
        """The weight headers, counted against the tensors of the copy's architecture (built on the
        meta device: no memory, no code) before transformers parses them."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from mpu.checkpoint import CheckpointReader

        try:
            config = AutoConfig.from_pretrained(self.path, trust_remote_code=False)
            with torch.device("meta"):
                shapes = {name: tuple(t.shape) for name, t in AutoModelForCausalLM.from_config(config, trust_remote_code=False).state_dict().items()}
        except Exception as err:  # transformers raises ValueError, KeyError, TypeError, OSError ...
            raise InputError(self.path / CONFIG, f"not a usable model config ({type(err).__name__}: {str(err)[:300]})") from None
        reader = CheckpointReader(self.path, max_tensors=TENSORS_PER_PARAMETER * len(shapes) + TENSOR_SLACK)
        unread = sorted(set(self.path.glob("*.safetensors")) - set(reader.shards()))
        if unread:
            raise InputError(unread[0], "weight file not named in the copy's index")
        for name in reader.names():
            if name in shapes and reader.shape(name) != shapes[name]:
                raise InputError(reader.shard(name), f"tensor {name} has shape {reader.shape(name)}, the config's architecture needs {shapes[name]}")


@dataclass(frozen=True)
class Publication:
    inbox: Path
    round: int
    publication_id: str
    copies: list[PublishedCopy]
    manifest: dict[str, Any]

    def select(self, copy_ids: list[int] | None) -> list[PublishedCopy]:
        if not copy_ids:
            return self.copies
        by_id = {copy.id: copy for copy in self.copies}
        unknown = sorted(set(copy_ids) - set(by_id))
        if unknown:
            raise InputError(self.inbox / MANIFEST, f"no copy {unknown}; published copies are {sorted(by_id)}")
        return [by_id[copy_id] for copy_id in dict.fromkeys(copy_ids)]


def read_publication(inbox: str | Path) -> Publication:
    """Read and validate ``inbox/manifest.json``. Every field is checked by type, range and length;
    copy ids and folders must be unique. Raises InputError naming the manifest."""
    inbox = Path(inbox)
    path = checked_path(inbox, MANIFEST, "publication manifest")
    manifest = read_json(path, "publication manifest", MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(path, f"not an mpu publication manifest (expected format {MANIFEST_FORMAT!r})")

    def bad(reason: str) -> InputError:
        return InputError(path, f"malformed publication manifest: {reason}")

    unknown = sorted(set(manifest) - MANIFEST_KEYS)
    if unknown:
        raise bad(f"unexpected fields {unknown[:5]}")
    round_number = _int(manifest.get("round"), 1, MAX_ROUNDS, "round", bad)
    if "rounds" in manifest:
        _int(manifest["rounds"], round_number, MAX_ROUNDS, "rounds", bad)
    publication_id = _name(manifest.get("publication_id"), "publication_id", bad)
    if "architecture" in manifest:
        _name(manifest["architecture"], "architecture", bad)
    if "dtype" in manifest and manifest["dtype"] not in PUBLISH_DTYPES:
        raise bad(f"dtype must be one of {PUBLISH_DTYPES}")
    entries = manifest.get("copies")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_COPIES:
        raise bad(f"copies must be a list of 1 to {MAX_COPIES} entries")
    copies, folders = [], set()
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != COPY_KEYS:
            raise bad(f"each copy needs exactly the fields {sorted(COPY_KEYS)}")
        copy_id = _int(entry["id"], 1, MAX_COPIES, "copy id", bad)
        folder = entry["path"]
        if not isinstance(folder, str) or not _NAME.fullmatch(folder) or folder in (".", ".."):
            raise InputError(path, f"copy path {str(folder)[:100]!r} leaves the inbox or is not a plain folder name")
        if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
            raise bad(f"copy {copy_id}: sha256 must be 64 lowercase hex digits")
        if any(copy.id == copy_id for copy in copies):
            raise bad(f"copy id {copy_id} appears twice")
        if folder in folders:
            raise bad(f"copy folder {folder!r} appears twice")
        folders.add(folder)
        copies.append(PublishedCopy(copy_id, inbox / folder, entry["sha256"], inbox))
    return Publication(inbox, round_number, publication_id, copies, manifest)


def _int(value: Any, low: int, high: int, what: str, bad) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"{what} must be an integer in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def _name(value: Any, what: str, bad) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise bad(f"{what} must be 1-100 letters, digits, '.', '_' or '-', got {str(value)[:40]!r}")
    return value
