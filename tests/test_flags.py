"""Flags generated from a dataclass's fields (mpu.flags): one flag per field, its help and default; values
typed against the fields by OmegaConf."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from mpu.flags import FieldError, add_dataclass_arguments, build_dataclass, flag_of, given_values


@dataclass(frozen=True)
class Inner:
    depth: float = field(default=1.0, metadata={"help": "how deep", "flag": "--inner-depth"})
    on: bool = field(default=True, metadata={"help": "inner switch", "flag": "--inner"})

    def __post_init__(self):
        if self.depth < 0:
            raise ValueError("depth must be >= 0")


@dataclass
class Toy:
    count: int = field(default=3, metadata={"help": "how many", "flags": ("-n",)})
    mode: str = field(default="a", metadata={"help": "which mode", "choices": ("a", "b")})
    loud: bool = field(default=False, metadata={"help": "say it"})
    hidden: str = field(default="x", metadata={"flag": None})
    seed: int | None = field(default=None, metadata={"help": "a seed", "flag": "--toy-seed", "flags": ("--seed",)})
    inner: Inner = field(default_factory=Inner, metadata={"group": "inner settings"})


def parser_with_toy(taken: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    for flag in taken:
        parser.add_argument(flag)
    add_dataclass_arguments(parser, parser.add_argument_group("toy"), Toy, "toy__")
    return parser


def test_every_field_but_the_hidden_one_gets_its_flag_and_aliases():
    parser = parser_with_toy()

    args = parser.parse_args(["-n", "5", "--mode", "b", "--loud", "--seed", "7"])

    assert given_values(args, "toy__") == {"count": "5", "mode": "b", "loud": True, "seed": "7"}
    assert given_values(parser.parse_args(["--no-loud", "--toy-seed", "1"]), "toy__") == {"loud": False, "seed": "1"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--hidden", "y"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_unset_flags_are_absent_so_the_dataclass_supplies_the_defaults():
    assert given_values(parser_with_toy().parse_args([]), "toy__") == {}


def test_an_alias_the_parser_already_has_is_left_to_it():
    parser = parser_with_toy(taken=("--seed",))

    args = parser.parse_args(["--seed", "9", "--toy-seed", "2"])

    assert args.seed == "9" and given_values(args, "toy__") == {"seed": "2"}


def test_the_help_is_the_fields_help_and_default():
    text = parser_with_toy().format_help()

    assert "how many (default: 3)" in text and "which mode (default: a)" in text
    assert "a seed\n" in text and "(default: None)" not in text   # None: the help says what leaving the flag out means


def test_a_nested_dataclass_gets_its_fields_flags_in_its_group_and_a_nested_mapping():
    parser = parser_with_toy()

    args = parser.parse_args(["--inner-depth", "2.5", "--no-inner", "-n", "1"])

    assert given_values(args, "toy__") == {"count": "1", "inner": {"depth": "2.5", "on": False}}
    assert "inner settings:" in parser.format_help() and "how deep (default: 1.0)" in parser.format_help()
    assert flag_of(Toy, "inner.depth") == "--inner-depth" and flag_of(Toy, "seed") == "--toy-seed"


def test_build_dataclass_types_strings_and_keeps_the_defaults():
    toy = build_dataclass(Toy, {"count": "5", "seed": "none", "loud": "yes", "inner": {"depth": "2"}})

    assert toy == Toy(count=5, seed=None, loud=True, inner=Inner(depth=2.0))
    assert build_dataclass(Toy, {}) == Toy()


@pytest.mark.parametrize("values, key, message", [
    ({"count": "x"}, "count", "expected an integer, got 'x'"),
    ({"count": 1.5}, "count", "expected an integer"),
    ({"seed": "x"}, "seed", "expected an integer or null"),
    ({"inner": {"depth": "deep"}}, "inner.depth", "expected a number"),
    ({"cuont": 1}, "cuont", "unknown key"),
    ({"inner": {"width": 1}}, "inner.width", "unknown key"),
    ({"inner": {"depth": -1}}, None, "depth must be >= 0"),
])
def test_build_dataclass_names_the_field_that_does_not_fit(values, key, message):
    with pytest.raises(FieldError, match=message) as err:
        build_dataclass(Toy, values)

    assert err.value.key == key
