"""The data owner's side of MPU as a Flower ``ClientApp``: receive the copies, unlearn, send the updates.

The owner's data never leave its machine and are never named in a message: the SuperNode's node
config gives the paths (``flower-supernode --node-config 'forget="/abs/forget.jsonl" retain="..."'``),
Flower's mechanism for private per-node settings. On each ``train`` message the app

1. writes the ``"publication"`` record as an ordinary inbox folder in a temporary folder
   (:func:`mpu.flower.files.record_to_folder`);
2. runs :func:`mpu.client.unlearn.unlearn_copies` on it, which checks the publication as hostile
   input (manifest, paths, checksums, configs) exactly as ``mpu client unlearn --inbox`` does;
3. replies with the ``update-K`` folders (``"returns"``) and the forget set's row count
   (``"owner"``: ``forget_rows``, ``steps``), which the server needs to weight several owners.

The unlearning job (method, hyperparameters, training options) comes from the server's message;
node config keys ``threads`` (torch threads) and ``retain`` are optional. In Flower's simulation
engine the virtual SuperNodes have no such config; :func:`owner_node_config` then takes the files
from the run config. With ``state-dir`` (an
existing folder of the owner's), round 1's publication of each Flower run is kept there
(``run-<run id>/reference``) and used as the reference publication of the later rounds of that run,
as ``mpu client unlearn --reference-model-inbox`` and ``mpu run`` do: reference-model methods (NPO, DPO,
...) then compare copy k with copy k as first received, a fixed reference over the rounds. Without
it each round's copies are their own reference. Any error is raised, and Flower returns it to the
server as an error reply.

An owner may insist on differential privacy for what it sends: node config ``dp-epsilon`` (and
optionally ``dp-delta``, ``dp-enforce``), see :class:`PrivacyFloor`; the reply's ``"owner"`` record
then carries ``dp_epsilon``, and each update manifest its ``dp`` guarantee.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from mpu.errors import InputError, MPUError
from mpu.flower.files import folder_to_record, record_to_folder
from mpu.flower.server_app import JOB, OWNER, PUBLICATION, RETURNS

log = logging.getLogger(__name__)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower's entry point for one round's publication (and, with secure aggregation, its SecAgg+ stages)."""
    from mpu.quiet import escape_library_output

    escape_library_output()   # transformers quotes the server's config values in its warnings
    from mpu.flower import secagg  # --- secure aggregation hook (mpu.flower.secagg) ---
    if secagg.is_stage_message(msg):
        return secagg.stage(msg, context)
    # the owner's settings (its DP floor, its files; in simulation, the run config's per-node lists) hold
    # with and without secure aggregation
    node_config = owner_node_config(dict(context.node_config), dict(context.run_config))
    if secagg.requested(msg.content, node_config):
        owner_unlearn = lambda content, _raw_config, run_id: unlearn_message(content, node_config, run_id=run_id)
        return Message(secagg.unlearn_and_keep(msg, context, owner_unlearn), reply_to=msg)  # --- end of hook ---
    content = unlearn_message(msg.content, node_config, run_id=msg.metadata.run_id)
    return Message(content, reply_to=msg)


SIMULATION_KEYS = {"forget": "simulation-forget", "retain": "simulation-retain"}


def owner_node_config(node_config: dict, run_config: dict) -> dict:
    """The data owner's settings: the SuperNode's node config as given, except in Flower's simulation
    engine, whose virtual SuperNodes have only ``partition-id`` and ``num-partitions``. There (no
    ``forget`` key but a ``partition-id``) node i takes the i-th entry of the run config's
    comma-separated ``simulation-forget`` (and ``simulation-retain``) lists: everything runs on one
    machine, so the files are not private to a node anyway. MPUError when the list has no entry i."""
    if "forget" in node_config or "partition-id" not in node_config or not str(run_config.get("simulation-forget", "")):
        return node_config
    index = int(node_config["partition-id"])
    resolved = dict(node_config)
    for key, list_key in SIMULATION_KEYS.items():
        entries = [entry.strip() for entry in str(run_config.get(list_key, "") or "").split(",") if entry.strip()]
        if not entries:
            continue
        if index >= len(entries):
            raise MPUError(f"run config: {list_key} lists {len(entries)} file(s), none for simulated SuperNode {index} "
                           f"(num-partitions {node_config.get('num-partitions')})")
        resolved[key] = entries[index]
    return resolved


