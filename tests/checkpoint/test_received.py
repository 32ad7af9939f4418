"""A private copy of received files: exactly the checked files, through descriptors that follow no
link, private modes, removed after use, and errors that name the received files."""

from __future__ import annotations

import os
import stat

import pytest

import mpu.checkpoint.received as received_module
from mpu.checkpoint.received import leftover_copies, private_copy
from mpu.errors import InputError


@pytest.fixture()
def received(tmp_path):
    root = tmp_path / "inbox"
    (root / "copy-1").mkdir(parents=True)
    (root / "manifest.json").write_text('{"a": 1}')
    (root / "copy-1" / "config.json").write_text('{"b": 2}')
    (root / "copy-1" / "model.safetensors").write_bytes(os.urandom(3 * (8 << 20) + 5))   # more than one chunk
    return root


FILES = {"": ["manifest.json"], "copy-1": ["config.json", "model.safetensors"]}


def test_the_copy_holds_the_checked_files_privately_and_is_removed_after(received, tmp_path):
    with private_copy(received, FILES, tmp_path / "work", "mpu-inbox") as local:
        assert leftover_copies(tmp_path / "work", "mpu-inbox") == []   # this process's: not left over
        assert local.parent == tmp_path / "work"
        assert local.name.startswith(f".mpu-inbox.received-{received_module._HOST}-{os.getpid()}-")
        for folder, names in FILES.items():
            for name in names:
                assert (local / folder / name).read_bytes() == (received / folder / name).read_bytes()
                assert stat.S_IMODE(os.stat(local / folder / name).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(local).st_mode) == 0o700
        # what the other party writes now does not reach the copy
        (received / "copy-1" / "config.json").write_text('{"b": "swapped"}')
        assert (local / "copy-1" / "config.json").read_text() == '{"b": 2}'
    assert not local.exists() and leftover_copies(tmp_path / "work", "mpu-inbox") == []


