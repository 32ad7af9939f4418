"""Validation of the client's returns (SPEC §8). Nothing here writes anything.

A return folder holds one sub-folder per copy (``update-K/``), each with ``update.json`` and the
update tensors as safetensors: either the dense Delta' (``kind: full``), or LoRA factors
(``kind: lora``: ``<weight name>.lora_A`` and ``.lora_B`` with Delta' = B @ A). Every check names
the file and the reason. The returns are the other party's files and are treated as hostile, in this
order, before anything is read from them:

1. paths: every ``update-K`` folder, ``update.json``, index and shard is a regular file or folder that
   really lies inside the returns folder (no symbolic links, FIFOs, devices, sub-folders, code or
   pickles: :func:`mpu.checkpoint.files.check_data_folder`);
2. the manifest: at most ``MAX_MANIFEST_BYTES``, every field checked by type, range and length
   (:func:`check_manifest`; unknown fields are refused);
3. shard headers: size-checked and counted against the tensors the return may hold before the
   safetensors library parses them (:class:`mpu.checkpoint.CheckpointReader` with ``max_tensors``);
4. tensor names, shapes, dtypes and LoRA ranks against the current model.

The checks that need the tensor values (NaN/Inf, the per-block norm bound) run while Post-Process
streams them, before anything is committed.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpu.checkpoint import CheckpointReader, read_json
from mpu.checkpoint.files import MAX_MANIFEST_BYTES, check_data_folder, checked_path, is_weight_file
from mpu.errors import InputError

UPDATE_MANIFEST = "update.json"
UPDATE_FORMAT = "mpu-update/1"
LORA_A, LORA_B = ".lora_A", ".lora_B"
UPDATE_FOLDER = re.compile(r"^update-([0-9]{1,6})$")

# Limits on the manifest's fields. They are far above what the client writes (a method name of ~10
# characters, ~10 hyperparameters, ~20 training options) and far below what could cost memory or time.
MAX_NAME_CHARS = 64  # method names, setting names
MAX_TEXT_CHARS = 4096  # a string setting (a scheduler name, a module list, a system prompt)
MAX_SETTINGS = 64  # keys in ``hparams`` / ``training``
MAX_LIST_ITEMS = 64  # items of a list-valued setting
MAX_STEPS = 10**9
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_HEX = re.compile(r"^[0-9a-f]+$")
LOSS_KEYS = ("first", "last", "min", "mean")


@dataclass
class ReturnedUpdate:
    copy_id: int
    path: Path
    manifest: dict[str, Any]
    reader: CheckpointReader

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def manifest_path(self) -> Path:
        return self.path / UPDATE_MANIFEST

    def dense(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Delta' of one weight in float32 (the caller checks the values)."""
        if self.kind == "full":
            return self.reader.get(name).to(torch.float32)
        if name + LORA_A in self.reader:
            return self.reader.get(name + LORA_B).to(torch.float32) @ self.reader.get(name + LORA_A).to(torch.float32)
        return torch.zeros(shape, dtype=torch.float32)  # LoRA left this weight alone

    def tensor_file(self, name: str) -> Path:
        """The file holding ``name`` (its LoRA factor for a LoRA return), for error messages."""
        stored = name if self.kind == "full" else name + LORA_A
        return self.reader.shard(stored) if stored in self.reader else self.path


def find_returns(returns_dir: str | Path, published: dict[str, Any], expected: CheckpointReader) -> list[ReturnedUpdate]:
    """All checks that need no tensor values; returns one validated update per published copy, in
    copy order. Raises InputError naming the file and the reason."""
    returns_dir = Path(returns_dir)
    if not returns_dir.is_dir():
        raise InputError(returns_dir, "returns folder not found")
    folders = _update_folders(returns_dir)
    known = {copy["id"]: copy["sha256"] for copy in published["copies"]}
    manifests = {}
    for folder in folders:  # every path and manifest checked before any shard is opened
        check_data_folder(folder, returns_dir, "update folder", lambda name: name == UPDATE_MANIFEST or is_weight_file(name))
        manifest_path = checked_path(returns_dir, (folder / UPDATE_MANIFEST).relative_to(returns_dir), "update manifest")
        manifest = check_manifest(read_json(manifest_path, "update manifest", MAX_MANIFEST_BYTES), manifest_path, published)
        if manifest["copy_id"] not in known:
            raise InputError(manifest_path, f"unknown copy id {manifest['copy_id']}; this round published {sorted(known)}")
        match = UPDATE_FOLDER.match(folder.name)
        if match and int(match.group(1)) != manifest["copy_id"]:
            raise InputError(manifest_path, f"folder {folder.name} holds the update of copy {manifest['copy_id']}")
        manifests[folder] = manifest
    updates: dict[int, ReturnedUpdate] = {}
    for folder, manifest in manifests.items():
        manifest_path = folder / UPDATE_MANIFEST
        copy_id = manifest["copy_id"]
        if copy_id in updates:
            raise InputError(manifest_path, f"copy id {copy_id} repeated (also in {updates[copy_id].path})")
        if manifest["copy_sha256"] != known[copy_id]:
            raise InputError(manifest_path, f"checksum of the copy it was trained from does not match published copy {copy_id}")
        updates[copy_id] = ReturnedUpdate(copy_id, folder, manifest, None)  # type: ignore[arg-type]
    missing = sorted(set(known) - set(updates))
    if missing:
        raise InputError(returns_dir, f"no update for copies {missing}; the harmonic combination needs all {len(known)}")
    limits = {"full": len(expected.names()), "lora": 2 * sum(1 for name in expected.names() if len(expected.shape(name)) == 2)}
    for update in updates.values():
        update.reader = CheckpointReader(update.path, max_tensors=limits[update.kind])
        _check_tensors(update, expected)
    return [updates[copy_id] for copy_id in sorted(updates)]