def unlearn_message(content: RecordDict, node_config: dict, run_id: int = 0) -> RecordDict:
    """Unlearn on every copy of a publication message; the reply's content (returns, owner).
    ``run_id``: the Flower run the message belongs to (keys the kept reference publication)."""
    import torch

    from mpu.client.inbox import read_publication
    from mpu.client.unlearn import unlearn_copies
    from mpu.data.qa import load_qa_rows
    from mpu.methods import method_hparams, training_options

    forget = _node_path(node_config, "forget", required=True)
    retain = _node_path(node_config, "retain", required=False)
    state_dir = _node_path(node_config, "state-dir", required=False)
    if "threads" in node_config:
        torch.set_num_threads(int(node_config["threads"]))
    if PUBLICATION not in content.array_records or JOB not in content.config_records:
        raise MPUError(f"message lacks the {PUBLICATION!r} files or the {JOB!r} record")
    job = content.config_records[JOB]
    method = str(job.get("method", ""))
    hparams = method_hparams(method, _json_object(job.get("hparams", "{}"), "hparams"))
    training = training_options(_json_object(job.get("training", "{}"), "training"))
    floor = PrivacyFloor.from_node_config(node_config)
    if floor is not None:
        training = floor.enforce(training)
    forget_rows = load_qa_rows(forget)
    retain_rows = load_qa_rows(retain) if retain is not None else None
    with tempfile.TemporaryDirectory(prefix="mpu-flower-client-") as scratch:
        inbox = record_to_folder(content.array_records[PUBLICATION], Path(scratch) / "inbox", what="publication")
        reference = None
        if state_dir is not None:
            kept = state_dir / f"run-{int(run_id)}" / "reference"
            if read_publication(inbox).round == 1:
                if kept.exists():
                    shutil.rmtree(kept)
                shutil.copytree(inbox, kept)
            elif kept.is_dir():
                reference = kept
        results = unlearn_copies(inbox, forget_rows, retain_rows, method, hparams, training, Path(scratch) / "returns",
                                 reference_model_inbox=reference, private=False)  # folders written here, from the message
        owner = {"forget_rows": len(forget_rows), "steps": sum(result.steps for result in results)}
        if floor is not None:
            owner["dp_epsilon"] = floor.check_returns(Path(scratch) / "returns")
        returns = folder_to_record(Path(scratch) / "returns")
    return RecordDict({RETURNS: returns, OWNER: ConfigRecord(owner)})


