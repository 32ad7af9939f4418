"""Exceptions that the CLI turns into a one-line message and a non-zero exit code."""

from __future__ import annotations

from pathlib import Path


class MPUError(Exception):
    """Any error the user can act on. The CLI prints it without a traceback."""


class InputError(MPUError):
    """A file we were given is malformed, unsafe or inconsistent. Names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedArchitectureError(MPUError):
    """The model has an architecture or a parameter that no reparameterisation adapter understands."""
