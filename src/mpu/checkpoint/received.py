"""Private copies of the files the other party sent, taken before they are checked.

The checks on received files (:func:`mpu.checkpoint.files.check_data_folder`, the manifests, the
checksums, the weights) and the loads that follow them read the files by path, one after the other. If
the other party can still write the folder (a shared mount, a sync client), it can swap a file between
the check and the load: NaN weights, a config or a link in place of a checked one. Each side therefore
copies what it received into a folder of its own first (:func:`private_copy`), through descriptors that
never follow a link, and checks and loads only that copy: what is checked is what is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import Iterator, Mapping, Protocol

from mpu.checkpoint.files import PARTY_FILE_MODE
from mpu.errors import InputError, MPUError

log = logging.getLogger(__name__)
_CHUNK_BYTES = 8 << 20
# This machine in a private copy's name (8 hex digits of its host name), beside the process id: a folder
# shared by several machines holds copies whose process ids mean nothing here.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class CopySharing(Protocol):
    """How the processes of one launch on a machine (torchrun's local ranks) share one private copy
    instead of making one each: :attr:`makes_copy` is true in exactly one of them, every one calls
    :meth:`share` once (the maker with its copy's folder, or None when it could not make it) and gets
    the maker's folder back, and every one calls :meth:`wait` before the maker removes the copy."""

    makes_copy: bool

    def share(self, folder: Path | None) -> Path | None: ...

    def wait(self) -> None: ...


def machine_id() -> str:
    """This machine in a private copy's name: 8 hex digits of a hash of its host name."""
    return _HOST


@contextlib.contextmanager
def private_copy(root: str | Path, files: Mapping[str, list[str]], parent: str | Path, label: str, *,
                 max_folder_bytes: int | None = None, bound: str = "", also_needed: int = 0,
                 elsewhere: str = "", sharing: CopySharing | None = None) -> Iterator[Path]:
    """Copy the received ``files`` of ``root`` into a new folder of the receiver's and yield it; remove it after.

    ``files`` maps a folder relative to ``root`` (POSIX, ``""`` for ``root`` itself) to the names of its
    files to copy, as a check such as :func:`mpu.checkpoint.files.check_data_folder` listed them. Each
    folder below ``root`` is opened component by component and each file through one descriptor, none
    following a symbolic link; through the descriptor a file must be a regular file with one link, of
    the size it had when the sizes were checked (below), and exactly those bytes are copied (a file that
    shrinks while it is copied is refused; bytes appended meanwhile are left out). The copy is made in
    ``parent`` (created mode 0700 if needed; it must be this user's and writable by no one else, or the
    other party could rename the checked copy away and put its own in its place) as a hidden folder
    named after ``label`` and this process's id, mode 0700, its files 0600, and removed when the block
    ends, on error and Ctrl-C too; copies that ended processes left in ``parent`` under ``label`` are
    removed first (:func:`remove_leftovers`). Within the block an :class:`mpu.errors.InputError` that
    names a path of the copy names the same path of ``root`` instead (:func:`errors_name`), so every
    message still points at the other party's file.

    Before anything is copied, the files' sizes are added up (a sparse file counts its full size: the
    copy writes every byte): a folder above ``max_folder_bytes`` (``bound`` says where that bound comes
    from) and a total above the free space of ``parent``'s file system are refused, so the other party
    cannot fill the receiver's disk.

    With ``sharing`` (several processes of one launch on this machine), only the process whose
    :attr:`CopySharing.makes_copy` is true checks the sizes and copies; the others use its copy, and it
    removes the copy once every process has left the block (:meth:`CopySharing.wait`). A process that is
    not the maker raises MPUError when the maker could not make the copy (the maker's error says why).

    Raises InputError naming the received file: not openable without following a link, a link, not a
    regular file, a hard link, or changed while copied; naming the folder or ``root`` for the sizes.
    Raises MPUError for a ``parent`` others can write and when the copy cannot be written (the disk
    filled up meanwhile); ValueError for a folder of ``files`` outside ``root``. Costs the disk space and
    the time of one copy.
    """
    root = Path(root)
    parent = Path(parent)
    for folder in files:
        _parts(folder)   # a folder outside root is a caller's error: ValueError before anything is read
    if sharing is not None and not sharing.makes_copy:
        yield from _use_shared_copy(root, sharing)
        return
    local = None
    try:
        try:
            _check_private(parent, elsewhere)
            remove_leftovers(parent, label)
            sizes = _check_sizes(root, files, parent, max_folder_bytes, bound, also_needed)
            local = parent / f"{_prefix(label)}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                local.mkdir(mode=0o700)
                for folder, names in files.items():
                    _copy_folder(root, folder, names, local, sizes)
            except OSError as err:   # our side: the disk filled up since the free space was checked, a read-only folder
                raise MPUError(f"cannot write the private copy in {parent} ({err.strerror or err})") from None
        except BaseException:
            if sharing is not None:   # the other processes wait for the maker's folder: tell them there is none
                sharing.share(None)
            raise
        log.debug("private copy of %s: %s (%s)", root, local, shown_bytes(sum(sizes.values())))
        if sharing is not None:
            sharing.share(local)
        try:
            with errors_name(local, root):
                yield local
        finally:
            if sharing is not None:
                sharing.wait()   # the other processes still read the copy until they leave the block
    finally:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)


def _use_shared_copy(root: Path, sharing: CopySharing) -> Iterator[Path]:
    """:func:`private_copy` in a process that uses the copy another process of its launch made."""
    local = sharing.share(None)
    if local is None:
        raise MPUError(f"{root}: the first process of this launch on this machine could not make the private copy "
                       "of the received files (its error says why)")
    try:
        with errors_name(local, root):
            yield local
    finally:
        sharing.wait()


def _check_private(parent: Path, elsewhere: str) -> None:
    """Create ``parent`` (mode 0700) if needed; refuse it when someone else could rename it or a folder
    above it (and so put their own files where the checked copy was): each of them must be this user's
    or root's, and writable by no one else unless its sticky bit is set (``/tmp``), as OpenSSH's
    StrictModes asks of a home folder. ``elsewhere`` says how to choose another folder."""
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(parent)
    except OSError as err:
        raise MPUError(f"cannot make the folder for private copies {parent} ({err.strerror or err})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise MPUError(f"{parent}: the folder for private copies is a symbolic link or not a folder")
    for folder in (parent, *parent.resolve().parents):
        try:
            info = os.stat(folder)
        except OSError as err:
            raise MPUError(f"cannot check {folder} ({err.strerror or err})") from None
        owned = info.st_uid == os.getuid() or (folder != parent and info.st_uid == 0)
        if not owned or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
            raise MPUError(f"{folder}: others could rename {'this folder' if folder == parent else 'this folder above'} "
                           f"{parent} and swap the checked copies (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); "
                           f"the private copies need a folder only this user can change{elsewhere}")


def leftover_copies(parent: str | Path, label: str) -> list[Path]:
    """The folders :func:`private_copy` made in ``parent`` under ``label``, on this machine, whose process
    has ended without removing them (killed, out of memory). Copies of running processes, and those of
    other machines sharing the folder (an NFS home; their process ids mean nothing here), are not listed."""
    leftovers = []
    for path in sorted(Path(parent).glob(f"{_prefix(label)}{_HOST}-*")):
        pid = path.name.removeprefix(f"{_prefix(label)}{_HOST}-").split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            leftovers.append(path)
    return leftovers


def remove_leftovers(parent: str | Path, label: str) -> None:
    """Remove :func:`leftover_copies`: each private copy is as large as what was received."""
    for path in leftover_copies(parent, label):
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):   # another user's process (or an absurd number): leave it
        return True
    return True


def _prefix(label: str) -> str:
    return f".{label}.received-"


@contextlib.contextmanager
def errors_name(local: Path, source: Path) -> Iterator[None]:
    """Within the block, an :class:`InputError` naming a path under ``local`` (its path or its reason),
    or an :class:`MPUError` whose message does, is raised again naming the same path under ``source``."""
    try:
        yield
    except InputError as err:
        if str(local) not in err.path and str(local) not in err.reason:
            raise
        raise InputError(err.path.replace(str(local), str(source)), err.reason.replace(str(local), str(source))) from err.__cause__
    except MPUError as err:
        message = str(err.args[0]) if err.args else ""
        if type(err) is not MPUError or str(local) not in message:
            raise
        raise MPUError(message.replace(str(local), str(source))) from err.__cause__


def _check_sizes(root: Path, files: Mapping[str, list[str]], parent: Path, max_folder_bytes: int | None,
                 bound: str, also_needed: int) -> dict[Path, int]:
    """Each file's size by its path under ``root``, after the bounds on them (see :func:`private_copy`)."""
    sizes: dict[Path, int] = {}
    total = 0
    for folder, names in files.items():
        source = root.joinpath(*_parts(folder))
        try:
            for name in names:
                sizes[source / name] = os.lstat(source / name).st_size
        except OSError as err:
            raise InputError(source, f"cannot be read ({err.strerror or err}): it changed after it was checked") from None
        size = sum(sizes[source / name] for name in names)
        if max_folder_bytes is not None and size > max_folder_bytes:
            raise InputError(source, f"holds {shown_bytes(size)} of files, more than the {shown_bytes(max_folder_bytes)} it may hold ({bound})")
        total += size
    free = shutil.disk_usage(parent).free
    if total + also_needed > free:
        needed = f" (and {shown_bytes(also_needed)} for what this command writes there)" if also_needed else ""
        raise InputError(root, f"the files to check and use take {shown_bytes(total)}{needed}, and {parent} has "
                               f"{shown_bytes(free)} free: free some space (or receive fewer copies) and run again")
    return sizes


def _parts(folder: str) -> list[str]:
    """The components of a folder relative to the received root; ValueError for one that leaves it."""
    parts = [part for part in folder.split("/") if part not in ("", ".")]
    if folder.startswith("/") or ".." in parts or "\0" in folder:
        raise ValueError(f"{folder!r} is no folder inside the received root")
    return parts


def shown_bytes(size: int) -> str:
    """A size for a message: ``1,099.512 GB`` from a megabyte up, ``1,000 bytes`` below."""
    return f"{size / 1e9:,.3f} GB" if size >= 1e6 else f"{size:,} bytes"


def _copy_folder(root: Path, folder: str, names: list[str], local: Path, sizes: dict[Path, int]) -> None:
    parts = _parts(folder)
    source = root.joinpath(*parts)
    target = local.joinpath(*parts)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder_fd = _open_folder(root, parts)
    try:
        for name in names:
            _copy_file(folder_fd, source / name, target / name, sizes[source / name])
    finally:
        os.close(folder_fd)


def _open_folder(root: Path, parts: list[str]) -> int:
    """A descriptor of ``root/parts...``, each component below ``root`` opened without following a link."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise InputError(root, f"cannot be opened as a folder ({err.strerror or err})") from None
    path = root
    for part in parts:
        path = path / part
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW, dir_fd=fd)
        except OSError as err:
            raise InputError(path, f"is no longer a folder of its own ({err.strerror or err}): it changed after it was checked") from None
        finally:
            os.close(fd)
        fd = child
    return fd


def _copy_file(folder_fd: int, source: Path, target: Path, size: int) -> None:
    try:
        fd = os.open(source.name, os.O_RDONLY | _NO_FOLLOW, dir_fd=folder_fd)
    except OSError as err:
        raise InputError(source, f"cannot be opened without following a link ({err.strerror or err}): "
                                 "it changed after it was checked") from None
    with os.fdopen(fd, "rb") as reader:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(source, "is no longer a regular file: it changed after it was checked")
        if info.st_nlink != 1:
            raise InputError(source, f"is a hard link ({info.st_nlink} names for one file): it changed after it was checked")
        if info.st_size != size:   # the sizes were bounded before the copy began: a file grown since escapes the bound
            raise InputError(source, f"is {info.st_size:,} bytes, {size:,} when its size was checked: it changed after it was checked")
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PARTY_FILE_MODE), "wb") as writer:
            remaining = size
            while remaining:
                chunk = _read(reader, source, remaining)
                if not chunk:
                    raise InputError(source, f"became shorter while it was copied ({size - remaining:,} of "
                                             f"{size:,} bytes): the other party is still writing it")
                writer.write(chunk)
                remaining -= len(chunk)


def _read(reader, source: Path, remaining: int) -> bytes:
    try:
        return reader.read(min(remaining, _CHUNK_BYTES))
    except OSError as err:   # the other party's file (EIO on its mount): not our disk
        raise InputError(source, f"cannot be read ({err.strerror or err})") from None
