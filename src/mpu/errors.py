"""Exceptions that the CLI turns into a one-line message and a non-zero exit code."""

from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    """``text`` with each character that is not printable (ESC, CR, LF and other control characters,
    zero-width and bidi formatting characters, lone surrogates) written as its Python escape
    (``\\x1b``, ``\\n``, ``\\u202e``, ``\\ud800``). Text that came from the other party (file names,
    settings, template errors) then cannot move the cursor, recolour or retitle the terminal, or
    forge a line of output."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shown(value, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with its full length: a value from the
    other party (a manifest field, a tensor name in a header) may be up to a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# A tensor name from the other party in a message: long enough for any real model's names.
NAME_CHARS = 120


class MPUError(Exception):
    """Any error the user can act on. The CLI prints it without a traceback. Its text is
    :func:`printable`: a message quoting the other party's names or values is safe to print or log."""

    def __str__(self) -> str:
        return printable(super().__str__())


class InputError(MPUError):
    """A file we were given is malformed, unsafe or inconsistent. Names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedArchitectureError(MPUError):
    """The model has an architecture or a parameter that no reparameterisation adapter understands."""
