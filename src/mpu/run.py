"""Both parties in one process, for experiments: the same code paths as the two-party CLI, with
the same files in between (outbox, returns). Nothing is shared in memory across the boundary."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mpu.client import CLIENT_REFERENCES
from mpu.client.unlearn import unlearn_copies
from mpu.methods.run import frozen_gc
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.export import export
from mpu.server.init import init_server
from mpu.server.publish import publish

log = logging.getLogger(__name__)


def run_mpu(
    model: str,
    base: str | None,
    config: ServerConfig,
    forget_rows: list[dict],
    retain_rows: list[dict] | None,
    method: str,
    hparams,
    training,
    workdir: str | Path,
    out_dir: str | Path,
    keep_exchange: bool = False,
    progress: bool = True,
    reference: str = "first",
) -> Path:
    """R rounds of publish -> client unlearn -> aggregate, then export to ``out_dir``.

    ``reference``: "first" keeps round 1's publication on the client side and uses its copies as the
    reference of reference-model methods in every round (fixed reference, like noise-free
    unlearning); "round" uses each round's own copies (SPEC section 4 read per round)."""
    if reference not in CLIENT_REFERENCES:
        raise ValueError(f"reference must be 'first' or 'round', got {reference!r}")
    workdir = Path(workdir)
    init_server(workdir, model, base, config, progress=progress)
    exchange = workdir.parent / f"{workdir.name}-exchange"
    with frozen_gc():  # one full garbage collection for all rounds, not one a round
        for round_number in range(1, config.rounds + 1):
            outbox, returns = exchange / f"round-{round_number}" / "outbox", exchange / f"round-{round_number}" / "returns"
            publish(workdir, outbox, replace=True, progress=progress)
            first_outbox = exchange / "round-1" / "outbox"
            reference_inbox = first_outbox if reference == "first" and round_number > 1 else None
            unlearn_copies(outbox, forget_rows, retain_rows, method, hparams, training, returns, reference_inbox=reference_inbox)
            report = aggregate(workdir, returns, progress=progress)
            log.info("round %d/%d done: step norm %.4g", round_number, config.rounds, report.step_norm)
            if not keep_exchange:
                # round 1's copies stay until the end when they are the reference
                shutil.rmtree(returns)
                if not (reference == "first" and round_number == 1):
                    shutil.rmtree(outbox)
    if not keep_exchange:
        shutil.rmtree(exchange, ignore_errors=True)
    return export(workdir, out_dir, replace=True, progress=progress)
