"""transformers' own progress output off where mpu reports the step itself.

transformers (5.x) draws a "Loading weights" bar for every ``from_pretrained`` and a "Writing model
shards" bar for every ``save_pretrained``: one per copy, reference and round in a client run, several
per model in an evaluation. Where mpu already prints one line for the step (a trained copy, an
evaluated model), those bars are noise; :func:`quiet_transformers` turns them off through
transformers' logging API for the duration of a block. The Trainer's training bar and the hub's
download bars are separate and stay.
"""

from __future__ import annotations

from contextlib import contextmanager


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
