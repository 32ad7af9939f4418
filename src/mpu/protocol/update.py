"""The update manifest (``RETURNS/update-K/update.json``): what the client states about one update.

It names the copy the update was trained from (id, checksum, round, publication), how it was trained
(method, hyperparameters, training options, prompt encoding, DP guarantee) and a loss-curve summary.
No examples, no tokens, no per-example losses. The server reads it as hostile input: every field is
checked by type, range and length before any state changes, and unknown fields are refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mpu.errors import InputError, shown
from mpu.protocol.layout import UPDATE_FORMAT

# Limits on the manifest's fields. They are far above what the client writes (a method name of ~10
# characters, ~10 hyperparameters, ~20 training options) and far below what could cost memory or time.
MAX_NAME_CHARS = 64  # method names, setting names
MAX_TEXT_CHARS = 4096  # a string setting (a scheduler name, a module list, a system prompt)
MAX_SETTINGS = 64  # keys in ``hparams`` / ``training``
MAX_LIST_ITEMS = 64  # items of a list-valued setting
MAX_STEPS = 10**9
UPDATE_KINDS = ("full", "lora")
# Matched with fullmatch: "$" alone would also accept a trailing newline ("GradAscent\n").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_HEX = re.compile(r"[0-9a-f]+")
LOSS_KEYS = ("first", "last", "min", "mean")
# ``encoding``: how the client rendered and cut its rows (mpu.data.qa.Encoder.record plus truncation counts).
ENCODING_KEYS = {"prompt_format": "settings", "chat_template_sha256": "sha256", "max_length": "count",
                 "truncate": "bool", "rows_truncated": "count", "tokens_truncated": "count"}
# ``dp``: the DP-SGD guarantee of the update (mpu.methods.dp.PrivateSteps.report).
DP_KEYS = {"epsilon": "number", "epsilon_one_copy": "number", "runs": "count", "delta": "number",
           "clip_norm": "number", "noise_multiplier": "number", "sample_rate": "number", "steps": "count",
           "target_epsilon": "number", "accountant": "text"}


@dataclass(frozen=True)
class UpdateManifest:
    """The manifest of one copy's update.

    Required: ``kind`` (full | lora), ``round`` (1..1e9), ``copy_id`` (1-based), ``copy_sha256`` (64 hex
    digits: the checksum of the copy trained from), ``method`` (a name of 1..64 characters), ``steps``
    (optimizer steps, 0..1e9). Optional (None when absent), as the client writes them:
    ``publication_id`` (hex), ``reference_round`` (1..round: the round whose copy served as the
    reference model), ``hparams`` and ``training`` (flat objects of named scalars or short lists),
    ``seconds`` (wall time, finite, >= 0), ``loss`` (first/last/min/mean, finite numbers or null),
    ``encoding`` (the prompt format, chat-template hash and length policy, ``ENCODING_KEYS``), ``dp``
    (the DP-SGD guarantee, ``DP_KEYS``).
    """

    kind: str
    round: int
    copy_id: int
    copy_sha256: str
    method: str
    steps: int
    publication_id: str | None = None
    reference_round: int | None = None
    hparams: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    seconds: float | None = None
    loss: dict[str, float | None] | None = None
    encoding: dict[str, Any] | None = None
    dp: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, with the format tag; optional fields that are None are left out."""
        data: dict[str, Any] = {"format": UPDATE_FORMAT}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None or item.name in _REQUIRED:
                data[item.name] = value
        return data

    @classmethod
    def from_json(cls, data: Any, path: str | Path, *, round: int | None = None, publication_id: str | None = None) -> "UpdateManifest":
        """Parse and validate an update manifest read from ``path`` (the other party's file, hostile).

        Every field is checked by type, range and length; booleans are not integers here; any field
        not listed in the class is refused. With ``round`` (the server's current round) the manifest
        must be for that round and ``reference_round`` at most it; with ``publication_id`` (the one this
        round published) a stated publication id must equal it. Raises InputError naming ``path``.
        """
        path = Path(path)
        if not isinstance(data, dict):
            raise InputError(path, "update manifest is not a JSON object")
        if data.get("format") != UPDATE_FORMAT:
            raise InputError(path, f"not an mpu update manifest (expected format {UPDATE_FORMAT!r})")
        unknown = sorted(str(key)[:MAX_NAME_CHARS] for key in data if key not in _FIELDS)
        if unknown:
            raise InputError(path, f"unknown fields {unknown[:5]}; an update manifest holds only {sorted(_FIELDS)}")
        for key in _REQUIRED:
            if key not in data:
                raise InputError(path, f"field {key!r} missing")
        _int(data, "round", path, 1, MAX_STEPS)
        if round is not None and data["round"] != round:
            raise InputError(path, f"update is for round {data['round']}, the server is in round {round}")
        round_number = data["round"] if round is None else round
        _int(data, "copy_id", path, 1, MAX_STEPS)
        _text(data, "copy_sha256", path, _HEX, 64, 64)
        if data["kind"] not in UPDATE_KINDS:
            raise InputError(path, f"field 'kind' must be 'full' or 'lora', got {shown(data['kind'])}")
        _text(data, "method", path, _NAME, 1, MAX_NAME_CHARS)
        _int(data, "steps", path, 0, MAX_STEPS)
        if "publication_id" in data:
            _text(data, "publication_id", path, _HEX, 1, 64)
            if publication_id is not None and data["publication_id"] != publication_id:
                raise InputError(path, f"update is for publication {data['publication_id']}, this round published {publication_id}")
        if "reference_round" in data:
            _int(data, "reference_round", path, 1, round_number)
        for key in ("hparams", "training"):
            if key in data:
                _settings(data[key], key, path)
        if "seconds" in data:
            _number(data["seconds"], "seconds", path, allow_none=False)
            if data["seconds"] < 0:
                raise InputError(path, f"field 'seconds' must be >= 0, got {data['seconds']}")
        if "encoding" in data:
            _record(data["encoding"], "encoding", path, ENCODING_KEYS)
        if "dp" in data:
            _dp(data["dp"], path)
        if "loss" in data:
            loss = data["loss"]
            if not isinstance(loss, dict) or set(loss) - set(LOSS_KEYS):
                raise InputError(path, f"field 'loss' must be an object with keys among {list(LOSS_KEYS)}")
            for key, value in loss.items():
                _number(value, f"loss.{key}", path, allow_none=True)
        return cls(**{key: value for key, value in data.items() if key != "format"})


