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
node config keys ``threads`` (torch threads) and ``retain`` are optional. With ``state-dir`` (an
existing folder of the owner's), round 1's publication of each Flower run is kept there
(``run-<run id>/reference``) and used as the reference publication of the later rounds of that run,
as ``mpu client unlearn --reference-model-inbox`` and ``mpu run`` do: reference-model methods (NPO, DPO,
...) then compare copy k with copy k as first received, a fixed reference over the rounds. Without
it each round's copies are their own reference. Any error is raised, and Flower returns it to the
server as an error reply.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from mpu.errors import InputError, MPUError
from mpu.flower.files import folder_to_record, record_to_folder
from mpu.flower.server_app import JOB, OWNER, PUBLICATION, RETURNS

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower's entry point for one round's publication (and, with secure aggregation, its SecAgg+ stages)."""
    from mpu.flower import secagg  # --- secure aggregation hook (mpu.flower.secagg) ---
    if secagg.is_stage_message(msg):
        return secagg.stage(msg, context)
    if secagg.requested(msg.content, dict(context.node_config)):
        return Message(secagg.unlearn_and_keep(msg, context, unlearn_message), reply_to=msg)  # --- end of hook ---
    content = unlearn_message(msg.content, dict(context.node_config), run_id=msg.metadata.run_id)
    return Message(content, reply_to=msg)


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
                                 reference_model_inbox=reference)
        returns = folder_to_record(Path(scratch) / "returns")
    owner = ConfigRecord({"forget_rows": len(forget_rows), "steps": sum(result.steps for result in results)})
    return RecordDict({RETURNS: returns, OWNER: owner})


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
