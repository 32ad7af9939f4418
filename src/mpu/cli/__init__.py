"""The ``mpu`` command.

Each module in this package adds one group of subcommands through ``register(subparsers)``
(server, client, unlearn, data, finetune, eval, demo, audit, run, report). A subcommand's handler
takes the parsed arguments and returns an exit code. ``MPUError`` becomes a one-line message and
exit code 2; Ctrl-C one line and exit code 130 (128 + SIGINT, the shell's convention); anything else
is a bug and keeps its traceback. Messages name the full subcommand (``mpu server init: error: ...``); a
mistyped subcommand or flag gets the closest existing one.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import pkgutil
import sys

from mpu import __version__
from mpu.cli._lazy import explain_defaults
from mpu.errors import MPUError

EXIT_INTERRUPTED = 130  # 128 + SIGINT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpu",
        description=(
            "Privacy-preserving unlearning with Multiple Perturbed copies (MPU). The server "
            "(model owner) publishes noisy, secretly reparameterised copies; the client (data "
            "owner) unlearns on each copy; the server inverts and combines the updates."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mpu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        module.register(subparsers)
    explain_defaults(parser)
    return parser


def _subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The subcommand words at the start of ``argv`` (``["server", "init"]``) and the parser that handles
    the rest. A word where a subcommand belongs that is none is refused here, with the closest name."""
    words, current = [], parser
    for token in argv:
        choices = next((action.choices for action in current._actions if isinstance(action, argparse._SubParsersAction)), None)
        if choices is None or token.startswith("-"):
            if choices is None:
                break
            continue
        if token not in choices:
            close = difflib.get_close_matches(token, list(choices), n=1)
            current.error(f"unknown command {token!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                          + f" (one of: {', '.join(sorted(choices))})")
        words.append(token)
        current = choices[token]
    return words, current


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's "unrecognized arguments" message, with the closest flag of ``parser`` for each typo."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    flags = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    for extra in extras:
        if extra.startswith("--"):
            close = difflib.get_close_matches(extra.split("=", 1)[0], flags, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]}?"
    return message + f" (see `{parser.prog} --help`)"


class _MissingRequired(Exception):
    """argparse's "the following arguments are required" error, held back until the extras are known."""


def _parse(parser: argparse.ArgumentParser, handler: argparse.ArgumentParser, argv: list[str]):
    """``parser.parse_known_args(argv)``, with the unrecognised flags reported (:func:`_unrecognized`)
    before the missing required ones: a mistyped required flag (``--inbx``) is named with the flag it
    resembles, not reported as the required flag missing. Help and argparse's other errors are its
    own (the required flags stay marked). Exits 2 through ``handler.error``."""
    report = handler.error

    def hold_missing(message: str):
        if message.startswith("the following arguments are required"):
            raise _MissingRequired(message)
        report(message)

    handler.error = hold_missing   # argparse checks the required flags inside the parse, before the extras can be seen
    try:
        args, extras = parser.parse_known_args(argv)
    except _MissingRequired as missing:
        required = [action for action in handler._actions if action.required]
        for action in required:   # parsed again only to find the extras (-h would have exited the first parse)
            action.required = False
        try:
            _, extras = parser.parse_known_args(argv)
        except _MissingRequired:   # a required group: nothing more to learn
            extras = []
        finally:
            for action in required:
                action.required = True
        if not extras:
            report(str(missing))
    finally:
        del handler.error
    if extras:
        report(_unrecognized(handler, extras))
    return args, extras


def main(argv: list[str] | None = None) -> int:
    command = "mpu"
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        words, handler = _subcommand(parser, argv)
        # parse_args would report a mistyped flag as the top-level `mpu`'s, without the flag it resembles
        args, extras = _parse(parser, handler, argv)   # may import transformers (method flags): Ctrl-C can come here too
        command = " ".join(["mpu", *words])
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        try:
            return int(args.func(args) or 0)
        except MPUError as err:
            print(f"{command}: error: {err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`mpu server status --json | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
