"""Validation of the client's returns (SPEC §8). Nothing here writes anything.

A return folder holds one sub-folder per copy (``update-K/``), each with ``update.json`` and the
update tensors as safetensors: either the dense Delta' (``kind: full``), or LoRA factors
(``kind: lora``: ``<weight name>.lora_A`` and ``.lora_B`` with Delta' = B @ A). Every check names
the file and the reason. The checks that need the tensor values (NaN/Inf, the norm bound) run
while Post-Process streams them, before anything is committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpu.checkpoint import CheckpointReader, read_json
from mpu.errors import InputError

UPDATE_MANIFEST = "update.json"
UPDATE_FORMAT = "mpu-update/1"
LORA_A, LORA_B = ".lora_A", ".lora_B"


@dataclass
class ReturnedUpdate:
    copy_id: int
    path: Path
    manifest: dict[str, Any]
    reader: CheckpointReader

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

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
    """All header-level checks; returns one validated update per published copy, in copy order."""
    returns_dir = Path(returns_dir)
    if not returns_dir.is_dir():
        raise InputError(returns_dir, "returns folder not found")
    manifests = sorted(returns_dir.glob(f"*/{UPDATE_MANIFEST}")) or sorted(returns_dir.glob(UPDATE_MANIFEST))
    if not manifests:
        raise InputError(returns_dir, f"no {UPDATE_MANIFEST} in it or in its sub-folders")
    known = {copy["id"]: copy["sha256"] for copy in published["copies"]}
    updates: dict[int, ReturnedUpdate] = {}
    for manifest_path in manifests:
        manifest = _read_manifest(manifest_path)
        copy_id = manifest["copy_id"]
        if manifest["round"] != published["round"]:
            raise InputError(manifest_path, f"update is for round {manifest['round']}, the server is in round {published['round']}")
        if copy_id not in known:
            raise InputError(manifest_path, f"unknown copy id {copy_id}; this round published {sorted(known)}")
        if copy_id in updates:
            raise InputError(manifest_path, f"copy id {copy_id} repeated (also in {updates[copy_id].path})")
        if manifest["copy_sha256"] != known[copy_id]:
            raise InputError(manifest_path, f"checksum of the copy it was trained from does not match published copy {copy_id}")
        reader = CheckpointReader(manifest_path.parent)
        update = ReturnedUpdate(copy_id, manifest_path.parent, manifest, reader)
        _check_tensors(update, expected)
        updates[copy_id] = update
    missing = sorted(set(known) - set(updates))
    if missing:
        raise InputError(returns_dir, f"no update for copies {missing}; the harmonic combination needs all {len(known)}")
    return [updates[copy_id] for copy_id in sorted(updates)]


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest = read_json(path, "update manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != UPDATE_FORMAT:
        raise InputError(path, f"not an mpu update manifest (expected format {UPDATE_FORMAT!r})")
    for key, kind in (("round", int), ("copy_id", int), ("copy_sha256", str), ("kind", str)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise InputError(path, f"field {key!r} missing or not a {kind.__name__}")
    if manifest["kind"] not in ("full", "lora"):
        raise InputError(path, f"kind must be 'full' or 'lora', got {manifest['kind']!r}")
    return manifest


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
    names = set(update.reader.names())
    for name in sorted(names):
        base = name.removesuffix(LORA_A).removesuffix(LORA_B)
        if base == name or base not in expected or len(expected.shape(base)) != 2:
            raise InputError(update.path, f"unexpected tensor {name!r} (LoRA factors are <2-D weight name>.lora_A/.lora_B)")
        partner = base + (LORA_B if name.endswith(LORA_A) else LORA_A)
        if partner not in names:
            raise InputError(update.path, f"tensor {name!r} has no partner {partner!r}")
        out_features, in_features = expected.shape(base)
        shape = update.reader.shape(name)
        rank = shape[0] if name.endswith(LORA_A) else shape[-1]
        want = (rank, in_features) if name.endswith(LORA_A) else (out_features, rank)
        _check_meta(update, name, want)


def _check_meta(update: ReturnedUpdate, name: str, shape: tuple[int, ...]) -> None:
    if update.reader.shape(name) != tuple(shape):
        raise InputError(update.reader.shard(name), f"tensor {name} has shape {update.reader.shape(name)}, expected {tuple(shape)}")
    if update.reader.dtype(name) != torch.float32:
        raise InputError(update.reader.shard(name), f"tensor {name} has dtype {update.reader.dtype(name)}, expected float32")
