"""The update manifest: to_json/from_json round-trip, the round checks, and unknown fields refused."""

from __future__ import annotations

import pytest

from mpu.errors import InputError
from mpu.protocol import UPDATE_FORMAT, UpdateManifest

SHA = "c" * 64
PATH = "/returns/update-1/update.json"


def manifest(**changes) -> UpdateManifest:
    settings = dict(kind="full", round=2, copy_id=1, copy_sha256=SHA, method="NPO", steps=10, publication_id="00ff",
                    reference_round=1, hparams={"beta": 0.1, "modules": ["q_proj", "v_proj"]}, training={"learning_rate": 1e-5},
                    seconds=1.5, loss={"first": 2.0, "last": 1.0, "min": 1.0, "mean": None},
                    encoding={"max_length": 512, "truncate": True, "chat_template_sha256": "d" * 64},
                    dp={"epsilon": 3.0, "delta": 1e-5, "accountant": "prv"})
    settings.update(changes)
    return UpdateManifest(**settings)


def test_round_trip():
    original = manifest()

    data = original.to_json()

    assert data["format"] == UPDATE_FORMAT
    assert UpdateManifest.from_json(data, PATH, round=2, publication_id="00ff") == original


def test_optional_fields_that_are_none_are_left_out():
    minimal = UpdateManifest(kind="lora", round=1, copy_id=3, copy_sha256=SHA, method="GradAscent", steps=0)

    data = minimal.to_json()

    assert data == {"format": UPDATE_FORMAT, "kind": "lora", "round": 1, "copy_id": 3, "copy_sha256": SHA, "method": "GradAscent", "steps": 0}
    assert UpdateManifest.from_json(data, PATH) == minimal


def changed(key, value):
    data = manifest().to_json()
    data[key] = value
    return data


def without(key):
    data = manifest().to_json()
    del data[key]
    return data


@pytest.mark.parametrize("data, reason", [
    ("[]", "not a JSON object"),
    (changed("format", "mpu-update/2"), "not an mpu update manifest"),
    (changed("secret", 1), "unknown fields ['secret']"),
    (without("steps"), "field 'steps' missing"),
    (changed("round", 3), "update is for round 3, the server is in round 2"),
    (changed("round", True), "field 'round' must be an integer"),
    (changed("copy_id", 0), "field 'copy_id' must be in [1,"),
    (changed("copy_sha256", "c" * 63), "field 'copy_sha256' must be 64..64 characters"),
    (changed("kind", "delta"), "field 'kind' must be 'full' or 'lora'"),
    (changed("method", "rm -rf"), "field 'method' has characters outside"),
    (changed("steps", -1), "field 'steps' must be in [0,"),
    (changed("publication_id", "11aa"), "update is for publication 11aa, this round published 00ff"),
    (changed("reference_round", 3), "field 'reference_round' must be in [1, 2]"),
    (changed("hparams", {"beta": float("nan")}), "setting hparams.beta is not finite"),
    (changed("training", {"x": "y" * 5000}), "more than 4096"),
    (changed("seconds", -1.0), "field 'seconds' must be >= 0"),
    (changed("loss", {"median": 1.0}), "field 'loss' must be an object with keys among"),
    (changed("encoding", {"secret": 1}), "field 'encoding' has unknown keys ['secret']"),
    (changed("dp", {"delta": 2.0}), "field 'dp.delta' must be in (0, 1)"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_malformed_fields_are_refused_naming_the_file(data, reason):
    with pytest.raises(InputError, match="update.json") as error:
        UpdateManifest.from_json(data, PATH, round=2, publication_id="00ff")
    assert reason in str(error.value)


def test_without_a_server_round_the_manifest_bounds_itself():
    data = changed("reference_round", 2)

    assert UpdateManifest.from_json(data, PATH).reference_round == 2
    with pytest.raises(InputError, match="'reference_round' must be in"):
        UpdateManifest.from_json(changed("reference_round", 3), PATH)


def test_a_manifest_written_by_the_previous_release_is_read():
    # as mpu 0c3312f's `mpu client unlearn` wrote update.json (key order included)
    old = {"round": 1, "reference_round": 1, "publication_id": "9f0c2a1b33d4e5f6", "copy_id": 2, "copy_sha256": SHA,
           "method": "GradAscent", "hparams": {"gamma": 1.0}, "training": {"epochs": 1, "learning_rate": 1e-05, "bf16": False},
           "kind": "full", "steps": 4, "seconds": 0.512, "loss": {"first": 3.1, "last": 2.9, "min": 2.9, "mean": 3.0},
           "encoding": {"prompt_format": {"template": "qa"}, "max_length": 512, "truncate": True, "rows_truncated": 0,
                        "tokens_truncated": 0}, "format": "mpu-update/1"}

    parsed = UpdateManifest.from_json(old, PATH, round=1, publication_id="9f0c2a1b33d4e5f6")

    assert (parsed.copy_id, parsed.method, parsed.dp) == (2, "GradAscent", None)
    assert parsed.to_json() == old