_REQUIRED = ("kind", "round", "copy_id", "copy_sha256", "method", "steps")
_FIELDS = frozenset(_REQUIRED) | {"format", "publication_id", "reference_round", "hparams", "training", "seconds", "loss",
                                  "encoding", "dp"}


def same_setting(first: Any, second: Any) -> bool:
    """Whether two settings of update manifests are the same, compared as JSON text, not with ``==``:
    Python has ``True == 1 == 1.0`` and ``0.0 == -0.0``, which the copies (or the data owners) of one
    job must not get away with."""
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def _int(manifest: dict, key: str, path: Path, low: int, high: int) -> None:
    value = manifest[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(path, f"field {key!r} must be an integer, got {type(value).__name__} {shown(value)}")
    if not low <= value <= high:
        raise InputError(path, f"field {key!r} must be in [{low}, {high}], got {value}")


def _text(manifest: dict, key: str, path: Path, pattern: re.Pattern, shortest: int, longest: int) -> None:
    value = manifest[key]
    if not isinstance(value, str):
        raise InputError(path, f"field {key!r} must be a string, got {type(value).__name__} {shown(value)}")
    if not shortest <= len(value) <= longest:
        raise InputError(path, f"field {key!r} must be {shortest}..{longest} characters, got {len(value)}")
    if not pattern.fullmatch(value):
        raise InputError(path, f"field {key!r} has characters outside {pattern.pattern}: {shown(value)}")


def _number(value: Any, key: str, path: Path, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(path, f"field {key!r} must be a finite number, got {shown(value)}")


def _settings(value: Any, key: str, path: Path) -> None:
    """``hparams``/``training``: a flat object of named scalars (or short lists of scalars)."""
    if not isinstance(value, dict):
        raise InputError(path, f"field {key!r} must be an object, got {type(value).__name__}")
    if len(value) > MAX_SETTINGS:
        raise InputError(path, f"field {key!r} has {len(value)} entries, more than {MAX_SETTINGS}")
    for name, item in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
            raise InputError(path, f"field {key!r} has a setting named {shown(name)}")
        items = item if isinstance(item, list) else [item]
        if len(items) > MAX_LIST_ITEMS:
            raise InputError(path, f"setting {key}.{name} has {len(items)} items, more than {MAX_LIST_ITEMS}")
        for scalar in items:
            if isinstance(scalar, str):
                if len(scalar) > MAX_TEXT_CHARS:
                    raise InputError(path, f"setting {key}.{name} is {len(scalar)} characters, more than {MAX_TEXT_CHARS}")
            elif isinstance(scalar, float) and not math.isfinite(scalar):
                raise InputError(path, f"setting {key}.{name} is not finite")
            elif scalar is not None and not isinstance(scalar, (bool, int, float)):
                raise InputError(path, f"setting {key}.{name} must be a number, string, boolean or null (or a list of them), got {shown(scalar)}")


def _record(value: Any, key: str, path: Path, kinds: dict[str, str]) -> None:
    """A small object whose keys are among ``kinds`` (key -> settings | sha256 | count | bool | number |
    text), each of that kind or null."""
    if not isinstance(value, dict):
        raise InputError(path, f"field {key!r} must be an object, got {type(value).__name__}")
    unknown = sorted(str(name)[:MAX_NAME_CHARS] for name in value if name not in kinds)
    if unknown:
        raise InputError(path, f"field {key!r} has unknown keys {unknown[:5]}; known: {sorted(kinds)}")
    for name, item in value.items():
        kind, where = kinds[name], f"{key}.{name}"
        if item is None:
            continue
        if kind == "settings":
            _settings(item, where, path)
        elif kind == "sha256":
            _text(value, name, path, _HEX, 64, 64)
        elif kind == "count":
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= MAX_STEPS:
                raise InputError(path, f"field {where!r} must be an integer in [0, {MAX_STEPS}], got {shown(item)}")
        elif kind == "bool":
            if not isinstance(item, bool):
                raise InputError(path, f"field {where!r} must be true or false, got {shown(item)}")
        elif kind == "number":
            _number(item, where, path, allow_none=True)
            if item < 0:
                raise InputError(path, f"field {where!r} must be >= 0, got {item}")
        elif not isinstance(item, str) or len(item) > MAX_NAME_CHARS:
            raise InputError(path, f"field {where!r} must be a string of at most {MAX_NAME_CHARS} characters, got {shown(item)}")


def _dp(value: Any, path: Path) -> None:
    _record(value, "dp", path, DP_KEYS)
    if value.get("delta") is not None and not 0 < value["delta"] < 1:
        raise InputError(path, f"field 'dp.delta' must be in (0, 1), got {value['delta']}")
