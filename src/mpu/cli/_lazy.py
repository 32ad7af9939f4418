"""Method flags without paying for their import on every ``mpu`` command."""

from __future__ import annotations

import argparse


class _LazyMethodParser(argparse.ArgumentParser):
    """Adds the method flags (which import transformers' Trainer, several seconds) only when this
    subcommand is actually parsed or its help printed, so that other ``mpu`` commands stay fast."""

    _populated = False

    def _populate(self) -> None:
        if not self._populated:
            self._populated = True
            from mpu.methods import add_method_arguments

            add_method_arguments(self)

    def parse_known_args(self, args=None, namespace=None):
        self._populate()
        return super().parse_known_args(args, namespace)

    def format_help(self):
        self._populate()
        return super().format_help()


class RequiredFormatter(argparse.HelpFormatter):
    """Flag help with ``(required)`` after each required flag (argparse says so only in the usage line)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required and action.option_strings and "required" not in text:
            return f"{text} (required)"
        return text


class DefaultsFormatter(RequiredFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Flag help followed by what the flag is when not given: ``(required)`` for a required flag,
    ``(default: X)`` for a real default. Nothing for a default of None (the help says what leaving
    the flag out means: "default: this round's copy"), for on/off switches, or where the help already
    names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required and action.option_strings:
            return RequiredFormatter._get_help_string(self, action)
        if (action.default is None or action.default is argparse.SUPPRESS or action.default is False
                or action.default == [] or "default" in text or not action.option_strings):
            return text
        return argparse.ArgumentDefaultsHelpFormatter._get_help_string(self, action)


class RawDescriptionRequiredFormatter(argparse.RawDescriptionHelpFormatter, RequiredFormatter):
    """:class:`RequiredFormatter`, description and epilog (the methods table) with their line breaks."""


class RawDescriptionDefaultsFormatter(argparse.RawDescriptionHelpFormatter, DefaultsFormatter):
    """:class:`DefaultsFormatter`, description and epilog (the methods table) with their line breaks."""


_READABLE = {   # one reading for every subcommand: required flags say so, real defaults are shown
    argparse.HelpFormatter: DefaultsFormatter,
    argparse.RawDescriptionHelpFormatter: RawDescriptionDefaultsFormatter,
    argparse.ArgumentDefaultsHelpFormatter: DefaultsFormatter,
}


def explain_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand under it the formatters above in place of argparse's, which
    print ``(default: None)`` after required flags and after flags whose absence the help explains,
    and say "required" only in the usage line."""
    parser.formatter_class = _READABLE.get(parser.formatter_class, parser.formatter_class)
    for action in parser._actions:
        if action.required and action.option_strings and not action.help:
            action.help = "(required)"   # argparse prints no help line at all for a flag without help text
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                explain_defaults(sub)


def add_method_arguments_lazily(parser: argparse.ArgumentParser) -> None:
    # subparsers.add_parser has no parser_class argument, so the class is swapped in place.
    parser.__class__ = _LazyMethodParser
    # The methods table in the epilog is laid out in lines; the plain and defaults formatters reflow it.
    if parser.formatter_class in (argparse.ArgumentDefaultsHelpFormatter, DefaultsFormatter):
        parser.formatter_class = RawDescriptionDefaultsFormatter
    elif parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
