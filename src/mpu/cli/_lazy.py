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


class RawDescriptionDefaultsFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Flag help with its default, description and epilog (the methods table) with their line breaks."""


def add_method_arguments_lazily(parser: argparse.ArgumentParser) -> None:
    # subparsers.add_parser has no parser_class argument, so the class is swapped in place.
    parser.__class__ = _LazyMethodParser
    # The methods table in the epilog is laid out in lines; the plain and defaults formatters reflow it.
    if parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter:
        parser.formatter_class = RawDescriptionDefaultsFormatter
    elif parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
