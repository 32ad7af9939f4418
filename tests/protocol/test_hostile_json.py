"""The strict reading both parties apply to the other's JSON and names: one meaning per file (no
repeated keys), no NaN, no recursion or integer-conversion tracebacks, and patterns matched whole
(a trailing newline is not part of a name)."""

from __future__ import annotations

import pytest

from mpu.checkpoint.files import parse_json
from mpu.errors import InputError
from mpu.protocol import UpdateManifest, update_folder_copy_id

GOOD = {"format": "mpu-update/1", "kind": "full", "round": 1, "copy_id": 1, "copy_sha256": "a" * 64, "method": "NPO", "steps": 3}


@pytest.mark.parametrize("raw, reason", [
    (b'{"round": 1, "round": 2}', "repeats the key 'round'"),
    (b'{"a": {"b": 1, "b": 1}}', "repeats the key 'b'"),
    (b'{"seconds": NaN}', "holds NaN"),
    (b'{"seconds": -Infinity}', "holds -Infinity"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b'{"steps": 1' + b"0" * 5000 + b"}", "not usable JSON"),
    (b'{"a": "\xff"}', "not UTF-8"),
    (b'{"a": ', "truncated or not valid JSON"),
    # numbers Python would turn into infinity, or could not compare with a float (math.isfinite overflows)
    (b'{"rms_norm_eps": 1e400}', "beyond the float range"),
    (b'{"seconds": -1.5e309}', "beyond the float range"),
    (b'{"seconds": 1' + b"0" * 400 + b"}", "integer of 401 digits, beyond the float range"),
    (b'{"steps": -2' + b"0" * 309 + b"}", "beyond the float range"),
    # valid JSON, not text: cannot be printed or written as UTF-8
    (b'{"hparams": {"beta": "\\ud800"}}', "lone UTF-16 surrogate"),
    (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
    (b'[["x", "a\\ud83d"]]', "lone UTF-16 surrogate"),
])
def test_json_from_the_other_party_is_read_strictly(raw, reason, tmp_path):
    with pytest.raises(InputError) as error:
        parse_json(raw, tmp_path / "update.json", "update manifest")
    assert reason in str(error.value)
    assert str(tmp_path / "update.json") in str(error.value)


def test_well_formed_json_is_read_as_is(tmp_path):
    assert parse_json(b'{"a": [1, 2.5, null, "x"], "b": {"c": true}}', tmp_path / "f.json") == {"a": [1, 2.5, None, "x"], "b": {"c": True}}
    # the edges stay readable: tokenizer configs' 10**30, the largest floats, a surrogate pair (one character)
    assert parse_json(b'[1000000000000000019884624838656, -1' + b"0" * 300 + b', 1.7976931348623157e308, 5e-324, "\\ud83d\\ude00"]',
                      tmp_path / "f.json") == [int(1e30), -10**300, 1.7976931348623157e308, 5e-324, "\U0001F600"]


@pytest.mark.parametrize("field, value", [
    ("method", "NPO\n"), ("publication_id", "ab\n"), ("copy_sha256", "a" * 63 + "\n"), ("method", "NPO\u0301"),
])
def test_a_trailing_newline_or_combining_mark_is_not_part_of_a_name(field, value, tmp_path):
    with pytest.raises(InputError, match="characters outside|must be 64..64"):
        UpdateManifest.from_json({**GOOD, field: value}, tmp_path / "update.json")


def test_a_setting_name_is_matched_whole(tmp_path):
    with pytest.raises(InputError, match="has a setting named"):
        UpdateManifest.from_json({**GOOD, "hparams": {"beta\n": 0.1}}, tmp_path / "update.json")
    assert UpdateManifest.from_json({**GOOD, "hparams": {"beta": 0.1}}, tmp_path / "update.json").hparams == {"beta": 0.1}


@pytest.mark.parametrize("name, copy_id", [("update-3", 3), ("update-3\n", None), ("UPDATE-3", None), ("update-٣", None), ("update-03", None), ("update-0", None), ("update-999999", 999999)])
def test_update_folder_names_are_matched_whole(name, copy_id):
    assert update_folder_copy_id(name) == copy_id
