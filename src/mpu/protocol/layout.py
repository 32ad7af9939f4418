"""The file layout both parties share: where each file of the exchange lies and what it is called.

An outbox (server -> client) holds the publication manifest and one Hugging Face model folder per copy::

    OUTBOX/manifest.json      PublicationManifest (format tag ``mpu-publication/1``)
    OUTBOX/copy-1/ ... copy-m/

A returns folder (client -> server) holds one folder per copy, each with its manifest and the update
tensors as safetensors::

    RETURNS/update-1/update.json     UpdateManifest (format tag ``mpu-update/1``)
    RETURNS/update-1/*.safetensors   the dense Delta' (``kind: full``) or its LoRA factors (``kind: lora``)

A LoRA return stores, for every adapted 2-D weight ``W`` (out x in), ``W.lora_A`` (r x in) and
``W.lora_B`` (out x r) with Delta'(W) = B @ A.

Copy ids are 1-based everywhere (1..m): in folder names, in the manifests and in :class:`RoundKeys`.
"""

from __future__ import annotations

import re

PUBLICATION_MANIFEST = "manifest.json"
PUBLICATION_FORMAT = "mpu-publication/1"
UPDATE_MANIFEST = "update.json"
UPDATE_FORMAT = "mpu-update/1"
LORA_A, LORA_B = ".lora_A", ".lora_B"
UPDATE_FOLDER = re.compile(r"update-([1-9][0-9]{0,5})")  # fullmatch: no trailing newline; one spelling per id (no 0, no leading zeros)


def copy_folder(copy_id: int) -> str:
    """The outbox folder name of copy ``copy_id`` (1-based): ``copy-<id>``.

    Raises ValueError for an id below 1 or a non-integer.
    """
    return f"copy-{_copy_id(copy_id)}"


def update_folder(copy_id: int) -> str:
    """The returns folder name of the update of copy ``copy_id`` (1-based): ``update-<id>``.

    Raises ValueError for an id below 1 or a non-integer.
    """
    return f"update-{_copy_id(copy_id)}"


def update_folder_copy_id(name: str) -> int | None:
    """The copy id an ``update-<id>`` folder name states (1 to 999999, written without leading zeros, as
    :func:`update_folder` writes it), or None for any other name (``update-02``, ``update-0``)."""
    match = UPDATE_FOLDER.fullmatch(name)
    return int(match.group(1)) if match else None


def lora_names(weight: str) -> tuple[str, str]:
    """The tensor names of the LoRA factors A and B of the 2-D weight ``weight``."""
    return weight + LORA_A, weight + LORA_B


def lora_weight(name: str) -> str | None:
    """The weight a LoRA factor's tensor name belongs to, or None when ``name`` is not a factor name."""
    for suffix in (LORA_A, LORA_B):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name.removesuffix(suffix)
    return None


def _copy_id(copy_id: int) -> int:
    if not isinstance(copy_id, int) or isinstance(copy_id, bool) or copy_id < 1:
        raise ValueError(f"copy ids are integers from 1, got {copy_id!r}")
    return copy_id
