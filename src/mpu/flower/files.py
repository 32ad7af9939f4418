"""A folder as a Flower ``ArrayRecord`` and back: how publications and returns travel as messages.

Each regular file of the folder becomes one :class:`flwr.app.Array` holding the file's bytes
unchanged (``dtype "uint8"``, ``shape (n_bytes,)``, ``stype`` :data:`FILE_STYPE`), keyed by its
path relative to the folder (``copy-1/model.safetensors``, ``update-2/update.json``). Flower cuts
every Array into chunks on the wire and joins them on arrival, so a file larger than one gRPC/HTTP
message is carried too.

Why file bytes and not one Array per tensor: the receiving side writes the exact bytes the sender
wrote, so every check the folder protocol already has (the copies' SHA-256 against the publication
manifest, :func:`mpu.client.inbox.read_publication`, :func:`mpu.server.validate.find_returns`)
applies unchanged, and nothing in this layer parses, converts or re-serialises a tensor.

What :func:`record_to_folder` checks (the other party's record is untrusted): every key is a
relative POSIX path of at most :data:`MAX_DEPTH` plain components (no ``..``, ``.``, empty or
hidden components, no absolute path), every Array has the file stype, dtype ``uint8`` and a shape
that matches its byte count, and the total is at most ``max_bytes``. What the files contain is left
to the folder protocol's validators, which run next.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

from flwr.app import Array, ArrayRecord

from mpu.checkpoint import staging_dir
from mpu.checkpoint.files import MAX_FOLDER_ENTRIES, MAX_NAME_BYTES, PARTY_FILE_MODE, is_storable_name
from mpu.errors import InputError, MPUError

FILE_STYPE = "mpu.file-bytes/1"  # an Array whose data are a file's bytes, unchanged
MAX_DEPTH = 2  # copy-K/<file>, update-K/<file>, manifest.json
# a publication or returns folder: copies × (files of one copy), far below this
MAX_FILES = 4 * MAX_FOLDER_ENTRIES
DEFAULT_MAX_BYTES = 1 << 40  # 1 TiB: a sanity bound, far above any model the path carries today


def folder_to_record(root: str | Path) -> ArrayRecord:
    """Every regular file under ``root`` (sorted by path) as one byte Array, keyed by relative path.

    Raises MPUError for a symbolic link or anything that is not a regular file or folder: nothing is
    sent that the receiving validators would have to guess about.
    """
    root = Path(root)
    if not root.is_dir():
        raise MPUError(f"{root}: not a folder, nothing to send")
    arrays: dict[str, Array] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise MPUError(f"{path}: a symbolic link; only regular files are sent")
        if path.is_dir():
            continue
        if not path.is_file():
            raise MPUError(f"{path}: not a regular file; only regular files are sent")
        data = path.read_bytes()
        arrays[relative] = Array(dtype="uint8", shape=(len(data),), stype=FILE_STYPE, data=data)
    return ArrayRecord(arrays)


def record_bytes(record: ArrayRecord) -> int:
    """Total payload of a file record in bytes (the files' sizes, not the message framing)."""
    return sum(len(array.data) for array in record.values())


def record_to_folder(record: ArrayRecord, target: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                     what: str = "record") -> Path:
    """Write a record made by :func:`folder_to_record` as the folder ``target`` (which must not exist).

    The folder appears complete or not at all (built in a staging folder, then renamed). Files are
    written with mode 0600, like every file written for the other party. Raises InputError naming
    ``target/<key>`` and the reason for a key or Array that is not a plain file of the record.
    """
    target = Path(target)
    if not isinstance(record, ArrayRecord):
        raise InputError(target, f"{what}: expected an ArrayRecord of files, got {type(record).__name__}")
    if not record:
        raise InputError(target, f"{what}: no files")
    if len(record) > MAX_FILES:
        raise InputError(target, f"{what}: {len(record)} files, more than the {MAX_FILES} a publication or "
                                 "returns can hold; nothing written")
    total = 0
    checked: list[tuple[PurePosixPath, Array]] = []
    for key, array in record.items():
        relative = _checked_key(key, target, what)
        if array.stype != FILE_STYPE or array.dtype != "uint8":
            raise InputError(target / key, f"{what}: not a file (stype {array.stype!r}, dtype {array.dtype!r}; "
                                           f"expected {FILE_STYPE!r}, 'uint8')")
        if tuple(array.shape) != (len(array.data),):
            raise InputError(target / key, f"{what}: shape {tuple(array.shape)} does not match its {len(array.data)} bytes")
        total += len(array.data)
        if total > max_bytes:
            raise InputError(target, f"{what}: more than {max_bytes} bytes of files")
        checked.append((relative, array))
    parents = {relative.parent for relative, _ in checked if relative.parent != PurePosixPath(".")}
    clashes = sorted(str(relative) for relative, _ in checked if relative in parents)
    if clashes:
        raise InputError(target / clashes[0], f"{what}: both a file and a folder")
    # names that one file system keeps apart and another folds together (case, Unicode normal form)
    folded: dict[str, str] = {}
    for relative, _ in checked:
        spelled = unicodedata.normalize("NFC", str(relative)).casefold()
        if spelled in folded:
            raise InputError(target / str(relative), f"{what}: the names {folded[spelled]!r} and {str(relative)!r} "
                                                     "differ only by case or Unicode form")
        folded[spelled] = str(relative)
    with staging_dir(target) as stage:
        for relative, array in checked:
            path = stage.joinpath(*relative.parts)
            try:   # a name this file system refuses (its own limits, case folding on another system)
                path.parent.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PARTY_FILE_MODE)
            except OSError as err:
                raise InputError(target / str(relative), f"{what}: cannot be written here ({err.strerror or err}); "
                                                         "nothing written") from None
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(array.data)
    return target


def _checked_key(key: str, target: Path, what: str) -> PurePosixPath:
    """The key as a relative path of plain components, or InputError."""
    if not isinstance(key, str) or not key or len(key) > 512 or "\\" in key or "\0" in key:
        raise InputError(target, f"{what}: file name {str(key)[:300]!r} is not a plain relative path")
    relative = PurePosixPath(key)
    parts = key.split("/")
    if relative.is_absolute() or len(parts) > MAX_DEPTH or any(not is_storable_name(part) or part.startswith(".") for part in parts):
        raise InputError(target, f"{what}: file name {key[:300]!r} is not a plain relative path of at most {MAX_DEPTH} "
                                 f"parts, each at most {MAX_NAME_BYTES} bytes of UTF-8")
    return relative
