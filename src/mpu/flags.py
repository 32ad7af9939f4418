"""A setting's one schema is its dataclass: command-line flags are generated from the fields, and values
from flags or YAML files are typed and checked against the fields by OmegaConf.

Each field becomes one flag (``--field-name``), its help text the field's ``metadata["help"]`` followed
by the field's default (none for a default of None: the help says what leaving the flag out means). ``metadata`` may also set ``flag`` (the main flag; ``None``: no flag),
``flags`` (aliases, added only where the parser has not taken them), ``choices``, ``metavar``,
``flag_help`` and ``flag_default`` (the help and default of the flag where they read differently
from the field's). A ``bool`` field becomes ``--name/--no-name``. A field that is itself a dataclass
contributes its own fields' flags (in an argument group titled ``metadata["group"]``), parsed into a
nested mapping. Flags are left unset unless given (``argparse.SUPPRESS``), so the caller sees only what
the command line said and the dataclass supplies every default. Values stay strings until
:func:`build_dataclass` types them. Imports nothing heavy: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Mapping

_NESTED = "."  # dest separator of a nested dataclass's fields: "reparam.vo"


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


def _nested_dataclass(cls, f: dataclasses.Field):
    """The dataclass type of field ``f`` of ``cls``, or None."""
    hint = typing.get_type_hints(cls).get(f.name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def flag_of(cls, path: str) -> str:
    """The main flag of the field at dotted ``path`` of ``cls`` (``"reparam.vo"`` -> ``--vo``)."""
    head, _, rest = path.partition(_NESTED)
    f = next(f for f in dataclasses.fields(cls) if f.name == head)
    if rest:
        return flag_of(_nested_dataclass(cls, f), rest)
    return f.metadata.get("flag") or flag_name(f.name)


def add_dataclass_arguments(parser: argparse.ArgumentParser, group, cls, dest_prefix: str) -> list[str]:
    """Add one flag per field of dataclass ``cls`` to ``group`` (a group of ``parser``); the parsed value
    lands in ``dest_prefix + field name`` (``dest_prefix + "reparam.vo"`` for a nested dataclass's
    field). Returns the dotted names of the fields that got a flag."""
    names = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "flag" in meta and meta["flag"] is None:
            continue
        nested = _nested_dataclass(cls, f)
        if nested is not None:
            subgroup = parser.add_argument_group(meta["group"]) if "group" in meta else group
            names += [f.name + _NESTED + name for name in
                      add_dataclass_arguments(parser, subgroup, nested, dest_prefix + f.name + _NESTED)]
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
    """The fields that the command line set, by field name; a nested dataclass's as a nested mapping."""
    given: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith(dest_prefix):
            *parents, name = key[len(dest_prefix):].split(_NESTED)
            node = given
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = value
    return given


class FieldError(ValueError):
    """A value that does not fit its dataclass: ``key`` is the dotted field name (None when the
    dataclass's own checks refused the values together), ``unknown`` whether no such field exists."""

    def __init__(self, key: str | None, message: str, unknown: bool = False):
        super().__init__(message)
        self.key, self.unknown = key, unknown


_EXPECTED = {"IntegerNode": "an integer", "FloatNode": "a number", "BooleanNode": "true or false",
             "StringNode": "a string", "EnumNode": "one of the choices"}


def _leaves(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    leaves = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            leaves += _leaves(value, prefix + key + ".")
        else:
            leaves.append((prefix + key, value))
    return leaves


def _writable(node) -> None:
    """Let a frozen dataclass's node (and its nested ones) take values; ``to_object`` still builds the
    frozen object."""
    from omegaconf import DictConfig, OmegaConf

    OmegaConf.set_readonly(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _writable(child)


def build_dataclass(cls, values: Mapping[str, Any]):
    """``cls`` with ``values`` (a mapping, nested for nested dataclasses; YAML values or command-line
    strings) over its defaults, each value typed by OmegaConf against its field (``"3"`` -> 3 for an
    ``int``; ``"none"``/``"null"`` -> None for an optional field), then ``cls.__post_init__``'s checks.

    Raises :class:`FieldError` naming the field for an unknown key or a value that does not fit, and
    with ``key=None`` when the dataclass refuses the values (its ``ValueError``'s message)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    schema = OmegaConf.structured(cls)
    _writable(schema)
    for key, value in _leaves(values):
        node_parent, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(schema, node_parent) if node_parent else schema
        if parent is None or leaf not in parent:
            raise FieldError(key, "unknown key", unknown=True)
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and parent._get_node(leaf)._is_optional():
            value = None
        try:
            OmegaConf.update(schema, key, value, merge=True)
        except (ValidationError, ConfigKeyError, ConfigAttributeError):
            node = type(parent._get_node(leaf)).__name__
            expected = _EXPECTED.get(node, "a value of the field's type")
            if parent._get_node(leaf)._is_optional():
                expected += " or null"
            raise FieldError(key, f"expected {expected}, got {value!r}") from None
    try:
        return OmegaConf.to_object(schema)
    except ValueError as err:
        raise FieldError(None, str(err)) from None