@dataclass(frozen=True)
class PrivacyFloor:
    """A data owner's own differential-privacy requirement, from its SuperNode's node config.

    ``dp-epsilon`` (> 0): every reply (the m updates of one round, together) must carry an (ε, δ)
    DP-SGD guarantee with ε at most this; ``dp-delta`` (optional, in (0, 1)): and δ at most this;
    ``dp-enforce``: ``apply`` (default) runs a job that asks for less (no DP, a larger ε or δ) with
    the owner's ε and δ instead, ``refuse`` fails it (Flower returns the error to the server). A job
    that sets only a noise multiplier is run as sent. Whatever the job, :meth:`check_returns` reads
    the guarantee the update manifests record (``dp.epsilon``, ``dp.delta``, from Opacus's RDP
    accountant over the m copies) and refuses to reply when any copy's is weaker. The floor is per
    round: over R rounds on the same data the owner's ε adds up (at most R·ε by composition).
    """

    epsilon: float
    delta: float | None = None
    mode: str = "apply"

    @classmethod
    def from_node_config(cls, node_config: dict) -> "PrivacyFloor | None":
        """The floor, or None without ``dp-epsilon``. MPUError for a value out of range."""
        if str(node_config.get("dp-epsilon", "")) == "":
            return None
        try:
            epsilon = float(node_config["dp-epsilon"])
            delta = float(node_config["dp-delta"]) if str(node_config.get("dp-delta", "") or "") else None
        except (TypeError, ValueError):
            raise MPUError("node config: dp-epsilon and dp-delta must be numbers") from None
        mode = str(node_config.get("dp-enforce", "apply") or "apply")
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise MPUError(f"node config: dp-epsilon must be finite and > 0, got {epsilon}")
        if delta is not None and not 0 < delta < 1:
            raise MPUError(f"node config: dp-delta must be in (0, 1), got {delta}")
        if mode not in ("apply", "refuse"):
            raise MPUError(f"node config: dp-enforce must be apply or refuse, got {mode!r}")
        return cls(epsilon, delta, mode)

    def enforce(self, training):
        """The training options to run: ``training`` itself when it targets an ε (and δ) within the
        floor or sets its own noise multiplier; else, with ``apply``, the same options with the
        owner's ε (and δ); with ``refuse``, MPUError naming what the job lacks."""
        weaker = []
        if not training.private:
            weaker.append("no DP-SGD")
        elif training.dp_epsilon > self.epsilon:
            weaker.append(f"dp_epsilon {training.dp_epsilon:g}")
        if self.delta is not None and training.private and training.dp_delta > self.delta:
            weaker.append(f"dp_delta {training.dp_delta:g}")
        if not weaker:
            return training
        floor = f"epsilon <= {self.epsilon:g}" + (f", delta <= {self.delta:g}" if self.delta is not None else "")
        if self.mode == "refuse":
            raise MPUError(f"this data owner requires DP-SGD with {floor} (node config dp-epsilon); the job asks for "
                           f"{' and '.join(weaker)}")
        log.info("the job asks for %s; applying this owner's DP-SGD floor (%s)", " and ".join(weaker), floor)
        changes = {"dp_epsilon": min(self.epsilon, training.dp_epsilon) if training.dp_epsilon > 0 else self.epsilon,
                   "dp_noise_multiplier": 0.0}
        if self.delta is not None:
            changes["dp_delta"] = min(self.delta, training.dp_delta)
        return dataclasses.replace(training, **changes)

    def check_returns(self, returns: Path) -> float:
        """The weakest ε among the ``update-K/update.json`` of ``returns``; MPUError when a copy has no DP
        guarantee or one weaker than the floor (checked after training, before anything is sent)."""
        weakest = 0.0
        for manifest in sorted(returns.glob("update-*/update.json")):
            dp = json.loads(manifest.read_text()).get("dp") or {}
            epsilon, delta = dp.get("epsilon"), dp.get("delta")
            if epsilon is None or epsilon > self.epsilon * (1 + 1e-6) or (self.delta is not None and (delta is None or delta > self.delta)):
                raise MPUError(f"{manifest.parent.name}: its DP guarantee (epsilon {epsilon}, delta {delta}) is weaker than this "
                               f"owner's floor (dp-epsilon {self.epsilon:g}" + (f", dp-delta {self.delta:g}" if self.delta else "")
                               + "); nothing is sent")
            weakest = max(weakest, float(epsilon))
        return weakest


def _node_path(node_config: dict, key: str, *, required: bool) -> Path | None:
    value = str(node_config.get(key, "") or "")
    if not value:
        if required:
            raise MPUError(f"node config: {key} is required: start the SuperNode with --node-config '{key}=\"/abs/path\"'")
        return None
    path = Path(value)
    if not path.is_absolute():
        raise MPUError(f"node config: {key} = {value!r} must be an absolute path")
    if not path.exists():
        raise InputError(path, f"node config {key}: not found")
    return path


def _json_object(value, key: str) -> dict:
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError as err:
        raise MPUError(f"job: {key} is not JSON ({err})") from None
    if not isinstance(parsed, dict):
        raise MPUError(f"job: {key} must be a JSON object, got {value!r}")
    return parsed
