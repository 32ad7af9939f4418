"""What the server published: the public manifest and the copies it lists, checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpu.checkpoint import dir_sha256, read_json
from mpu.errors import InputError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mpu-publication/1"


@dataclass(frozen=True)
class PublishedCopy:
    id: int
    path: Path
    sha256: str

    def verify(self) -> None:
        """Refuse a copy whose files are not the ones the manifest names (corrupt or swapped)."""
        if not self.path.is_dir():
            raise InputError(self.path, "copy directory not found")
        if dir_sha256(self.path) != self.sha256:
            raise InputError(self.path, "checksum does not match the publication manifest (corrupt or modified copy)")


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
        return [by_id[copy_id] for copy_id in copy_ids]


def read_publication(inbox: str | Path) -> Publication:
    inbox = Path(inbox)
    path = inbox / MANIFEST
    manifest = read_json(path, "publication manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(path, f"not an mpu publication manifest (expected format {MANIFEST_FORMAT!r})")
    copies = []
    try:
        for entry in manifest["copies"]:
            relative = Path(entry["path"])
            if relative.is_absolute() or ".." in relative.parts:
                raise InputError(path, f"copy path {entry['path']!r} leaves the inbox")
            copies.append(PublishedCopy(int(entry["id"]), inbox / relative, str(entry["sha256"])))
        return Publication(inbox, int(manifest["round"]), str(manifest["publication_id"]), copies, manifest)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"malformed publication manifest ({type(err).__name__}: {err})") from None