def test_the_copy_is_removed_when_the_block_fails(received, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox"):
            raise KeyboardInterrupt
    assert list((tmp_path / "work").iterdir()) == []


def _file_to_link(root, tmp_path):
    (tmp_path / "elsewhere.json").write_text("{}")
    (root / "copy-1" / "config.json").unlink()
    (root / "copy-1" / "config.json").symlink_to(tmp_path / "elsewhere.json")


def _file_to_fifo(root, tmp_path):
    (root / "copy-1" / "config.json").unlink()
    os.mkfifo(root / "copy-1" / "config.json")


def _file_to_hard_link(root, tmp_path):
    os.link(root / "copy-1" / "config.json", tmp_path / "second-name")


def _folder_to_link(root, tmp_path):
    (root / "copy-1").rename(tmp_path / "moved")
    (root / "copy-1").symlink_to(tmp_path / "moved")


def _file_removed(root, tmp_path):
    (root / "copy-1" / "config.json").unlink()


@pytest.mark.parametrize("change, reason", [
    (_file_to_link, "without following a link"),
    (_file_to_fifo, "no longer a regular file"),
    (_file_to_hard_link, "hard link"),
    (_folder_to_link, "no longer a folder of its own"),
    (_file_removed, "changed after it was checked"),
], ids=["file-to-link", "file-to-fifo", "hard-link", "folder-to-link", "file-removed"])
def test_a_file_changed_after_its_check_is_refused_naming_it(received, tmp_path, change, reason):
    change(received, tmp_path)
    with pytest.raises(InputError, match=reason) as err:
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox"):
            pytest.fail("the block ran on a changed file")
    assert str(received / "copy-1") in err.value.path
    assert list((tmp_path / "work").iterdir()) == []


def _larger(real):
    def larger(*args, **kwargs):   # the size as one of the calls sees it: 100 bytes more than the file holds
        info = real(*args, **kwargs)
        return os.stat_result((info.st_mode, *info[1:6], info.st_size + 100, *info[7:])) if stat.S_ISREG(info.st_mode) else info
    return larger


def test_a_file_whose_size_changed_since_the_size_check_is_refused(received, tmp_path, monkeypatch):
    import mpu.checkpoint.received as module

    monkeypatch.setattr(module.os, "fstat", _larger(os.fstat))   # grown after the bounds were checked
    with pytest.raises(InputError, match="when its size was checked: it changed after it was checked"):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox"):
            pytest.fail("the block ran on a changed file")


def test_a_file_that_shrinks_while_it_is_copied_is_refused(received, tmp_path, monkeypatch):
    import mpu.checkpoint.received as module

    monkeypatch.setattr(module.os, "fstat", _larger(os.fstat))
    monkeypatch.setattr(module.os, "lstat", _larger(os.lstat))
    with pytest.raises(InputError, match="became shorter while it was copied"):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox"):
            pytest.fail("the block ran on a changed file")
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("on_close", [False, True], ids=["on-write", "on-close"])
def test_a_copy_that_cannot_be_written_is_an_error_not_a_traceback(received, tmp_path, monkeypatch, on_close):
    import mpu.checkpoint.received as module
    from mpu.errors import MPUError

    class Full:   # a file on a disk that filled up after the free space was checked
        def __init__(self, fd, mode):
            self.file = open(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()
            if on_close:
                raise OSError(28, "No space left on device")

        def write(self, data):
            if not on_close:
                raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "open", Full, raising=False)
    with pytest.raises(MPUError, match="cannot write the private copy in .*No space left on device"):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox"):
            pytest.fail("the block ran on a partial copy")
    assert list((tmp_path / "work").iterdir()) == []


def test_errors_in_the_block_name_the_received_file(received, tmp_path):
    from mpu.errors import MPUError

    with pytest.raises(InputError) as err:
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox") as local:
            raise InputError(local / "copy-1" / "config.json", f"bad value (also in {local / 'manifest.json'})")
    assert err.value.path == str(received / "copy-1" / "config.json")
    assert err.value.reason == f"bad value (also in {received / 'manifest.json'})"
    assert ".received-" not in str(err.value)
    with pytest.raises(MPUError) as err:
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox") as local:
            raise MPUError(f"{local / 'copy-1' / 'tokenizer.json'}: the tokenizer fails")
    assert str(err.value) == f"{received / 'copy-1' / 'tokenizer.json'}: the tokenizer fails"


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_folder_for_private_copies_that_others_can_write_is_refused(received, tmp_path, mode):
    """In a folder the other party can write (the folder shared with it), it could rename the checked
    copy away and put its own files in its place."""
    from mpu.errors import MPUError

    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", mode)
    with pytest.raises(MPUError, match="others could rename this folder .* a folder only this user can change"):
        with private_copy(received, FILES, tmp_path / "shared", "mpu-inbox"):
            pytest.fail("copied into a folder others can write")
    assert list((tmp_path / "shared").iterdir()) == []


def test_a_folder_above_that_others_can_write_is_refused_unless_sticky(received, tmp_path):
    """Whoever can write a folder above the copies can rename the folder holding them and put another
    in its place; a sticky folder (/tmp) lets no one rename what is not theirs."""
    from mpu.errors import MPUError

    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o777)
    with pytest.raises(MPUError, match="others could rename this folder above"):
        with private_copy(received, FILES, tmp_path / "shared" / "cache" / "received", "mpu-inbox"):
            pytest.fail("copied below a folder others can write")
    os.chmod(tmp_path / "shared", 0o1777)
    with private_copy(received, FILES, tmp_path / "shared" / "cache" / "received", "mpu-inbox") as local:
        assert (local / "manifest.json").is_file()


def test_a_folder_for_private_copies_that_is_a_link_is_refused(received, tmp_path):
    from mpu.errors import MPUError

    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "work").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MPUError, match="symbolic link or not a folder"):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox"):
            pytest.fail("copied through a link")


def test_a_folder_outside_the_received_root_is_a_callers_error(received, tmp_path):
    for folder in ("../secret", "/etc", "copy-1/../../x"):
        with pytest.raises(ValueError, match="no folder inside the received root"):
            with private_copy(received, {folder: ["key"]}, tmp_path / "work", "mpu-inbox"):
                pytest.fail("copied from outside the root")
    assert not (tmp_path / "work").exists()


def test_a_folder_above_its_bound_is_refused_before_anything_is_copied(received, tmp_path):
    with pytest.raises(InputError, match=r"holds 2[5-6].\d+ MB|holds [\d.,]+ GB of files, more than the 1,000 bytes it may hold \(the bound\)") as err:
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox", max_folder_bytes=1000, bound="the bound"):
            pytest.fail("copied past the bound")
    assert err.value.path == str(received / "copy-1")
    assert list((tmp_path / "work").iterdir()) == []


