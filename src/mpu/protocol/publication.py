"""The publication manifest (``OUTBOX/manifest.json``): what the server makes public about a round.

Public by design: the round, the number of rounds, a random publication id, the architecture, the
publish dtype and, per copy, its id, folder and the sha256 of its files. Never a seed, alpha, sigma or
anything else of the server's round state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpu.errors import InputError
from mpu.protocol.layout import PUBLICATION_FORMAT

MAX_COPIES = 1000
MAX_ROUNDS = 10_000
PUBLISH_DTYPES = ("float32", "bfloat16", "float16")
MANIFEST_KEYS = {"format", "round", "rounds", "publication_id", "architecture", "dtype", "copies"}
COPY_KEYS = {"id", "path", "sha256"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a copy folder, a publication id, an architecture


@dataclass(frozen=True)
class CopyEntry:
    """One published copy: its 1-based ``id``, its folder ``path`` (a plain name inside the outbox) and
    ``sha256``, the checksum of its files (``mpu.checkpoint.dir_sha256``, 64 lowercase hex digits)."""

    id: int
    path: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The entry as the manifest stores it: ``{"id", "path", "sha256"}``."""
        return {"id": self.id, "path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class PublicationManifest:
    """The public manifest of one round's publication.

    ``round``: 1..MAX_ROUNDS; ``rounds``: the rounds planned (>= round), optional; ``publication_id``:
    1-100 letters, digits, '.', '_' or '-'; ``architecture``: the config's ``model_type``, optional;
    ``dtype``: one of ``PUBLISH_DTYPES``, optional; ``copies``: 1..MAX_COPIES entries with unique ids
    and folders.
    """

    round: int
    publication_id: str
    copies: tuple[CopyEntry, ...]
    rounds: int | None = None
    architecture: str | None = None
    dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, with the format tag; optional fields that are None are left out."""
        data: dict[str, Any] = {"format": PUBLICATION_FORMAT, "round": self.round}
        if self.rounds is not None:
            data["rounds"] = self.rounds
        data["publication_id"] = self.publication_id
        if self.architecture is not None:
            data["architecture"] = self.architecture
        if self.dtype is not None:
            data["dtype"] = self.dtype
        data["copies"] = [copy.to_json() for copy in self.copies]
        return data

    @classmethod
    def from_json(cls, data: Any, path: str | Path) -> "PublicationManifest":
        """Parse and validate a publication manifest read from ``path`` (the other party's file, hostile).

        Every field is checked by type, range and length; unknown fields are refused; copy ids and
        folders must be unique and each folder a plain name (no separators, no ``.``/``..``).
        Raises InputError naming ``path`` and the reason.
        """
        path = Path(path)
        if not isinstance(data, dict) or data.get("format") != PUBLICATION_FORMAT:
            raise InputError(path, f"not an mpu publication manifest (expected format {PUBLICATION_FORMAT!r})")

        def bad(reason: str) -> InputError:
            return InputError(path, f"malformed publication manifest: {reason}")

        unknown = sorted(set(data) - MANIFEST_KEYS)
        if unknown:
            raise bad(f"unexpected fields {unknown[:5]}")
        round_number = _int(data.get("round"), 1, MAX_ROUNDS, "round", bad)
        rounds = _int(data["rounds"], round_number, MAX_ROUNDS, "rounds", bad) if "rounds" in data else None
        publication_id = _name(data.get("publication_id"), "publication_id", bad)
        architecture = _name(data["architecture"], "architecture", bad) if "architecture" in data else None
        if "dtype" in data and data["dtype"] not in PUBLISH_DTYPES:
            raise bad(f"dtype must be one of {PUBLISH_DTYPES}")
        entries = data.get("copies")
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_COPIES:
            raise bad(f"copies must be a list of 1 to {MAX_COPIES} entries")
        copies: list[CopyEntry] = []
        folders: set[str] = set()
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
            copies.append(CopyEntry(copy_id, folder, entry["sha256"]))
        return cls(round_number, publication_id, tuple(copies), rounds, architecture, data.get("dtype"))


def _int(value: Any, low: int, high: int, what: str, bad) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"{what} must be an integer in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def _name(value: Any, what: str, bad) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise bad(f"{what} must be 1-100 letters, digits, '.', '_' or '-', got {str(value)[:40]!r}")
    return value
