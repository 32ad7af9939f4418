"""A folder as an ArrayRecord of file bytes and back: byte-exact, and hostile records refused."""

from __future__ import annotations

import os

import pytest
from flwr.app import Array, ArrayRecord

from mpu.errors import InputError, MPUError
from mpu.flower.files import FILE_STYPE, folder_to_record, record_bytes, record_to_folder


def file_array(data: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(data),), stype=FILE_STYPE, data=data)


def test_a_publication_folder_arrives_byte_for_byte(tmp_path):
    source = tmp_path / "outbox"
    (source / "copy-1").mkdir(parents=True)
    (source / "manifest.json").write_text('{"round": 1}')
    (source / "copy-1" / "model.safetensors").write_bytes(bytes(range(256)) * 1000)
    (source / "copy-1" / "empty.json").write_bytes(b"")

    record = folder_to_record(source)
    target = record_to_folder(record, tmp_path / "inbox")

    assert sorted(record) == ["copy-1/empty.json", "copy-1/model.safetensors", "manifest.json"]
    assert record_bytes(record) == 256_000 + len('{"round": 1}')
    for name in record:
        assert (target / name).read_bytes() == (source / name).read_bytes()
        assert (target / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("key", ["../escape.json", "/etc/passwd", "a/../../b", ".hidden", "copy-1/./x", "a/b/c/d", "a\\b", "",
                                 # one part past the file system's 255 bytes (an OSError traceback), in characters
                                 # or in UTF-8 bytes; a lone surrogate no file system can store
                                 "update-1/" + "a" * 256, "update-1/" + "\u00e9" * 130, "update-1/\ud800.json"])
def test_a_key_that_is_not_a_plain_relative_path_is_refused(tmp_path, key):
    record = ArrayRecord({key: file_array(b"x")})
    with pytest.raises(InputError, match="plain relative path"):
        record_to_folder(record, tmp_path / "inbox")
    assert not (tmp_path / "inbox").exists() and not (tmp_path / "escape.json").exists()


def test_an_array_that_is_not_a_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        record_to_folder(ArrayRecord({"manifest.json": Array(dtype="float32", shape=(1,), stype=FILE_STYPE, data=b"1234")}), tmp_path / "a")
    with pytest.raises(InputError, match="does not match"):
        record_to_folder(ArrayRecord({"manifest.json": Array(dtype="uint8", shape=(9,), stype=FILE_STYPE, data=b"1234")}), tmp_path / "b")
    with pytest.raises(InputError, match="more than 3 bytes"):
        record_to_folder(ArrayRecord({"manifest.json": file_array(b"1234")}), tmp_path / "c", max_bytes=3)
    with pytest.raises(InputError, match="both a file and a folder"):
        record_to_folder(ArrayRecord({"copy-1": file_array(b"1"), "copy-1/x": file_array(b"2")}), tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_an_existing_target_is_not_overwritten(tmp_path):
    (tmp_path / "inbox").mkdir()
    with pytest.raises(InputError, match="already exists"):
        record_to_folder(ArrayRecord({"manifest.json": file_array(b"{}")}), tmp_path / "inbox")


def test_a_symbolic_link_is_not_sent(tmp_path):
    source = tmp_path / "returns"
    source.mkdir()
    (tmp_path / "secret.txt").write_text("private")
    os.symlink(tmp_path / "secret.txt", source / "update.json")
    with pytest.raises(MPUError, match="symbolic link"):
        folder_to_record(source)


@pytest.mark.parametrize("names", [("copy-1/Model.json", "copy-1/model.json"),
                                   ("copy-1/caf\u00e9.json", "copy-1/cafe\u0301.json")])
def test_names_that_differ_only_by_case_or_unicode_form_are_refused(tmp_path, names):
    # a case-insensitive or normalising file system would write both to one file
    record = ArrayRecord({name: file_array(b"1") for name in names})
    with pytest.raises(InputError, match="differ only by case or Unicode form"):
        record_to_folder(record, tmp_path / "inbox")
    assert not (tmp_path / "inbox").exists()


def test_a_record_with_too_many_files_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import mpu.flower.files as files

    monkeypatch.setattr(files, "MAX_FILES", 3)
    record = ArrayRecord({f"copy-1/f{i}.json": file_array(b"1") for i in range(4)})
    with pytest.raises(InputError, match="4 files, more than the 3"):
        record_to_folder(record, tmp_path / "inbox")
    assert list(tmp_path.iterdir()) == []