def test_copies_left_by_ended_processes_are_removed_and_running_ones_kept(received, tmp_path):
    import subprocess
    import sys

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    host = received_module._HOST
    left = work / f".mpu-inbox.received-{host}-{ended.pid}-0123abcd"
    running = work / f".mpu-inbox.received-{host}-{os.getppid()}-4567abcd"
    other_label = work / f".mpu-returns.received-{host}-{ended.pid}-89abcdef"
    other_machine = work / f".mpu-inbox.received-{'0' * 8 if host != '0' * 8 else '1' * 8}-{ended.pid}-cdef0123"   # an NFS home
    for folder in (left, running, other_label, other_machine):
        folder.mkdir()
    assert leftover_copies(work, "mpu-inbox") == [left]
    with private_copy(received, FILES, work, "mpu-inbox") as local:
        assert sorted(work.iterdir()) == sorted([local, running, other_label, other_machine])


class ThreadSharing:
    """CopySharing between threads standing for the processes of one launch (torchrun's local ranks)."""

    def __init__(self, processes: int):
        import threading

        self.barrier = threading.Barrier(processes, timeout=30)
        self.folder = None
        self.calls = []

    def rank(self, rank: int):
        sharing = self

        class Rank:
            makes_copy = rank == 0

            def share(self, folder):
                sharing.calls.append(("share", rank))
                if rank == 0:
                    sharing.folder = folder
                sharing.barrier.wait()
                return sharing.folder

            def wait(self):
                sharing.calls.append(("wait", rank))
                sharing.barrier.wait()

        return Rank()


def _run_ranks(processes, body):
    """Run ``body(rank)`` in one thread per rank; the ranks' results or exceptions, in rank order."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(processes) as pool:
        futures = [pool.submit(body, rank) for rank in range(processes)]
        return [future.exception() or future.result() for future in futures]


def test_the_processes_of_a_launch_share_one_copy_removed_when_all_have_left(received, tmp_path):
    sharing, work = ThreadSharing(3), tmp_path / "work"
    seen = {}

    def body(rank):
        with private_copy(received, FILES, work, "mpu-inbox", sharing=sharing.rank(rank)) as local:
            seen[rank] = (local, sorted(path.name for path in work.iterdir()),
                          (local / "copy-1" / "model.safetensors").read_bytes() == (received / "copy-1" / "model.safetensors").read_bytes())
            if rank == 2:   # the last to leave: the copy is still there while it reads
                import time

                time.sleep(0.3)
                seen["late"] = (local / "copy-1" / "config.json").read_text()
        return local

    results = _run_ranks(3, body)

    assert results[0] == results[1] == results[2] and all(isinstance(result, os.PathLike) for result in results)
    assert all(names == [results[0].name] and same for _, names, same in (seen[rank] for rank in range(3)))   # one copy
    assert seen["late"] == '{"b": 2}'
    assert not results[0].exists() and list(work.iterdir()) == []
    assert sorted(sharing.calls) == [("share", 0), ("share", 1), ("share", 2), ("wait", 0), ("wait", 1), ("wait", 2)]


def test_when_the_maker_is_refused_every_process_of_the_launch_stops(received, tmp_path):
    from mpu.errors import MPUError

    sharing = ThreadSharing(2)

    def body(rank):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox", max_folder_bytes=1000, sharing=sharing.rank(rank)):
            pytest.fail("used a copy that was refused")

    maker, other = _run_ranks(2, body)

    assert isinstance(maker, InputError) and maker.path == str(received / "copy-1")
    assert isinstance(other, MPUError) and "could not make the private copy" in str(other) and str(received) in str(other)
    assert list((tmp_path / "work").iterdir()) == []


def test_errors_in_a_sharing_process_name_the_received_file(received, tmp_path):
    sharing = ThreadSharing(2)

    def body(rank):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox", sharing=sharing.rank(rank)) as local:
            raise InputError(local / "copy-1" / "config.json", "bad value")

    errors = _run_ranks(2, body)

    assert [error.path for error in errors] == [str(received / "copy-1" / "config.json")] * 2
    assert list((tmp_path / "work").iterdir()) == []
