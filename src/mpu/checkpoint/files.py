"""Atomic writes, directory checksums, the files that may cross the party boundary, and the checks
that every file received from the other party is a regular file really inside its folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import re
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mpu.errors import InputError

WEIGHT_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# The tokenizer files of the Hugging Face formats (fast JSON, BPE vocab/merges, SentencePiece,
# WordPiece, tiktoken) and chat templates. Together with the config and the generation config they
# are the only non-weight files that ever cross the party boundary: nothing else from the owner's
# folder (trainer_state.json, training_args.json, notes, READMEs, mpu_finetune.json) is published.
TOKENIZER_FILES = frozenset({
    "tokenizer.json", TOKENIZER_CONFIG, "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt", "tokenizer.tiktoken",
    "chat_template.jinja", "chat_template.json",
})
MODEL_FILES = frozenset({CONFIG, GENERATION_CONFIG}) | TOKENIZER_FILES
# Keys dropped from every published config file: local paths, and the hook that makes transformers
# import Python code shipped next to the config.
DROPPED_CONFIG_KEYS = ("_name_or_path", "name_or_path", "auto_map")
# Files written for the other party (published copies, returned updates, exported models) are owner-only:
# weights and JSON alike. They hold (noisy) model weights; the user widens access, if wanted, when
# handing them over.
PARTY_FILE_MODE = 0o600
MAX_MANIFEST_BYTES = 1 << 20  # a manifest of 1000 copies is ~150 kB
MAX_MODEL_FILE_BYTES = 64 << 20  # tokenizer.json of large-vocabulary models is ~10-35 MB
MAX_FOLDER_ENTRIES = 10_000  # a copy or an update folder: a 1T-parameter model in 5 GB shards is ~400 files
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")   # \ud800-\udfff: a JSON escape of a UTF-16 surrogate
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.safetensors$")
_CODE_SUFFIXES = (".py", ".pyc", ".so", ".sh")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary sibling, fsync, then rename over ``path``: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any, mode: int = 0o644) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: str | Path, what: str = "JSON file", max_bytes: int | None = None) -> Any:
    """Parse a JSON file we did not write ourselves; every failure names the file.

    Refuses a symlink, a FIFO or a device (reading a FIFO would block forever) and, with
    ``max_bytes``, a file larger than that before reading it. The checks apply to the file actually
    read: it is opened without following a final symlink and without blocking, then checked through
    its descriptor, so a file swapped for a link or a FIFO after an earlier check is refused too.
    """
    path = Path(path)
    info = _lstat(path, what)
    _require_regular(path, info, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise InputError(path, f"{what} cannot be read ({err.strerror}; a symbolic link is never followed)") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        _require_regular(path, info, what)
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputError(path, f"{what} is {info.st_size} bytes, more than the {max_bytes} allowed")
        raw = handle.read(max_bytes + 1 if max_bytes is not None else -1)
    if max_bytes is not None and len(raw) > max_bytes:
        raise InputError(path, f"{what} grew past the {max_bytes} bytes allowed while it was read")
    return parse_json(raw, path, what)


def parse_json(raw: bytes, path: str | Path, what: str = "JSON file") -> Any:
    """Parse JSON bytes received from the other party, strictly; every failure is an InputError naming ``path``.

    Refused besides malformed JSON and non-UTF-8 text: a key repeated inside one object (parsers
    disagree on which value wins, so a file could say two things at once), nesting deep enough to
    exhaust the parser's recursion, ``NaN``/``Infinity``, which are not JSON, and the numbers that
    Python would turn into them or could not compare with a float: a float literal beyond the float
    range (``1e400`` reads as infinity) and an integer beyond it (``math.isfinite`` and float
    arithmetic raise OverflowError on one; tokenizer configs do hold 10**30). Also
    refused: a string holding a lone UTF-16 surrogate (``"\\ud800"`` is valid JSON but not text: it
    cannot be printed or written as UTF-8).
    """
    path = Path(path)
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                          parse_float=_finite_float, parse_int=_float_sized_int)
        if _SURROGATE_ESCAPE.search(raw):   # only an escape can make one (UTF-8 text cannot hold it)
            json.dumps(data, ensure_ascii=False).encode("utf-8")   # a lone surrogate anywhere fails here
        return data
    except UnicodeEncodeError:
        raise InputError(path, f"{what} holds a string with a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None
    except UnicodeDecodeError:
        raise InputError(path, f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"{what} is truncated or not valid JSON ({err.msg} at line {err.lineno})") from None
    except _Refused as err:
        raise InputError(path, f"{what} {err}") from None
    except RecursionError:
        raise InputError(path, f"{what} nests too deeply to be parsed") from None
    except ValueError as err:  # an integer of more than 4300 digits
        raise InputError(path, f"{what} is not usable JSON ({str(err)[:120]})") from None


class _Refused(Exception):
    pass


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused(f"holds the number {literal[:40]}, beyond the float range (it would read as infinity)")
    return value


def _float_sized_int(literal: str) -> int:
    value = int(literal)
    try:
        float(value)
    except OverflowError:
        raise _Refused(f"holds an integer of {len(literal.lstrip('-'))} digits, beyond the float range") from None
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Refused(f"repeats the key {repeated[:64]!r} in one object (which value counts would be ambiguous)")
    return data


def _no_constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not JSON")


def check_output(out: str | Path, *, keep: Iterable[str | Path] = (), replace: bool = False, marker: str | None = None,
                 flag: str | None = None) -> None:
    """Refuse the output folder ``out`` before any work: a file (or a path under one); the file system's
    root; a folder that is, holds or lies inside one of ``keep`` (the command's inputs and work
    directory: replacing it deleted them); an existing folder unless ``replace``; and, when ``marker``
    is given, an existing non-empty folder without that file (not an earlier output of the command: a
    folder of the user's own was emptied by ``--force``). ``flag``: the command's option that replaces
    an existing output, named in the refusal. Raises InputError naming ``out``."""
    out = Path(out)
    resolved = out.resolve()
    if resolved.parent == resolved:
        raise InputError(out, "is the file system's root; choose a folder to write")
    above = next((parent for parent in (resolved, *resolved.parents) if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise InputError(out, f"{'is' if above == resolved else 'lies under'} the file {above}; choose a folder to write")
    for path in keep:
        kept = Path(path).resolve()
        if resolved == kept or resolved in kept.parents or kept in resolved.parents:
            relation = "is" if resolved == kept else "holds" if resolved in kept.parents else "lies inside"
            raise InputError(out, f"{relation} {kept}, which this command reads: writing the output there would replace "
                                  "it; choose another folder")
    if resolved.exists():
        if not replace:
            raise InputError(out, "already exists (remove it or choose another path" +
                             (f", or pass {flag} to replace it)" if flag else ")"))
        if marker is not None and any(resolved.iterdir()) and not (resolved / marker).is_file():
            raise InputError(out, f"holds files that are no earlier output of this command (no {marker}); "
                                  "refusing to replace it: choose another folder")


@contextlib.contextmanager
def staging_dir(final: str | Path, *, replace: bool = False, keep: Iterable[str | Path] = (),
                marker: str | None = None, flag: str | None = None) -> Iterator[Path]:
    """Build a directory next to ``final`` and rename it into place only if the block succeeds.

    On any error the partial directory is removed, so ``final`` is either absent, the old one,
    or complete. ``final`` is checked first (:func:`check_output` with ``keep``, ``replace``, ``marker``
    and ``flag``): InputError naming it.
    """
    check_output(final, keep=keep, replace=replace, marker=marker, flag=flag)
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.with_name(f".{final.name}.partial-{secrets.token_hex(4)}")
    stage.mkdir()
    try:
        yield stage
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dir_sha256(path: str | Path, only: Callable[[str], bool] | None = None) -> str:
    """One checksum for every regular file under ``path`` (names and contents), order-independent;
    ``only``: the relative (POSIX) paths to include (default: all).

    Server and client compute it the same way, so a return can name the exact copy it came from.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        if only is None or only(relative):
            digest.update(f"{relative}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def weights_sha256(path: str | Path) -> str:
    """One checksum for the weight files of the model folder ``path`` (safetensors shards and index, by
    name and contents; links followed, as a hub cache's snapshot holds them)."""
    return dir_sha256(path, only=is_weight_file)


def outside_file_references(data: dict, names: Iterable[str]) -> list[tuple[str, str]]:
    """The ``(key, value)`` pairs of a config's top-level keys that name files (``*_file``, ``*_files``:
    ``fast_tokenizer_files``, ``tokenizer_file``, ``vocab_file`` ...) with a value that is not the bare
    name of one of ``names`` (the folder's files): transformers joins such a value to the folder, so
    ``/elsewhere/tokenizer.json`` or ``../x`` would load a file from outside it. None and empty values
    are no reference."""
    present = set(names)
    found = []
    for key, value in data.items():
        if not isinstance(key, str) or not key.endswith(("_file", "_files")) or value in (None, "", []):
            continue
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or item not in present or Path(item).name != item:
                found.append((key, str(item)))
    return found


def copy_model_files(src: str | Path, dst: str | Path, config_updates: dict | None = None) -> list[str]:
    """Copy the allow-listed non-weight files (``MODEL_FILES``) from ``src`` to ``dst``, mode 0600.

    The one function through which model folders are written (server init, publish, aggregate,
    export, ``mpu run``): ``config.json`` keeps only the keys its architecture's transformers config
    class defines (:func:`architecture_config`) plus ``config_updates``; the tokenizer config loses
    ``auto_map``, local paths and file names that are not files of ``src`` (:func:`outside_file_references`); every other file of ``src`` (training logs, notes, custom metadata,
    pickles, code) stays behind. Returns the names written.
    """
    src, dst = Path(src), Path(dst)
    copied = []
    for name in sorted(MODEL_FILES):
        file = src / name
        if not os.path.lexists(file):
            continue
        if name == CONFIG:
            config = architecture_config(read_json(file, "model config", MAX_MODEL_FILE_BYTES), file)
            config.update(config_updates or {})
            atomic_write_json(dst / name, config, mode=PARTY_FILE_MODE)
        elif name in (TOKENIZER_CONFIG, GENERATION_CONFIG):
            data = read_json(file, name, MAX_MODEL_FILE_BYTES)
            if not isinstance(data, dict):
                raise InputError(file, "expected a JSON object")
            outside = {key for key, _ in outside_file_references(data, [entry.name for entry in src.iterdir()])}
            atomic_write_json(dst / name, {key: value for key, value in data.items()
                                           if key not in DROPPED_CONFIG_KEYS and key not in outside}, mode=PARTY_FILE_MODE)
        else:
            _require_regular(file, _lstat(file, name), name)
            shutil.copyfile(file, dst / name)
            os.chmod(dst / name, PARTY_FILE_MODE)
        copied.append(name)
    if CONFIG not in copied:
        raise InputError(src, "no config.json: not a Hugging Face model directory")
    return copied


def save_model(model, tokenizer, dst: str | Path) -> list[str]:
    """Save ``model`` and ``tokenizer`` into the existing folder ``dst`` holding only what a model
    folder may hold (:func:`is_model_file`): safetensors weights, then config, generation config and
    tokenizer through :func:`copy_model_files`.

    ``save_pretrained`` alone would write every custom key the source ``config.json`` carried (a
    loaded config keeps unknown keys as attributes) and leaves room for other files; this is how
    ``mpu unlearn``, the demo's and the experiments' noise-free baselines write their output, so the
    source model's metadata (``mpu_finetune.json``, notes, custom config keys) never reaches it.
    Returns the names written. Raises InputError when the saved config is not a known architecture.
    """
    import tempfile

    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.save-", dir=dst.parent) as scratch:
        scratch = Path(scratch)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(str(scratch))
        written = []
        for file in sorted(scratch.iterdir()):
            if file.is_file() and is_weight_file(file.name):
                os.replace(file, dst / file.name)
                written.append(file.name)
        return written + copy_model_files(scratch, dst)


def architecture_config(config: Any, path: Path) -> dict[str, Any]:
    """The keys of ``config`` that its architecture's transformers config class defines.

    The class comes from ``model_type`` (never from ``auto_map``: no code is imported). The config is
    loaded through the class, so legacy spellings are normalised (``rope_theta`` into
    ``rope_parameters``), then reduced to the keys of the class's defaults: custom fields and local
    paths (``_name_or_path``) are dropped. Raises InputError for an unknown ``model_type``.
    """
    from transformers import CONFIG_MAPPING

    if not isinstance(config, dict):
        raise InputError(path, "model config is not a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise InputError(path, f"model_type {model_type!r} is not an architecture transformers knows (remote code is never used)")
    config_class = CONFIG_MAPPING[model_type]
    # head_dim: some classes (Qwen3-MoE) leave it out of their defaults, yet their models read an explicit
    # one (Qwen3-30B-A3B: 128, not hidden/heads = 64); dropping it would change the architecture.
    known = set(config_class().to_dict()) | {"head_dim"}
    try:
        loaded = config_class.from_dict({key: value for key, value in config.items() if key not in DROPPED_CONFIG_KEYS}).to_dict()
    except Exception as err:  # transformers validates values with many exception types
        raise InputError(path, f"not a valid {model_type} config ({type(err).__name__}: {err})") from None
    return {key: value for key, value in loaded.items() if key in known and key not in DROPPED_CONFIG_KEYS}


def _lstat(path: Path, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except OSError as err:
        raise InputError(path, f"{what} cannot be read ({err.strerror})") from None
    except ValueError:   # a NUL in the name (os.lstat raises, it does not look)
        raise InputError(path, f"{what} has a name no file system allows (a NUL character)") from None


def _kind(info: os.stat_result) -> str:
    mode = info.st_mode
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _require_regular(path: Path, info: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, f"{what} is {_kind(info)}; only regular files are read")


def checked_path(root: str | Path, relative: str | Path, what: str, *, folder: bool = False) -> Path:
    """``root / relative`` after checking that it really lies inside ``root``: no absolute path, no
    ``..``, no symbolic link on the way or at the end, and a regular file (or, with ``folder``, a
    real folder), not a FIFO, device or socket. ``root`` itself is the user's choice and may be a link.

    Raises InputError naming the path and the reason; checked before the path is used.
    """
    root = Path(root)
    relative = Path(relative)
    if relative.is_absolute() or any(part in ("..", "") for part in relative.parts) or not relative.parts:
        raise InputError(root / relative, f"{what} lies outside {root}")
    current = root
    for index, part in enumerate(relative.parts):
        current = current / part
        info = _lstat(current, what)
        if stat.S_ISLNK(info.st_mode):
            raise InputError(current, f"{what} is a symbolic link; links are never followed out of {root}")
        last = index == len(relative.parts) - 1
        if (not last or folder) and not stat.S_ISDIR(info.st_mode):
            raise InputError(current, f"{what} is {_kind(info)}, expected a folder")
        if last and not folder:
            _require_regular(current, info, what)
    return current


def check_data_folder(folder: str | Path, root: str | Path, what: str, allowed: Callable[[str], bool]) -> list[str]:
    """Check every entry of ``folder`` (received from the other party) before anything in it is read.

    Each entry must be a regular file (no symlinks, FIFOs, devices, sub-folders) with a single link
    (a hard link shares its bytes with a file elsewhere on the receiver's disk) whose name
    ``allowed`` accepts; at most ``MAX_FOLDER_ENTRIES`` entries. Code (``.py``, ...) and pickles get
    their own message. Returns the names.
    """
    relative = Path(folder).relative_to(root)
    folder = checked_path(root, relative, what, folder=True) if relative.parts else Path(root)
    names = []
    try:   # PermissionError, EIO, an entry removed meanwhile: the other party's files, so exit 2
        with os.scandir(folder) as entries:
            for entry in entries:
                path = folder / entry.name
                if len(names) >= MAX_FOLDER_ENTRIES:
                    raise InputError(folder, f"holds more than {MAX_FOLDER_ENTRIES} entries; a {what} holds a model's files")
                info = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode):
                    raise InputError(path, f"is {_kind(info)}; a {what} holds only regular files")
                if info.st_nlink > 1:
                    raise InputError(path, f"is a hard link ({info.st_nlink} names for one file); a {what} holds its own copies of files")
                if entry.name.endswith(_CODE_SUFFIXES):
                    raise InputError(path, f"code file in a {what}: nothing received from the other party is ever executed")
                if entry.name.endswith(_PICKLE_SUFFIXES):
                    raise InputError(path, f"pickle-format file in a {what}: pickles are never loaded")
                if not allowed(entry.name):
                    raise InputError(path, f"not a data file of a {what}")
                names.append(entry.name)
    except OSError as err:
        raise InputError(folder, f"{what} cannot be read ({err.strerror or err})") from None
    return sorted(names)


# The longest file name (one path component) that Linux, macOS and Windows file systems take, in bytes.
MAX_NAME_BYTES = 255


def is_storable_name(name: str) -> bool:
    """Whether ``name`` can be one component of a path here: not empty, ``.`` or ``..``, no ``/`` or NUL,
    valid UTF-8 (no lone surrogate) of at most MAX_NAME_BYTES bytes (a 200-character name of accented
    letters is 400 bytes: counting characters let ENAMETOOLONG through)."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:
        return False


def is_shard_name(name: str) -> bool:
    """A safetensors shard's name as mpu and the Hugging Face hub write them: ASCII letters, digits, ``.``,
    ``_`` and ``-``, at most 212 characters, ending ``.safetensors`` (the whole name: ``$`` alone would
    let a trailing newline through). A name an index gives is checked with this before it becomes a path,
    so that no NUL, separator, over-long or unencodable name reaches the file system."""
    return isinstance(name, str) and _SHARD_NAME.fullmatch(name) is not None


def is_weight_file(name: str) -> bool:
    """A safetensors shard or its index, by name."""
    return name == WEIGHT_INDEX or is_shard_name(name)


def is_model_file(name: str) -> bool:
    """A file a published model folder may hold: weights, config, generation config, tokenizer."""
    return name in MODEL_FILES or is_weight_file(name)
