"""The server's side of MPU as a Flower ``ServerApp``: publish, send, receive, aggregate, export.

Per round it drives the server's round object, :class:`mpu.server.round.Round`, on an ordinary work
directory (made beforehand with ``mpu server init``, which holds every privacy setting), exactly as
``mpu server publish`` / ``aggregate`` do:

1. ``Round.publish`` writes the round's outbox folder (Pre-Process);
2. :func:`exchange` carries it to every data owner as one message (``"publication"``: the folder's
   files, :mod:`mpu.flower.files`; ``"job"``: the unlearning method and its settings, from the run
   config) and writes each reply (``"returns"``: its ``update-K`` folders; ``"owner"``: its
   forget-set size) as a returns folder; with several owners,
   :func:`mpu.flower.owners.combine_returns` writes one returns folder of forget-size-weighted
   updates per copy;
3. ``Round.aggregate(returns, combine=...)`` validates, applies T_k^-1 and the run config's
   combination rule (a name of :data:`mpu.server.combine.COMBINE_RULES`, default ``harmonic``) and
   advances the round (Post-Process).

After the last round, :func:`mpu.server.export.export` writes the model to the run config's ``out``.
Nothing of the protocol is re-implemented here; a refusal of any of those steps stops the run with
the work directory as the step left it (unchanged for a refused return). An owner that does not
reply in time, or replies with an error, is dropped from the round; the round goes on with the
owners that replied when at least ``min-owners`` did, and fails before ``aggregate`` otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from mpu.errors import InputError, MPUError
from mpu.flower.files import folder_to_record, record_bytes, record_to_folder

log = logging.getLogger(__name__)

MESSAGE_TYPE = "train"
PUBLICATION, JOB, RETURNS, OWNER = "publication", "job", "returns", "owner"

app = ServerApp()


@dataclass
class FlowerRun:
    """The run config of the MPU app (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``).

    ``workdir``: an initialised server work directory (absolute path); ``out``: where the model is
    exported after the last round (absolute; empty: no export); ``owners``: data owners to wait for
    (every round sends to exactly these); ``min_owners``: the fewest owners whose replies a round
    may be aggregated from (default: all of ``owners``); ``timeout``: seconds to wait for the owners
    to connect and, separately, for their replies each round; ``exchange``: folder for the round's
    outbox and returns (default ``<workdir>-flower``); ``keep_exchange``: keep them after each round;
    ``combine``: Post-Process's combination rule (:data:`mpu.server.combine.COMBINE_RULES`);
    ``device``: where Pre- and Post-Process compute (empty: the GPU when there is one);
    ``method``/``hparams``/``training``: the unlearning job every owner runs (hyperparameters and
    training options as JSON objects, as ``--hp``/the training flags of ``mpu client unlearn``).
    """

    workdir: Path
    out: Path | None = None
    owners: int = 1
    min_owners: int | None = None
    timeout: float = 3600.0
    exchange: Path | None = None
    keep_exchange: bool = False
    combine: str = "harmonic"
    device: str = ""
    method: str = "GradAscent"
    hparams: str = "{}"
    training: str = "{}"
    secagg: Any = None  # mpu.flower.secagg.SecAggSettings when the run config says `secagg = true`

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> "FlowerRun":
        """Read and check the run config; MPUError naming the key for a missing or invalid value
        (an unknown ``combine`` rule names the known ones)."""
        from mpu.server.combine import get_combine

        def path(key: str, required: bool) -> Path | None:
            value = str(config.get(key, "") or "")
            if not value:
                if required:
                    raise MPUError(f"run config: {key} is required (an absolute path)")
                return None
            if not Path(value).is_absolute():
                raise MPUError(f"run config: {key} = {value!r} must be an absolute path (the ServerApp runs in another folder)")
            return Path(value)

        owners = int(config.get("owners", 1))
        min_owners = int(config.get("min-owners", 0) or 0) or owners
        timeout = float(config.get("timeout", 3600.0))
        if owners < 1:
            raise MPUError(f"run config: owners must be >= 1, got {owners}")
        if not 1 <= min_owners <= owners:
            raise MPUError(f"run config: min-owners must be between 1 and owners = {owners}, got {min_owners}")
        if timeout <= 0:
            raise MPUError(f"run config: timeout must be > 0, got {timeout}")
        combine = str(config.get("combine", "harmonic") or "harmonic")
        get_combine(combine)  # an unknown rule is refused here, before any round starts
        run = cls(workdir=path("workdir", True), out=path("out", False), owners=owners, min_owners=min_owners,  # type: ignore[arg-type]
                  timeout=timeout, exchange=path("exchange", False), keep_exchange=bool(config.get("keep-exchange", False)),
                  combine=combine, device=str(config.get("device", "") or ""),
                  method=str(config.get("method", "GradAscent")), hparams=str(config.get("hparams", "{}")),
                  training=str(config.get("training", "{}")))
        for key in ("hparams", "training"):
            try:
                value = json.loads(getattr(run, key))
            except json.JSONDecodeError as err:
                raise MPUError(f"run config: {key} is not JSON ({err})") from None
            if not isinstance(value, dict):
                raise MPUError(f"run config: {key} must be a JSON object, got {getattr(run, key)!r}")
        from mpu.flower.secagg import SecAggSettings  # secure aggregation hook (mpu.flower.secagg)
        run.secagg = SecAggSettings.from_run_config(config)
        return run

    def job(self) -> ConfigRecord:
        """The unlearning job as the owners receive it."""
        return ConfigRecord({"method": self.method, "hparams": self.hparams, "training": self.training,
                             **({"secagg": True} if self.secagg is not None else {})})  # secure aggregation hook


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: run every remaining round of the work directory, then export."""
    logging.basicConfig(level=logging.INFO)
    run_rounds(grid, FlowerRun.from_run_config(dict(context.run_config)))


