"""Both parties in one process, for experiments: the same code paths as the two-party CLI, with
the same files in between (outbox, returns). Nothing is shared in memory across the boundary."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from mpu.checkpoint.files import CONFIG, check_output
from mpu.client import REFERENCE_MODEL_ROUNDS
from mpu.client.unlearn import unlearn_copies
from mpu.methods.training import frozen_gc
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.export import export
from mpu.server.init import init_server
from mpu.server.publish import publish

log = logging.getLogger(__name__)


SIGMA_FROM = ("task-vector", "weights")


def resolve_sigma_base(model: str, base: str | None, sigma_from: str = "task-vector") -> tuple[str | None, str]:
    """The base model to give the server, and a label for every report of the run.

    ``task-vector`` (default): ``base`` if given, else the base ``mpu finetune`` recorded in the model
    directory's mpu_finetune.json; sigma_l = kappa * RMS(theta_l - theta_base,l). Without either, it
    falls back to the whole weights and the label says so. ``weights``: no base, sigma_l = kappa *
    RMS(theta_l), labelled as the harsher control. Raises ``ValueError`` for an unknown ``sigma_from``."""
    if sigma_from not in SIGMA_FROM:
        raise ValueError(f"sigma_from must be one of {', '.join(SIGMA_FROM)}, got {sigma_from!r}")
    if sigma_from == "weights":
        return None, "sigma from: weights (kappa * RMS(theta); a harsher control than the paper's task vector)"
    if base is None:
        from mpu.experiments.finetune import read_record

        recorded = (read_record(model) or {}).get("base") if Path(model).is_dir() else None
        if recorded and Path(recorded).is_dir():
            base = recorded
    if base is None:
        log.warning("no base model given (--base) or recorded by mpu finetune: sigma falls back to the whole weights")
        return None, ("sigma from: weights (no base model given or recorded; pass --base for the task vector, "
                      "or --sigma-from weights to choose this)")
    return base, f"sigma from: task vector against {base}"


PHASES = ("init", "publish", "client", "aggregate", "export", "cleanup")  # what ``timings`` adds up


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
    reference_model_round: str = "first",
    timings: dict[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """R rounds of publish -> client unlearn -> aggregate, then export to ``out_dir``.

    ``reference_model_round``: "first" keeps round 1's publication on the client side and uses its
    copies as the reference model of reference-model methods in every round (fixed, like noise-free
    unlearning); "round" uses each round's own copies (the reference model moves every round).

    ``timings``: a dict that receives the wall seconds of each phase (``PHASES``, summed over rounds),
    the client's training seconds (``client_train``) and its optimizer steps (``steps``);
    benchmarks/client_overhead.py reads them. If a phase raises, the dict holds what ran until then.

    ``out_dir`` is checked before any work (InputError): an existing one is refused unless ``overwrite``
    (and then only when it holds an earlier model), as is one that is, holds or lies inside the model,
    the base or the work directory."""
    if reference_model_round not in REFERENCE_MODEL_ROUNDS:
        raise ValueError(f"reference_model_round must be 'first' or 'round', got {reference_model_round!r}")
    if timings is not None:
        timings.update({phase: 0.0 for phase in PHASES}, client_train=0.0, steps=0)
    workdir = Path(workdir)
    inputs = [path for path in (model, base, workdir) if path is not None and Path(path).exists()]
    check_output(out_dir, keep=inputs, replace=overwrite, marker=CONFIG, flag="--overwrite")
    with _timed(timings, "init"):
        init_server(workdir, model, base, config, progress=progress)
    exchange = workdir.parent / f"{workdir.name}-exchange"
    first_outbox = exchange / "round-1" / "outbox"  # the client's reference models by default
    with frozen_gc():  # one full garbage collection for all rounds, not one a round
        for round_number in range(1, config.rounds + 1):
            outbox, returns = exchange / f"round-{round_number}" / "outbox", exchange / f"round-{round_number}" / "returns"
            with _timed(timings, "publish"):
                publish(workdir, outbox, replace=True, progress=progress)
            reference_model_inbox = first_outbox if reference_model_round == "first" and round_number > 1 else None
            with _timed(timings, "client"):
                results = unlearn_copies(outbox, forget_rows, retain_rows, method, hparams, training, returns, reference_model_inbox=reference_model_inbox,
                                         overwrite=True, private=False)  # this run's own exchange folder
            if timings is not None:
                timings["client_train"] += sum(result.seconds for result in results)
                timings["steps"] += sum(result.steps for result in results)
            with _timed(timings, "aggregate"):
                report = aggregate(workdir, returns, progress=progress)
            log.info("round %d/%d done: step norm %.4g", round_number, config.rounds, report.step_norm)
            if not keep_exchange:
                with _timed(timings, "cleanup"):
                    # round 1's copies stay until the end when they are the reference models
                    shutil.rmtree(returns)
                    if not (reference_model_round == "first" and round_number == 1):
                        shutil.rmtree(outbox)
    if not keep_exchange:
        with _timed(timings, "cleanup"):
            shutil.rmtree(exchange, ignore_errors=True)
    with _timed(timings, "export"):
        return export(workdir, out_dir, replace=overwrite, progress=progress, keep=inputs)


@contextmanager
def _timed(timings: dict[str, float] | None, phase: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[phase] += time.perf_counter() - started
