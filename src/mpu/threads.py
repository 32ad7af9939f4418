"""CPU threads for torch: one ``--threads`` option for every long-running command.

torch starts one intra-op thread per core. On a machine whose cores are busy with other work, those
threads wait for each other at every operation: with the default, one epoch of TOFU on a busy 2-core
machine took 2308 s, with one thread 42 s. For the small models this project trains on CPU, one
thread is also as fast as more on an idle machine (``benchmarks/threads.py`` measures it;
docs/data.md, "Threads on a shared machine", has the numbers), so the default is one thread. On a machine of your own with large
models on CPU, raise it (``--threads 0`` keeps torch's default, one per core); GPU runs hardly use
the CPU threads. ``$MPU_THREADS`` changes the default for every command.
"""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)

DEFAULT_THREADS = 1
ENV = "MPU_THREADS"


def default_threads() -> int:
    """``$MPU_THREADS`` when set (0 = torch's default), else :data:`DEFAULT_THREADS`."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return DEFAULT_THREADS
    try:
        threads = int(value)
    except ValueError:
        from mpu.errors import MPUError

        raise MPUError(f"${ENV}={value!r} is not a whole number of threads (0 = torch's default)") from None
    if threads < 0:
        from mpu.errors import MPUError

        raise MPUError(f"${ENV}={value!r}: threads cannot be negative")
    return threads


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("threads cannot be negative")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (default: $MPU_THREADS or 1; 0 = torch's default of one per core)."""
    parser.add_argument(
        "--threads", type=_threads, default=None, metavar="N",
        help=f"CPU threads for torch (default: ${ENV} or {DEFAULT_THREADS}: fastest for small models and on a "
             "shared or busy machine; 0 = torch's default, one per core; see docs/data.md)")


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`; 0: leave torch's
    default). Returns the number torch now uses. Imports torch, so call it after parsing."""
    import torch

    threads = default_threads() if threads is None else threads
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        # Tokenizers' Rust threads compete for the same cores.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log.debug("torch uses %d CPU thread(s)", torch.get_num_threads())
    return torch.get_num_threads()
