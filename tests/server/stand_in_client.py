"""A stand-in client for server tests: its update is a given function of the copy's weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from mpu.checkpoint import CheckpointReader, ShardedWriter, dir_sha256
from mpu.protocol import PUBLICATION_MANIFEST, UPDATE_MANIFEST, PublicationManifest, UpdateManifest, update_folder

Update = Callable[[str, torch.Tensor], torch.Tensor]


def write_returns(outbox: Path, returns: Path, update: Update, copy_ids=None, manifest_overrides=None) -> None:
    path = outbox / PUBLICATION_MANIFEST
    publication = PublicationManifest.from_json(json.loads(path.read_text()), path)
    for copy in publication.copies:
        if copy_ids and copy.id not in copy_ids:
            continue
        copy_dir = outbox / copy.path
        reader = CheckpointReader(copy_dir)
        out = returns / update_folder(copy.id)
        writer = ShardedWriter(out)
        writer.write_shard({name: update(name, reader.get(name).to(torch.float32)) for name in reader.names()})
        writer.finish()
        update_manifest = UpdateManifest(kind="full", round=publication.round, copy_id=copy.id, copy_sha256=dir_sha256(copy_dir),
                                         method="stand-in", steps=1).to_json()
        update_manifest.update((manifest_overrides or {}).get(copy.id, {}))  # possibly malformed, on purpose
        (out / UPDATE_MANIFEST).write_text(json.dumps(update_manifest))