def run_rounds(grid: Grid, run: FlowerRun) -> dict[str, float]:
    """The round loop. Returns wall seconds per phase (publish, exchange, aggregate, export) summed over rounds.

    Raises MPUError when fewer than ``run.owners`` nodes connect within ``run.timeout`` or fewer than
    ``run.min_owners`` reply usefully in a round, InputError for a reply that is not a valid returns
    folder, and whatever ``Round.publish``/``Round.aggregate``/``export`` raise.
    """
    from mpu.server.export import export
    from mpu.server.round import Round
    from mpu.server.workdir import Workdir

    timings = {"publish": 0.0, "exchange": 0.0, "aggregate": 0.0, "export": 0.0}
    state = Workdir(run.workdir).load()
    server_round = Round(run.workdir, device=run.device or None, progress=False)
    exchange_root = run.exchange or run.workdir.with_name(f"{run.workdir.name}-flower")
    nodes = wait_for_owners(grid, run.owners, run.timeout)
    for round_number in range(state.current_round, state.config.rounds + 1):
        folder = exchange_root / f"round-{round_number}"
        if folder.exists():
            shutil.rmtree(folder)  # a previous, interrupted attempt of this round: its publication is void
        started = time.perf_counter()
        server_round.publish(folder / "outbox")
        timings["publish"] += time.perf_counter() - started

        started = time.perf_counter()
        returns = exchange(grid, nodes, run, folder, round_number)
        timings["exchange"] += time.perf_counter() - started

        started = time.perf_counter()
        report = server_round.aggregate(returns, combine=run.combine)
        timings["aggregate"] += time.perf_counter() - started
        log.info("round %d/%d aggregated (%s): step norm %.4g", round_number, report.rounds, report.combine, report.step_norm)
        if not run.keep_exchange:
            shutil.rmtree(folder)
    if run.out is not None:
        started = time.perf_counter()
        export(run.workdir, run.out, replace=True, progress=False)
        timings["export"] += time.perf_counter() - started
        log.info("exported the model to %s", run.out)
    if not run.keep_exchange:
        shutil.rmtree(exchange_root, ignore_errors=True)
    log.info("MPU over Flower done, wall seconds: %s", ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in timings.items()))
    return timings


