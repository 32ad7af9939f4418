"""A private copy of received files: exactly the checked files, through descriptors that follow no
link, private modes, removed after use, and errors that name the received files."""

from __future__ import annotations

import os
import stat

import pytest

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
        assert leftover_copies(tmp_path / "work", "mpu-inbox") == [local]
        assert local.parent == tmp_path / "work" and local.name.startswith(".mpu-inbox.received-")
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


def test_a_copy_that_cannot_be_written_is_an_error_not_a_traceback(received, tmp_path, monkeypatch):
    import mpu.checkpoint.received as module
    from mpu.errors import MPUError

    class Full:   # a file on a disk that filled up after the free space was checked
        def __init__(self, fd, mode):
            self.file = open(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "open", Full, raising=False)
    with pytest.raises(MPUError, match="cannot write the private copy .*No space left on device"):
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox"):
            pytest.fail("the block ran on a partial copy")
    assert list((tmp_path / "work").iterdir()) == []


def test_errors_in_the_block_name_the_received_file(received, tmp_path):
    with pytest.raises(InputError) as err:
        with private_copy(received, FILES, tmp_path / "work", "mpu-inbox") as local:
            raise InputError(local / "copy-1" / "config.json", f"bad value (also in {local / 'manifest.json'})")
    assert err.value.path == str(received / "copy-1" / "config.json")
    assert err.value.reason == f"bad value (also in {received / 'manifest.json'})"
    assert ".received-" not in str(err.value)
