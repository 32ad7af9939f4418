"""Validation of the client's returns. Nothing here writes anything.

A return folder holds one sub-folder per copy (``update-K/``), each with ``update.json`` and the
update tensors as safetensors: either the dense Delta' (``kind: full``), or LoRA factors
(``kind: lora``: ``<weight name>.lora_A`` and ``.lora_B`` with Delta' = B @ A); the layout and the
manifest live in :mod:`mpu.protocol`. Every check names the file and the reason. The returns are the
other party's files and are treated as hostile, in this order, before anything is read from them:

1. paths: every ``update-K`` folder, ``update.json``, index and shard is a regular file or folder that
   really lies inside the returns folder (no symbolic links, FIFOs, devices, sub-folders, code or
   pickles: :func:`mpu.checkpoint.files.check_data_folder`);
2. the manifest: at most ``MAX_MANIFEST_BYTES``, every field checked by type, range and length
   (:meth:`mpu.protocol.UpdateManifest.from_json`; unknown fields are refused);
3. shard headers: size-checked and counted against the tensors the return may hold before the
   safetensors library parses them (:class:`mpu.checkpoint.CheckpointReader` with ``max_tensors``);
4. tensor names, shapes, dtypes and LoRA ranks against the current model.

The checks that need the tensor values (NaN/Inf, the per-block norm bound) run while Post-Process
streams them, before anything is committed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from mpu.checkpoint import CheckpointReader, read_json
from mpu.checkpoint.files import MAX_MANIFEST_BYTES, MAX_MODEL_FILE_BYTES, check_data_folder, checked_path, is_weight_file
from mpu.checkpoint.received import private_copy
from mpu.errors import NAME_CHARS, InputError, shown
from mpu.protocol import LORA_A, LORA_B, UPDATE_MANIFEST, UpdateManifest, lora_names, lora_weight, update_folder_copy_id
from mpu.server.workdir import RECEIVED_RETURNS, PublishedRound


@dataclass
class ReturnedUpdate:
    """One validated return: the 1-based ``copy_id``, its folder, its manifest and a reader of its tensors."""

    copy_id: int
    path: Path
    manifest: UpdateManifest
    reader: CheckpointReader

    @property
    def kind(self) -> str:
        """``full`` (dense Delta') or ``lora`` (factors)."""
        return self.manifest.kind

    @property
    def manifest_path(self) -> Path:
        """The return's ``update.json``."""
        return self.path / UPDATE_MANIFEST

    def dense(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Delta' of one weight in float32 (the caller checks the values)."""
        if self.kind == "full":
            return self.reader.get(name).to(torch.float32)
        name_a, name_b = lora_names(name)
        if name_a in self.reader:
            return self.reader.get(name_b).to(torch.float32) @ self.reader.get(name_a).to(torch.float32)
        return torch.zeros(shape, dtype=torch.float32)  # LoRA left this weight alone

    def tensor_file(self, name: str) -> Path:
        """The file holding ``name`` (its LoRA factor for a LoRA return), for error messages."""
        stored = name if self.kind == "full" else name + LORA_A
        return self.reader.shard(stored) if stored in self.reader else self.path


def find_returns(returns_dir: str | Path, published: PublishedRound, expected: CheckpointReader) -> list[ReturnedUpdate]:
    """All checks that need no tensor values; returns one validated update per published copy, in
    copy order. Raises InputError naming the file and the reason."""
    returns_dir = Path(returns_dir)
    if not returns_dir.is_dir():
        raise InputError(returns_dir, "returns folder not found")
    folders = _update_folders(returns_dir)
    known = published.copies
    manifests = {}
    for folder in folders:  # every path and manifest checked before any shard is opened
        check_data_folder(folder, returns_dir, "update folder", is_update_file)
        manifest_path = checked_path(returns_dir, (folder / UPDATE_MANIFEST).relative_to(returns_dir), "update manifest")
        manifest = check_manifest(read_json(manifest_path, "update manifest", MAX_MANIFEST_BYTES), manifest_path, published)
        if manifest.copy_id not in known:
            raise InputError(manifest_path, f"unknown copy id {manifest.copy_id}; this round published {sorted(known)}")
        stated = update_folder_copy_id(folder.name)
        if stated is not None and stated != manifest.copy_id:
            raise InputError(manifest_path, f"folder {folder.name} holds the update of copy {manifest.copy_id}")
        manifests[folder] = manifest
    updates: dict[int, ReturnedUpdate] = {}
    for folder, manifest in manifests.items():
        manifest_path = folder / UPDATE_MANIFEST
        copy_id = manifest.copy_id
        if copy_id in updates:
            raise InputError(manifest_path, f"copy id {copy_id} repeated (also in {updates[copy_id].path})")
        if manifest.copy_sha256 != known[copy_id]:
            raise InputError(manifest_path, f"checksum of the copy it was trained from does not match published copy {copy_id}")
        updates[copy_id] = ReturnedUpdate(copy_id, folder, manifest, None)  # type: ignore[arg-type]
    missing = sorted(set(known) - set(updates))
    if missing:
        raise InputError(returns_dir, f"no update for copies {missing}; the harmonic combination needs all {len(known)}")
    limits = {"full": len(expected.names()), "lora": 2 * sum(1 for name in expected.names() if len(expected.shape(name)) == 2)}
    for update in updates.values():
        update.reader = CheckpointReader(update.path, max_tensors=limits[update.kind])
        unread = sorted({path.name for path in update.path.glob("*.safetensors")} - {shard.name for shard in update.reader.shards()})
        if unread:
            raise InputError(update.path / unread[0], "weight file not named in the update's index (every file of a return is read or refused)")
        _check_tensors(update, expected)
    return [updates[copy_id] for copy_id in sorted(updates)]


def max_update_bytes(model: CheckpointReader) -> int:
    """The most bytes an update folder of ``model`` may hold: its dense Delta' in float32 is 4 bytes per
    parameter, LoRA factors of any rank up to min(out, in) at most twice that; plus MAX_MODEL_FILE_BYTES
    for the manifest, the index and the headers."""
    return 2 * 4 * model.numel() + MAX_MODEL_FILE_BYTES


@contextlib.contextmanager
def received_returns(returns_dir: str | Path, parent: str | Path, published: PublishedRound, model: CheckpointReader) -> Iterator[Path]:
    """A private copy in ``parent`` (the server's work directory) of the returns that
    :func:`find_returns` accepts in ``returns_dir`` (every check that needs no tensor values, run on the
    received files first, so that nothing is copied of returns it refuses: unpublished copies, headers
    that do not match the model, files the index does not name), removed after the block
    (:func:`mpu.checkpoint.received.private_copy`). Validating again and combining the copy, the server
    uses exactly the bytes it checked, whatever the client writes to the returns folder meanwhile;
    errors still name the returns folder's files. An update folder may hold at most
    :func:`max_update_bytes` of ``model``, and ``parent`` must have room for the copy and the new model. Raises InputError as :func:`find_returns` does, for a file
    that changed after its check, and for returns larger than the free space of ``parent``."""
    returns_dir = Path(returns_dir)
    files = {update.path.relative_to(returns_dir).as_posix(): check_data_folder(update.path, returns_dir, "update folder", is_update_file)
             for update in find_returns(returns_dir, published, model)}
    with private_copy(returns_dir, files, parent, RECEIVED_RETURNS, max_folder_bytes=max_update_bytes(model),
                      bound="twice the model's float32 size, plus the manifest",
                      also_needed=4 * model.numel(),   # the new model, written beside it in float32
                      elsewhere=" (the work directory holds the secrets: chmod go-w it and the folders above it)") as local:
        yield local


def is_update_file(name: str) -> bool:
    """A file an update folder may hold: ``update.json``, safetensors shards and their index."""
    return name == UPDATE_MANIFEST or is_weight_file(name)


def _update_folders(returns_dir: Path) -> list[Path]:
    """The ``update-K`` folders of ``returns_dir`` (or ``returns_dir`` itself when it holds
    ``update.json`` directly). Entries with other names are not read; hidden ones (the client's
    unfinished staging folders) are skipped; a name that starts with "update" in any case
    (``UPDATE-1``, ``update-1 ``) must be exactly ``update-<id>``."""
    if os.path.lexists(returns_dir / UPDATE_MANIFEST):
        return [returns_dir]
    folders = []
    try:   # PermissionError, EIO, an entry removed meanwhile: the other party's files, so exit 2
        with os.scandir(returns_dir) as entries:
            for entry in entries:
                if not entry.name.casefold().startswith("update"):
                    continue
                path = returns_dir / entry.name
                if update_folder_copy_id(entry.name) is None:
                    raise InputError(path, "not an update folder name (expected update-<copy id>: update-1, update-2, ... without leading zeros)")
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise InputError(path, f"update folder is a symbolic link; links are never followed out of {returns_dir}")
                if not stat.S_ISDIR(info.st_mode):
                    raise InputError(path, "update folder is not a folder (a file, FIFO or device)")
                folders.append(path)
    except OSError as err:
        raise InputError(returns_dir, f"the returns folder cannot be read ({err.strerror or err})") from None
    if not folders:
        raise InputError(returns_dir, f"no update-K folders and no {UPDATE_MANIFEST} in it")
    return sorted(folders, key=lambda path: update_folder_copy_id(path.name) if path != returns_dir else 0)


def check_manifest(manifest: Any, path: Path, published: PublishedRound) -> UpdateManifest:
    """An update manifest read from ``path``, validated for the round the server ``published``:
    :meth:`UpdateManifest.from_json` with that round and publication id. Raises InputError naming
    ``path`` and the reason; any unknown field is refused."""
    return UpdateManifest.from_json(manifest, path, round=published.round, publication_id=published.publication_id)


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
        raise InputError(update.path, f"unexpected tensors: {', '.join(shown(name, NAME_CHARS) for name in sorted(got - want)[:5])}")
    for name in sorted(want):
        _check_meta(update, name, expected.shape(name))


def _check_lora(update: ReturnedUpdate, expected: CheckpointReader) -> None:
    """Each adapted 2-D weight W (out x in) has A (r x in) and B (out x r) with one rank r,
    1 <= r <= min(out, in)."""
    names = set(update.reader.names())
    if not names:
        raise InputError(update.path, "a LoRA return with no factors")
    for name in sorted(names):
        base = lora_weight(name)
        if base is None or base not in expected or len(expected.shape(base)) != 2:
            raise InputError(update.path, f"unexpected tensor {shown(name, NAME_CHARS)} (LoRA factors are <2-D weight name>.lora_A/.lora_B)")
        partner = base + (LORA_B if name.endswith(LORA_A) else LORA_A)
        if partner not in names:
            raise InputError(update.path, f"tensor {shown(name, NAME_CHARS)} has no partner {shown(partner, NAME_CHARS)}")
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