def _update_folders(returns_dir: Path) -> list[Path]:
    """The ``update-K`` folders of ``returns_dir`` (or ``returns_dir`` itself when it holds
    ``update.json`` directly). Entries with other names are not read; hidden ones (the client's
    unfinished staging folders) are skipped."""
    if os.path.lexists(returns_dir / UPDATE_MANIFEST):
        return [returns_dir]
    folders = []
    with os.scandir(returns_dir) as entries:
        for entry in entries:
            if not entry.name.startswith("update"):
                continue
            path = returns_dir / entry.name
            if not UPDATE_FOLDER.match(entry.name):
                raise InputError(path, "not an update folder name (expected update-<copy id>)")
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise InputError(path, f"update folder is a symbolic link; links are never followed out of {returns_dir}")
            if not stat.S_ISDIR(info.st_mode):
                raise InputError(path, "update folder is not a folder (a file, FIFO or device)")
            folders.append(path)
    if not folders:
        raise InputError(returns_dir, f"no update-K folders and no {UPDATE_MANIFEST} in it")
    return sorted(folders, key=lambda path: int(UPDATE_FOLDER.match(path.name).group(1)) if path != returns_dir else 0)


def check_manifest(manifest: Any, path: Path, published: dict[str, Any]) -> dict[str, Any]:
    """Every field of an update manifest, by type, range and length; returns it unchanged.

    Required: ``format`` (``mpu-update/1``), ``kind`` (full | lora), ``round`` (this round),
    ``copy_id`` (an int in 1..copies published), ``copy_sha256`` (64 hex digits), ``method`` (a name of
    1..64 characters), ``steps`` (an int in 0..1e9). Optional, as the client writes them:
    ``publication_id`` (this publication's), ``reference_round`` (1..round), ``hparams`` and ``training``
    (flat objects of named scalars or short lists), ``seconds`` (finite, >= 0), ``loss`` (first/last/
    min/mean, finite numbers or null), ``encoding`` (the prompt format, chat-template hash and length
    policy, ``ENCODING_KEYS``), ``dp`` (the DP-SGD guarantee, ``DP_KEYS``). Booleans are not integers
    here. Any other field is refused.
    """
    if not isinstance(manifest, dict):
        raise InputError(path, "update manifest is not a JSON object")
    if manifest.get("format") != UPDATE_FORMAT:
        raise InputError(path, f"not an mpu update manifest (expected format {UPDATE_FORMAT!r})")
    unknown = sorted(str(key)[:MAX_NAME_CHARS] for key in manifest if key not in _FIELDS)
    if unknown:
        raise InputError(path, f"unknown fields {unknown[:5]}; an update manifest holds only {sorted(_FIELDS)}")
    for key in _REQUIRED:
        if key not in manifest:
            raise InputError(path, f"field {key!r} missing")
    round_number = published["round"]
    _int(manifest, "round", path, 1, MAX_STEPS)
    if manifest["round"] != round_number:
        raise InputError(path, f"update is for round {manifest['round']}, the server is in round {round_number}")
    _int(manifest, "copy_id", path, 1, MAX_STEPS)
    _text(manifest, "copy_sha256", path, _HEX, 64, 64)
    if manifest["kind"] not in ("full", "lora"):
        raise InputError(path, f"field 'kind' must be 'full' or 'lora', got {_show(manifest['kind'])}")
    _text(manifest, "method", path, _NAME, 1, MAX_NAME_CHARS)
    _int(manifest, "steps", path, 0, MAX_STEPS)
    if "publication_id" in manifest:
        _text(manifest, "publication_id", path, _HEX, 1, 64)
        if published.get("publication_id") is not None and manifest["publication_id"] != published["publication_id"]:
            raise InputError(path, f"update is for publication {manifest['publication_id']}, this round published {published['publication_id']}")
    if "reference_round" in manifest:
        _int(manifest, "reference_round", path, 1, round_number)
    for key in ("hparams", "training"):
        if key in manifest:
            _settings(manifest[key], key, path)
    if "seconds" in manifest:
        _number(manifest["seconds"], "seconds", path, allow_none=False)
        if manifest["seconds"] < 0:
            raise InputError(path, f"field 'seconds' must be >= 0, got {manifest['seconds']}")
    if "encoding" in manifest:
        _encoding(manifest["encoding"], path)
    if "dp" in manifest:
        _dp(manifest["dp"], path)
    if "loss" in manifest:
        loss = manifest["loss"]
        if not isinstance(loss, dict) or set(loss) - set(LOSS_KEYS):
            raise InputError(path, f"field 'loss' must be an object with keys among {list(LOSS_KEYS)}")
        for key, value in loss.items():
            _number(value, f"loss.{key}", path, allow_none=True)
    return manifest


