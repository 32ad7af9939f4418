"""transformers' own output: its progress bars off where mpu reports the step itself, and its messages
escaped where they quote the other party's files.

transformers (5.x) draws a "Loading weights" bar for every ``from_pretrained`` and a "Writing model
shards" bar for every ``save_pretrained``: one per copy, reference and round in a client run, several
per model in an evaluation. Where mpu already prints one line for the step (a trained copy, an
evaluated model), those bars are noise; :func:`quiet_transformers` turns them off through
transformers' logging API for the duration of a block. The Trainer's training bar and the hub's
download bars are separate and stay.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from mpu.errors import printable


@contextmanager
def quiet_transformers(warnings: bool = True):
    """transformers' progress bars off inside the block; ``warnings=False`` also hides its warnings
    (for models mpu made and checked itself, such as the published copies). Restores the previous
    settings on exit, also after an exception. Imports transformers' logging module only."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if not warnings:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _printable_lines(text: str) -> str:
    """``text`` line by line as :func:`mpu.errors.printable` text, every line after the first indented."""
    return "\n    ".join(printable(line) for line in text.split("\n"))


class _PrintableFormatter(logging.Formatter):
    """Another formatter's text, each line as :func:`mpu.errors.printable` text (control characters as
    escapes) and every line after the first indented, so that a multi-line message (a traceback, a
    library's table) stays readable and still cannot start a line of its own. Formats; never changes
    the record, which other handlers share."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return _printable_lines(self.inner.format(record))


def escape_library_output() -> None:
    """Escape the control characters of every line that reaches the terminal through logging (the root
    logger's handlers and transformers' own handler) or ``warnings``. transformers quotes config values
    in its warnings ("Missing validation function ... for 'rope_type'=<value>"), so the other party's
    config.json could otherwise move the cursor, recolour the terminal or forge a line of mpu's output
    before mpu's own (escaped) refusal. Called by the commands that load the other party's files;
    idempotent."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.get_logger()   # transformers adds its handler now, so that it is covered too
    for logger in (logging.getLogger(), logging.getLogger("transformers")):
        for handler in logger.handlers:
            if not isinstance(handler.formatter, _PrintableFormatter):
                handler.setFormatter(_PrintableFormatter(handler.formatter))
    if not getattr(warnings.formatwarning, "_mpu_printable", False):
        original = warnings.formatwarning

        def formatwarning(message, category, filename, lineno, line=None):
            return original(_printable_lines(str(message)), category, filename, lineno, line)

        formatwarning._mpu_printable = True
        warnings.formatwarning = formatwarning
