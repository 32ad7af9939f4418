"""Command-line flags generated from a dataclass's fields: the dataclass is the one schema of a setting.

Each field becomes one flag (``--field-name``), its help text the field's ``metadata["help"]`` followed
by the field's default (none for a default of None: the help says what leaving the flag out means). ``metadata`` may also set ``flag`` (the main flag; ``None``: no flag),
``flags`` (aliases, added only where the parser has not taken them), ``choices``, ``metavar``,
``flag_help`` and ``flag_default`` (the help and default of the flag where they read differently
from the field's). A ``bool`` field
becomes ``--name/--no-name``. Flags are left unset unless given (``argparse.SUPPRESS``), so the caller
sees only what the command line said and the dataclass supplies every default. Values stay strings;
the caller converts them to the field's type. Imports nothing heavy: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Union


def flag_name(name: str) -> str:
    """``learning_rate`` -> ``--learning-rate``."""
    return "--" + name.replace("_", "-")


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory), or ``"(required)"``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"


def add_dataclass_arguments(parser: argparse.ArgumentParser, group, cls, dest_prefix: str) -> list[str]:
    """Add one flag per field of dataclass ``cls`` to ``group`` (a group of ``parser``); the parsed value
    lands in ``dest_prefix + field name``. Returns the names of the fields that got a flag."""
    names = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "flag" in meta and meta["flag"] is None:
            continue
        flags = [meta.get("flag") or flag_name(f.name)]
        # The main flag must be free; aliases (--lr, --seed, -m, ...) only where the parser has not taken them.
        flags += [alias for alias in meta.get("flags", ()) if alias not in parser._option_string_actions]
        help_text, default = meta.get("flag_help", meta.get("help", "")), meta.get("flag_default", field_default(f))
        if default is not None:   # None: the help says what leaving the flag out means
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")
        options: dict[str, Any] = {"dest": dest_prefix + f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.type in (bool, "bool"):
            options["action"] = argparse.BooleanOptionalAction
        elif "choices" in meta:
            options["choices"] = meta["choices"]
        else:
            options["metavar"] = meta.get("metavar", "V")
        group.add_argument(*flags, **options)
        names.append(f.name)
    return names


def given_values(args: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The fields that the command line set, by field name."""
    return {key[len(dest_prefix):]: value for key, value in vars(args).items() if key.startswith(dest_prefix)}


def coerce(value: Any, hint: Any) -> Any:
    """Convert ``value`` (a YAML value or a command-line string) to ``hint``; ValueError if it doesn't fit."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if type(None) in options and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option)
            except ValueError:
                continue
        raise ValueError(f"expected {_type_name(hint)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return [coerce(element, item) for element in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"no conversion to {hint!r}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))
