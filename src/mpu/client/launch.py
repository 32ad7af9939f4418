"""The client under a multi-process launch (``torchrun``, ``accelerate launch``): which process writes
the updates, and one private copy of the received files per machine instead of one per process."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mpu.checkpoint.received import CopySharing, machine_id


def is_main_process() -> bool:
    """Under torchrun/accelerate every rank trains; only rank 0 writes the update."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def launched_processes() -> int:
    """How many processes the launch started in all (torchrun's ``WORLD_SIZE``; 1 without a launcher)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def copy_sharing() -> CopySharing | None:
    """:class:`LocalRanks` under a launch of several processes (None for a single process): the
    processes on one machine then share one private copy of what they received (one copy's disk, not
    one per process)."""
    if launched_processes() <= 1 or "LOCAL_RANK" not in os.environ:
        return None
    return LocalRanks()


class LocalRanks:
    """:class:`mpu.checkpoint.received.CopySharing` over ``torch.distributed``: local rank 0 of each
    machine makes the copy; the folder goes to every process by ``all_gather_object`` and each takes
    the one made on its machine (by torchrun's node rank ``GROUP_RANK``, else a hash of the host
    name); ``wait`` is a barrier. Sets up the process group the Trainer would set
    up later (accelerate's ``PartialState``: gloo on a machine without GPUs, as
    :func:`mpu.methods.training.training_arguments` asks), so the collective calls have one."""

    def __init__(self) -> None:
        from accelerate import PartialState

        on_cpu = not torch.cuda.is_available()
        PartialState(cpu=on_cpu, **({"backend": "gloo"} if on_cpu else {}))
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.makes_copy = self.local_rank == 0
        # the node rank, where the launcher gives one: two machines may share a host name (containers)
        self.machine = os.environ.get("GROUP_RANK") or machine_id()

    def share(self, folder: Path | None) -> Path | None:
        """Every process's ``folder`` to every process (a collective call); the one local rank 0 of
        this machine made, None when it made none."""
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (self.machine, self.local_rank, None if folder is None else str(folder)))
        made_here = [path for machine, rank, path in gathered if machine == self.machine and rank == 0]
        return Path(made_here[0]) if made_here and made_here[0] else None

    def wait(self) -> None:
        """Return once every process of the launch has called it (a barrier)."""
        torch.distributed.barrier()