def exchange(grid: Grid, nodes: list[int], run: FlowerRun, folder: Path, round_number: int) -> Path:
    """Send ``folder/outbox`` to every node, write the replies, and return one returns folder for
    ``Round.aggregate``: the single owner's, or ``folder/returns`` combined over the owners that replied
    (:func:`mpu.flower.owners.combine_returns`). Owners without a reply in time or with an error reply
    are dropped (logged); MPUError when fewer than ``run.min_owners`` remain (nothing written to the
    work directory), InputError for a reply that is not a valid returns folder."""
    from mpu.flower.owners import combine_returns

    started = time.perf_counter()
    publication = folder_to_record(folder / "outbox")
    messages = [Message(RecordDict({PUBLICATION: publication, JOB: run.job()}), dst_node_id=node, message_type=MESSAGE_TYPE)
                for node in nodes]
    log.info("round %d: sending %d bytes of copies to %d data owner(s)", round_number, record_bytes(publication), len(nodes))
    replies = {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages, timeout=run.timeout)}
    log.info("round %d: %d repl(ies) received in %.2f s", round_number, len(replies), time.perf_counter() - started)
    if run.secagg is not None:  # --- secure aggregation hook: the replies hold manifests only ---
        from mpu.flower.secagg import secure_returns
        return secure_returns(grid, run, nodes, replies, folder, round_number)  # --- end of hook ---
    owner_dirs, sizes, dropped = [], [], []
    limit = returns_limit(run.workdir)
    for index, node in enumerate(nodes, start=1):
        why = dropped_reason(replies.get(node), node)
        if why is not None:
            dropped.append(why)
            log.warning("round %d: %s", round_number, why)
            continue
        returns, size = _owner_returns(replies[node], node, folder / f"owner-{index}", limit)
        owner_dirs.append(returns)
        sizes.append(size)
    minimum = run.min_owners or run.owners
    if len(owner_dirs) < minimum:
        raise MPUError(f"round {round_number}: {len(owner_dirs)} of {len(nodes)} data owner(s) replied, at least {minimum} needed "
                       f"(min-owners); nothing aggregated: " + "; ".join(dropped))
    if len(owner_dirs) == 1:
        return owner_dirs[0]
    return combine_returns(run.workdir, owner_dirs, sizes, folder / "returns")


def dropped_reason(reply: Message | None, node: int) -> str | None:
    """Why an owner's reply cannot be used (no reply in time, an error reply), or None for a reply to read."""
    if reply is None:
        return f"data owner node {node} did not reply in time"
    if reply.has_error():
        return f"data owner node {node} failed: {reply.error.reason}"
    return None


def wait_for_owners(grid: Grid, owners: int, timeout: float) -> list[int]:
    """The ids of the first ``owners`` connected nodes (sorted), waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= owners:
            return nodes[:owners]
        if time.monotonic() > deadline:
            raise MPUError(f"only {len(nodes)} of {owners} data owner(s) connected within {timeout:g} s")
        time.sleep(1.0)


def returns_limit(workdir: Path) -> int:
    """The most bytes one owner's returns may hold: m dense float32 updates of the current model plus
    1 MiB per copy for the manifest, index and safetensors headers. A larger reply is refused before
    anything is written (a full update is the largest return; LoRA factors are smaller)."""
    from mpu.checkpoint import CheckpointReader
    from mpu.server.workdir import Workdir

    work = Workdir(workdir)
    state = work.load()
    model = CheckpointReader(work.model_path(state))
    elements = sum(math.prod(model.shape(name)) for name in model.names())
    return state.config.copies * (4 * elements + (1 << 20))


def _owner_returns(reply: Message | None, node: int, target: Path, max_bytes: int) -> tuple[Path, int]:
    """Write one owner's reply as a returns folder; its forget-set size. MPUError/InputError otherwise."""
    why = dropped_reason(reply, node)
    if why is not None:
        raise MPUError(why)
    content = reply.content
    if RETURNS not in content.array_records or OWNER not in content.config_records:
        raise InputError(target, f"reply of node {node} lacks its {RETURNS!r} files or its {OWNER!r} record")
    size = content.config_records[OWNER].get("forget_rows")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(target, f"reply of node {node}: forget_rows must be a positive integer, got {size!r}")
    return record_to_folder(content.array_records[RETURNS], target, max_bytes=max_bytes, what=f"returns of node {node}"), size
