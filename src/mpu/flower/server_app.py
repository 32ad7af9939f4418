"""The server's side of MPU as a Flower ``ServerApp``: publish, send, receive, aggregate, export.

Per round it calls the same functions as ``mpu server publish`` / ``aggregate`` on an ordinary work
directory (made beforehand with ``mpu server init``, which holds every privacy setting):

1. :func:`mpu.server.publish.publish` writes the round's outbox folder;
2. the outbox travels to every data owner as one message (``"publication"``: the folder's files,
   :mod:`mpu.flower.files`; ``"job"``: the unlearning method and its settings, from the run config);
3. each owner's reply (``"returns"``: its ``update-K`` folders; ``"owner"``: its forget-set size) is
   written as a returns folder and checked by :func:`mpu.server.validate.find_returns`;
4. with several owners, :func:`mpu.flower.owners.combine_returns` writes one returns folder of
   forget-size-weighted updates per copy; :func:`mpu.server.aggregate.aggregate` then applies
   T_k^-1 and the harmonic combination as for a single client.

After the last round, :func:`mpu.server.export.export` writes the model to the run config's ``out``.
Nothing of the protocol is re-implemented here; a refusal of any of those functions stops the run
with the work directory as the function left it (unchanged for a refused return).
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
    (every round uses exactly this many); ``timeout``: seconds to wait for the owners to connect and,
    separately, for their replies each round; ``exchange``: folder for the round's outbox and
    returns (default ``<workdir>-flower``); ``keep_exchange``: keep them after each round;
    ``method``/``hparams``/``training``: the unlearning job every owner runs (hyperparameters and
    training options as JSON objects, as ``--hp``/the training flags of ``mpu client unlearn``).
    """

    workdir: Path
    out: Path | None = None
    owners: int = 1
    timeout: float = 3600.0
    exchange: Path | None = None
    keep_exchange: bool = False
    method: str = "GradAscent"
    hparams: str = "{}"
    training: str = "{}"
    secagg: Any = None  # mpu.flower.secagg.SecAggSettings when the run config says `secagg = true`

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> "FlowerRun":
        """Read and check the run config; MPUError naming the key for a missing or invalid value."""
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
        timeout = float(config.get("timeout", 3600.0))
        if owners < 1:
            raise MPUError(f"run config: owners must be >= 1, got {owners}")
        if timeout <= 0:
            raise MPUError(f"run config: timeout must be > 0, got {timeout}")
        run = cls(workdir=path("workdir", True), out=path("out", False), owners=owners, timeout=timeout,  # type: ignore[arg-type]
                  exchange=path("exchange", False), keep_exchange=bool(config.get("keep-exchange", False)),
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
    """The round loop. Returns wall seconds per phase (publish, send, aggregate, export) summed over rounds.

    Raises MPUError when fewer than ``run.owners`` nodes connect within ``run.timeout``, when an
    owner replies with an error or without its returns, and whatever publish/aggregate/export raise.
    """
    from mpu.flower.owners import combine_returns
    from mpu.server.aggregate import aggregate
    from mpu.server.export import export
    from mpu.server.publish import publish
    from mpu.server.workdir import Workdir

    timings = {"publish": 0.0, "exchange": 0.0, "combine": 0.0, "aggregate": 0.0, "export": 0.0}
    state = Workdir(run.workdir).load()
    exchange = run.exchange or run.workdir.with_name(f"{run.workdir.name}-flower")
    nodes = wait_for_owners(grid, run.owners, run.timeout)
    for round_number in range(state.current_round, state.config.rounds + 1):
        folder = exchange / f"round-{round_number}"
        if folder.exists():
            shutil.rmtree(folder)  # a previous, interrupted attempt of this round: its publication is void
        started = time.perf_counter()
        publish(run.workdir, folder / "outbox", progress=False)
        timings["publish"] += time.perf_counter() - started

        started = time.perf_counter()
        publication = folder_to_record(folder / "outbox")
        messages = [Message(RecordDict({PUBLICATION: publication, JOB: run.job()}), dst_node_id=node, message_type=MESSAGE_TYPE)
                    for node in nodes]
        log.info("round %d: sending %d bytes of copies to %d data owner(s)", round_number, record_bytes(publication), len(nodes))
        replies = {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages, timeout=run.timeout)}
        log.info("round %d: %d repl(ies) received in %.2f s", round_number, len(replies), time.perf_counter() - started)
        if run.secagg is not None:  # --- secure aggregation hook: the replies hold manifests only ---
            from mpu.flower.secagg import secure_returns
            returns = secure_returns(grid, run, nodes, replies, folder, round_number)
            timings["exchange"] += time.perf_counter() - started
        else:  # --- end of hook ---
            owner_dirs, sizes = [], []
            limit = returns_limit(run.workdir)
            for index, node in enumerate(nodes, start=1):
                returns, size = _owner_returns(replies.get(node), node, folder / f"owner-{index}", limit)
                owner_dirs.append(returns)
                sizes.append(size)
            timings["exchange"] += time.perf_counter() - started

            started = time.perf_counter()
            if len(owner_dirs) == 1:
                returns = owner_dirs[0]
            else:
                returns = combine_returns(run.workdir, owner_dirs, sizes, folder / "returns")
            timings["combine"] += time.perf_counter() - started
        started = time.perf_counter()
        report = aggregate(run.workdir, returns, progress=False)
        timings["aggregate"] += time.perf_counter() - started
        log.info("round %d/%d aggregated: step norm %.4g", round_number, report.rounds, report.step_norm)
        if not run.keep_exchange:
            shutil.rmtree(folder)
    if run.out is not None:
        started = time.perf_counter()
        export(run.workdir, run.out, replace=True, progress=False)
        timings["export"] += time.perf_counter() - started
        log.info("exported the model to %s", run.out)
    if not run.keep_exchange:
        shutil.rmtree(exchange, ignore_errors=True)
    log.info("MPU over Flower done, wall seconds: %s", ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in timings.items()))
    return timings


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
    if reply is None:
        raise MPUError(f"data owner node {node} did not reply in time")
    if reply.has_error():
        raise MPUError(f"data owner node {node} failed: {reply.error.reason}")
    content = reply.content
    if RETURNS not in content.array_records or OWNER not in content.config_records:
        raise InputError(target, f"reply of node {node} lacks its {RETURNS!r} files or its {OWNER!r} record")
    size = content.config_records[OWNER].get("forget_rows")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(target, f"reply of node {node}: forget_rows must be a positive integer, got {size!r}")
    return record_to_folder(content.array_records[RETURNS], target, max_bytes=max_bytes, what=f"returns of node {node}"), size