_REQUIRED = ("format", "kind", "round", "copy_id", "copy_sha256", "method", "steps")
_FIELDS = frozenset(_REQUIRED) | {"publication_id", "reference_round", "hparams", "training", "seconds", "loss",
                                  "encoding", "dp"}
# ``encoding``: how the client rendered and cut its rows (mpu.data.qa.Encoder.record plus truncation counts).
ENCODING_KEYS = {"prompt_format": "settings", "chat_template_sha256": "sha256", "max_length": "count",
                 "truncate": "bool", "rows_truncated": "count", "tokens_truncated": "count"}
# ``dp``: the DP-SGD guarantee of the update (mpu.methods.dp.PrivateSteps.report).
DP_KEYS = {"epsilon": "number", "epsilon_one_copy": "number", "runs": "count", "delta": "number",
           "clip_norm": "number", "noise_multiplier": "number", "sample_rate": "number", "steps": "count",
           "target_epsilon": "number", "accountant": "text"}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def _int(manifest: dict, key: str, path: Path, low: int, high: int) -> None:
    value = manifest[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(path, f"field {key!r} must be an integer, got {type(value).__name__} {_show(value)}")
    if not low <= value <= high:
        raise InputError(path, f"field {key!r} must be in [{low}, {high}], got {value}")


def _text(manifest: dict, key: str, path: Path, pattern: re.Pattern, shortest: int, longest: int) -> None:
    value = manifest[key]
    if not isinstance(value, str):
        raise InputError(path, f"field {key!r} must be a string, got {type(value).__name__} {_show(value)}")
    if not shortest <= len(value) <= longest:
        raise InputError(path, f"field {key!r} must be {shortest}..{longest} characters, got {len(value)}")
    if not pattern.match(value):
        raise InputError(path, f"field {key!r} has characters outside {pattern.pattern}: {_show(value)}")


def _number(value: Any, key: str, path: Path, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(path, f"field {key!r} must be a finite number, got {_show(value)}")


def _settings(value: Any, key: str, path: Path) -> None:
    """``hparams``/``training``: a flat object of named scalars (or short lists of scalars)."""
    if not isinstance(value, dict):
        raise InputError(path, f"field {key!r} must be an object, got {type(value).__name__}")
    if len(value) > MAX_SETTINGS:
        raise InputError(path, f"field {key!r} has {len(value)} entries, more than {MAX_SETTINGS}")
    for name, item in value.items():
        if not _NAME.match(name) or len(name) > MAX_NAME_CHARS:
            raise InputError(path, f"field {key!r} has a setting named {_show(name)}")
        items = item if isinstance(item, list) else [item]
        if len(items) > MAX_LIST_ITEMS:
            raise InputError(path, f"setting {key}.{name} has {len(items)} items, more than {MAX_LIST_ITEMS}")
        for scalar in items:
            if isinstance(scalar, str):
                if len(scalar) > MAX_TEXT_CHARS:
                    raise InputError(path, f"setting {key}.{name} is {len(scalar)} characters, more than {MAX_TEXT_CHARS}")
            elif isinstance(scalar, float) and not math.isfinite(scalar):
                raise InputError(path, f"setting {key}.{name} is not finite")
            elif scalar is not None and not isinstance(scalar, (bool, int, float)):
                raise InputError(path, f"setting {key}.{name} must be a number, string, boolean or null (or a list of them), got {_show(scalar)}")


def _record(value: Any, key: str, path: Path, kinds: dict[str, str]) -> None:
    """A small object whose keys are among ``kinds`` (key -> settings | sha256 | count | bool | number |
    text), each of that kind or null."""
    if not isinstance(value, dict):
        raise InputError(path, f"field {key!r} must be an object, got {type(value).__name__}")
    unknown = sorted(str(name)[:MAX_NAME_CHARS] for name in value if name not in kinds)
    if unknown:
        raise InputError(path, f"field {key!r} has unknown keys {unknown[:5]}; known: {sorted(kinds)}")
    for name, item in value.items():
        kind, where = kinds[name], f"{key}.{name}"
        if item is None:
            continue
        if kind == "settings":
            _settings(item, where, path)
        elif kind == "sha256":
            _text(value, name, path, _HEX, 64, 64)
        elif kind == "count":
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= MAX_STEPS:
                raise InputError(path, f"field {where!r} must be an integer in [0, {MAX_STEPS}], got {_show(item)}")
        elif kind == "bool":
            if not isinstance(item, bool):
                raise InputError(path, f"field {where!r} must be true or false, got {_show(item)}")
        elif kind == "number":
            _number(item, where, path, allow_none=True)
            if item < 0:
                raise InputError(path, f"field {where!r} must be >= 0, got {item}")
        elif not isinstance(item, str) or len(item) > MAX_NAME_CHARS:
            raise InputError(path, f"field {where!r} must be a string of at most {MAX_NAME_CHARS} characters, got {_show(item)}")


def _encoding(value: Any, path: Path) -> None:
    _record(value, "encoding", path, ENCODING_KEYS)


def _dp(value: Any, path: Path) -> None:
    _record(value, "dp", path, DP_KEYS)
    if value.get("delta") is not None and not 0 < value["delta"] < 1:
        raise InputError(path, f"field 'dp.delta' must be in (0, 1), got {value['delta']}")


def _check_tensors(update: ReturnedUpdate, expected: CheckpointReader) -> None:
    if update.kind == "full":
        _check_full(update, expected)
    else:
        _check_lora(update, expected)


def _check_full(update: ReturnedUpdate, expected: CheckpointReader) -> None:
    got, want = set(update.reader.names()), set(expected.names())
    if want - got:
        raise InputError(update.path, f"tensors missing: {', '.join(sorted(want - got)[:5])}")
    if got - want:
        raise InputError(update.path, f"unexpected tensors: {', '.join(sorted(got - want)[:5])}")
    for name in sorted(want):
        _check_meta(update, name, expected.shape(name))


def _check_lora(update: ReturnedUpdate, expected: CheckpointReader) -> None:
    """Each adapted 2-D weight W (out x in) has A (r x in) and B (out x r) with one rank r,
    1 <= r <= min(out, in)."""
    names = set(update.reader.names())
    if not names:
        raise InputError(update.path, "a LoRA return with no factors")
    for name in sorted(names):
        base = name.removesuffix(LORA_A).removesuffix(LORA_B)
        if base == name or base not in expected or len(expected.shape(base)) != 2:
            raise InputError(update.path, f"unexpected tensor {name!r} (LoRA factors are <2-D weight name>.lora_A/.lora_B)")
        partner = base + (LORA_B if name.endswith(LORA_A) else LORA_A)
        if partner not in names:
            raise InputError(update.path, f"tensor {name!r} has no partner {partner!r}")
        if len(update.reader.shape(name)) != 2:
            raise InputError(update.reader.shard(name), f"LoRA factor {name} has shape {update.reader.shape(name)}; factors are 2-D")
    for name in sorted(n for n in names if n.endswith(LORA_A)):
        base = name.removesuffix(LORA_A)
        out_features, in_features = expected.shape(base)
        rank = update.reader.shape(name)[0]
        if not 1 <= rank <= min(out_features, in_features):
            raise InputError(update.reader.shard(name), f"LoRA factor {name} has rank {rank}, expected 1..{min(out_features, in_features)}")
        _check_meta(update, name, (rank, in_features))
        _check_meta(update, base + LORA_B, (out_features, rank))


def _check_meta(update: ReturnedUpdate, name: str, shape: tuple[int, ...]) -> None:
    if update.reader.shape(name) != tuple(shape):
        raise InputError(update.reader.shard(name), f"tensor {name} has shape {update.reader.shape(name)}, expected {tuple(shape)}")
    if update.reader.dtype(name) != torch.float32:
        raise InputError(update.reader.shard(name), f"tensor {name} has dtype {update.reader.dtype(name)}, expected float32")
