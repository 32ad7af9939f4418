"""Flags generated from a dataclass's fields (mpu.flags): one flag per field, its help and default."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from mpu.flags import add_dataclass_arguments, coerce, given_values


@dataclass
class Toy:
    count: int = field(default=3, metadata={"help": "how many", "flags": ("-n",)})
    mode: str = field(default="a", metadata={"help": "which mode", "choices": ("a", "b")})
    loud: bool = field(default=False, metadata={"help": "say it"})
    hidden: str = field(default="x", metadata={"flag": None})
    seed: int | None = field(default=None, metadata={"help": "a seed", "flag": "--toy-seed", "flags": ("--seed",)})


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


def test_coerce_converts_command_line_strings_to_the_fields_type():
    assert coerce("5", int) == 5 and coerce("none", int | None) is None and coerce("1,2", list[float]) == [1.0, 2.0]
    with pytest.raises(ValueError):
        coerce("x", int)
