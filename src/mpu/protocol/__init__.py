"""The wire protocol both parties share: the file layout, the two manifests, the per-round key schedule.

- :mod:`mpu.protocol.layout`: file and folder names, format tags, LoRA tensor suffixes;
- :class:`PublicationManifest` (server -> client) and :class:`UpdateManifest` (client -> server),
  each with ``to_json()`` and a validating ``from_json(data, path)``;
- :class:`RoundKeys`: what copy k of block l receives in a round (transform, noise generators, alpha),
  derived from the round's secret. Only the server holds the secret; the client never uses it.

Imports only :mod:`mpu.checkpoint`, :mod:`mpu.errors`, the standard library and torch, so that the
client and the server both import it and neither imports the other.
"""

from mpu.protocol.keys import RoundKeys
from mpu.protocol.layout import (
    LORA_A, LORA_B, PUBLICATION_FORMAT, PUBLICATION_MANIFEST, UPDATE_FORMAT, UPDATE_MANIFEST, copy_folder, lora_names,
    lora_weight, update_folder, update_folder_copy_id,
)
from mpu.protocol.publication import CopyEntry, PublicationManifest
from mpu.protocol.update import UpdateManifest

__all__ = [
    "LORA_A", "LORA_B", "PUBLICATION_FORMAT", "PUBLICATION_MANIFEST", "UPDATE_FORMAT", "UPDATE_MANIFEST", "CopyEntry",
    "PublicationManifest", "RoundKeys", "UpdateManifest", "copy_folder", "lora_names", "lora_weight", "update_folder",
    "update_folder_copy_id",
]
