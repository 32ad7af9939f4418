"""Both parties in one process, for experiments: the same code paths as the two-party CLI, with
the same files in between (outbox, returns). Nothing is shared in memory across the boundary."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mpu.client.unlearn import unlearn_copies
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
) -> Path:
    """R rounds of publish -> client unlearn -> aggregate, then export to ``out_dir``."""
    workdir = Path(workdir)
    init_server(workdir, model, base, config, progress=progress)
    exchange = workdir.parent / f"{workdir.name}-exchange"
    for round_number in range(1, config.rounds + 1):
        outbox, returns = exchange / f"round-{round_number}" / "outbox", exchange / f"round-{round_number}" / "returns"
        publish(workdir, outbox, replace=True, progress=progress)
        unlearn_copies(outbox, forget_rows, retain_rows, method, hparams, training, returns)
        report = aggregate(workdir, returns, progress=progress)
        log.info("round %d/%d done: step norm %.4g", round_number, config.rounds, report.step_norm)
        if not keep_exchange:
            shutil.rmtree(exchange / f"round-{round_number}")
    if not keep_exchange:
        shutil.rmtree(exchange, ignore_errors=True)
    return export(workdir, out_dir, replace=True, progress=progress)
