"""The publication manifest: to_json/from_json round-trip, and every field refused when malformed."""

from __future__ import annotations

import pytest

from mpu.errors import InputError
from mpu.protocol import PUBLICATION_FORMAT, CopyEntry, PublicationManifest

SHA = "a" * 64
PATH = "/inbox/manifest.json"


def manifest(**changes) -> PublicationManifest:
    settings = dict(round=2, rounds=3, publication_id="0123abcd", architecture="llama", dtype="bfloat16",
                    copies=(CopyEntry(1, "copy-1", SHA), CopyEntry(2, "copy-2", "b" * 64)))
    settings.update(changes)
    return PublicationManifest(**settings)


def test_round_trip():
    original = manifest()

    data = original.to_json()

    assert data["format"] == PUBLICATION_FORMAT
    assert list(data) == ["format", "round", "rounds", "publication_id", "architecture", "dtype", "copies"]
    assert data["copies"][0] == {"id": 1, "path": "copy-1", "sha256": SHA}
    assert PublicationManifest.from_json(data, PATH) == original


def test_optional_fields_may_be_absent():
    minimal = manifest(rounds=None, architecture=None, dtype=None)

    data = minimal.to_json()

    assert set(data) == {"format", "round", "publication_id", "copies"}
    assert PublicationManifest.from_json(data, PATH) == minimal


def test_a_manifest_written_by_the_previous_release_is_read():
    # as mpu 0c3312f's `mpu server publish` wrote it
    old = {"format": "mpu-publication/1", "round": 1, "rounds": 1, "publication_id": "9f0c2a1b33d4e5f6", "architecture": "llama",
           "dtype": "float32", "copies": [{"id": k, "path": f"copy-{k}", "sha256": SHA} for k in (1, 2, 3)]}

    parsed = PublicationManifest.from_json(old, PATH)

    assert [copy.id for copy in parsed.copies] == [1, 2, 3]
    assert parsed.to_json() == old


def changed(key, value):
    data = manifest().to_json()
    data[key] = value
    return data


def with_copy(**entry):
    data = manifest().to_json()
    data["copies"][0] = {**data["copies"][0], **entry}
    return data


@pytest.mark.parametrize("data, reason", [
    ([], "not an mpu publication manifest"),
    (changed("format", "mpu-publication/2"), "not an mpu publication manifest"),
    (changed("seed", 7), "unexpected fields ['seed']"),
    (changed("round", 0), "round must be an integer"),
    (changed("round", True), "round must be an integer"),
    (changed("rounds", 1), "rounds must be an integer in [2,"),
    (changed("publication_id", "../x"), "publication_id must be"),
    (changed("architecture", "a" * 101), "architecture must be"),
    (changed("dtype", "int8"), "dtype must be one of"),
    (changed("copies", []), "copies must be a list of 1 to"),
    (with_copy(extra=1), "each copy needs exactly the fields"),
    (with_copy(id=0), "copy id must be an integer"),
    (with_copy(path="../copy-1"), "leaves the inbox"),
    (with_copy(path=".."), "leaves the inbox"),
    (with_copy(sha256="A" * 64), "sha256 must be 64 lowercase hex digits"),
    (with_copy(id=2), "copy id 2 appears twice"),
    (with_copy(path="copy-2"), "copy folder 'copy-2' appears twice"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_malformed_fields_are_refused_naming_the_file(data, reason):
    with pytest.raises(InputError, match="manifest.json") as error:
        PublicationManifest.from_json(data, PATH)
    assert reason in str(error.value)
