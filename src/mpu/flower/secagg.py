"""Secure aggregation across data owners with Flower's SecAgg+: the server learns only the per-copy
sum over owners, never one owner's update.

With ``secagg = true`` in the run config a round has two phases (docs/flower.md, "Secure
aggregation"):

1. **unlearn** (the ordinary ``train`` message: the publication and the job, the job flagged
   ``secagg``): each owner unlearns every copy as always, but keeps its updates. It replies only with
   its update manifests (``"manifests"``: the ``update-K/update.json`` files, with ``steps`` 0 and no
   ``loss`` or ``seconds``) and the layout digest of its vectors (``"secagg-layout"``). Its secure-sum
   input waits in the node's Flower ``Context.state`` (:data:`PENDING`), on the owner's machine.
2. **secure sum**: the server runs Flower's own ``SecAggPlusWorkflow`` (setup, share keys, collect
   masked vectors, unmask); each owner's ClientApp answers through Flower's ``secaggplus_mod``, which
   quantises and masks the input. Owner o's input is, in the order of :func:`layout` (the model's
   tensor names, sorted, each flattened row-major; identical on both sides because a full update has
   exactly the published model's tensors):

       x_{k,o} = n_o * Delta'_{k,o}     one float64 vector per copy k (n_o: the owner's forget rows)
       c_o     = [n_o, steps_{1,o}, ..., steps_{m,o}]   integers, encoded as exact quantisation levels

   The server decodes ``sum_o x_{k,o}`` and ``sum_o c_o`` and writes an ordinary returns folder:
   ``Delta'_k = sum_o x_{k,o} / sum_o n_o`` (the same forget-size-weighted mean as
   :func:`mpu.flower.owners.combine_returns`, up to quantisation) with manifest ``steps`` =
   ``sum_o steps_{k,o}``. :func:`mpu.server.aggregate.aggregate` then validates and aggregates it as
   any returns folder (``find_returns``, NaN/Inf, the per-block poisoning bound, T_k^-1, harmonic).

Quantisation (Flower's ``quantize``): each value is clipped to ``[-clip, clip]`` and stochastically
rounded to one of ``levels`` steps, so each owner adds at most ``2 * clip / levels`` of error per value
(unbiased). An owner refuses (error reply, the round fails) rather than let a value be clipped:
``max |x| > clip`` names the ``secagg-clip`` it would need. ``levels`` defaults to the largest power
of two with ``owners * levels < 2**32`` (Flower's modulus), at most 2**30.

What the server can no longer check per owner, and other limits, are in docs/flower.md. In short:
per-owner NaN/Inf and the per-block bound run on the sum only; ``forget_rows`` is never seen per
owner (only the total); an owner's vector is trusted to be ``n_o * Delta'`` (a malicious owner can
add anything up to the clip range, undetectably); the SecAgg+ protection assumes an honest-but-curious
server (it relays the owners' public keys: a server that substitutes keys can unmask one owner).

Owner-side hardening beyond ``secaggplus_mod``: an owner refuses a setup with fewer than 2 owners or a
``max_weight`` other than 1, refuses to reveal key shares of "dead" owners (MPU rounds need every
owner, so no dropout recovery is ever needed, and that recovery is what would let a server unmask one
owner), and its input is deleted once masked (one secure sum per update). A node config
``secagg = "required"`` makes the owner refuse a job without secure aggregation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from mpu.errors import InputError, MPUError

log = logging.getLogger(__name__)

SECAGG = "secagg"  # the job's flag, the node config key and the run config switch
MANIFESTS, LAYOUT = "manifests", "secagg-layout"  # the phase-1 reply's records
PENDING, PENDING_INFO = "mpu.secagg.pending", "mpu.secagg.pending-info"  # the owner's Context.state
ROUND_KEY = "mpu-round"  # the FitIns config key naming the round whose updates are summed
MODULUS = 1 << 32  # Flower's largest modulus_range
MAX_LEVELS = 1 << 30  # quantize() rounds into int32
COUNTS = "counts"


@dataclasses.dataclass(frozen=True)
class SecAggSettings:
    """Secure-sum settings from the run config (``secagg-clip``, ``secagg-levels``).

    ``clip``: clipping range of each value of n_o * Delta' (units of the update times rows), > 0;
    ``levels``: quantisation levels (0: :func:`default_levels` for the number of owners).
    """

    clip: float = 8.0
    levels: int = 0

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> "SecAggSettings | None":
        """None unless ``secagg`` is true; MPUError naming the key for an invalid value or fewer than 2 ``owners``."""
        if not _flag(config.get(SECAGG, False)):
            return None
        try:
            clip, levels = float(config.get("secagg-clip", 8.0)), int(config.get("secagg-levels", 0))
        except (TypeError, ValueError) as err:
            raise MPUError(f"run config: secagg-clip / secagg-levels: {err}") from None
        if not math.isfinite(clip) or clip <= 0:
            raise MPUError(f"run config: secagg-clip must be a finite number > 0, got {clip}")
        if int(config.get("owners", 1)) < 2:
            raise MPUError("run config: secagg needs owners >= 2 (the sum of one owner's update is that update)")
        if levels != 0 and not 2 <= levels <= MAX_LEVELS:
            raise MPUError(f"run config: secagg-levels must be 0 (automatic) or 2..{MAX_LEVELS}, got {levels}")
        return cls(clip=clip, levels=levels)

    def levels_for(self, owners: int) -> int:
        """The quantisation levels used with ``owners`` owners; MPUError when the sum could wrap."""
        levels = self.levels or default_levels(owners)
        if owners * levels >= MODULUS:
            raise MPUError(f"secagg-levels {levels} with {owners} owners can overflow Flower's modulus 2**32; "
                           f"use at most {default_levels(owners)}")
        return levels


def default_levels(owners: int) -> int:
    """The largest power of two L <= 2**30 with ``owners * L < 2**32`` (the masked sum must not wrap)."""
    if owners < 1:
        raise MPUError(f"owners must be >= 1, got {owners}")
    levels = MAX_LEVELS
    while owners * levels >= MODULUS:
        levels //= 2
    return levels


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "required")


# --- the vectors ---------------------------------------------------------------------------------


def layout(reader) -> list[tuple[str, tuple[int, ...]]]:
    """The secure-sum order: every tensor of a checkpoint (sorted names, their shapes)."""
    return [(name, tuple(int(d) for d in reader.shape(name))) for name in sorted(reader.names())]


def layout_digest(entries: list[tuple[str, tuple[int, ...]]]) -> str:
    """SHA-256 of the layout as JSON: both sides compare it before summing."""
    return hashlib.sha256(json.dumps([[name, list(shape)] for name, shape in entries]).encode()).hexdigest()


def layout_elements(entries: list[tuple[str, tuple[int, ...]]]) -> int:
    """Values per copy vector."""
    return sum(math.prod(shape) for _, shape in entries)


def owner_vectors(returns_dir: str | Path, forget_rows: int) -> tuple[list[np.ndarray], np.ndarray, str, list[dict]]:
    """An owner's secure-sum input from its own returns folder: per copy k (``update-1``, ...) the
    float64 vector ``forget_rows * Delta'_k`` in :func:`layout` order, the counts
    ``[forget_rows, steps_1, ..., steps_m]`` (int64), the layout digest, and the manifests as JSON.
    Raises MPUError for LoRA returns (a sum of factors is not the sum of products) or copies whose
    tensors differ."""
    from mpu.checkpoint import CheckpointReader
    from mpu.protocol import UPDATE_MANIFEST

    returns_dir = Path(returns_dir)
    folders = sorted((p for p in returns_dir.iterdir() if p.is_dir() and p.name.startswith("update-")),
                     key=lambda p: int(p.name.split("-", 1)[1]))
    if not folders:
        raise MPUError(f"{returns_dir}: no update-K folders to sum")
    vectors, steps, manifests, digest = [], [], [], None
    for folder in folders:
        manifest = json.loads((folder / UPDATE_MANIFEST).read_text())
        if manifest.get("kind") != "full":
            raise MPUError(f"{folder}: secure aggregation sums full updates; a {manifest.get('kind')!r} return cannot be summed "
                           "(train without lora_rank)")
        reader = CheckpointReader(folder)
        entries = layout(reader)
        if digest is None:
            digest = layout_digest(entries)
        elif layout_digest(entries) != digest:
            raise MPUError(f"{folder}: tensors differ from {folders[0]}")
        vectors.append(np.concatenate([reader.get(name).to(torch.float64).numpy().ravel() for name, _ in entries]) * forget_rows)
        steps.append(int(manifest["steps"]))
        manifests.append(manifest)
    counts = np.array([forget_rows, *steps], dtype=np.int64)
    return vectors, counts, digest, manifests  # type: ignore[return-value]


def encode_counts(counts: np.ndarray, clip: float, levels: int) -> np.ndarray:
    """Integers as float64 values that quantise to exactly that level: ``j * 2 clip / levels - clip``
    (``quantize`` maps v to ``(v + clip) * levels / (2 clip)``, an integer here, so no rounding)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.min() < 0 or counts.max() > levels:
        raise MPUError(f"counts {counts.tolist()} do not fit {levels} quantisation levels")
    return counts.astype(np.float64) * (2.0 * clip / levels) - clip


def decode_counts(total: np.ndarray, owners: int, clip: float, levels: int) -> np.ndarray:
    """Sum of :func:`encode_counts` over ``owners`` owners back to the summed integers; MPUError when a
    value is not (close to) an integer, i.e. the sum was not of encoded counts."""
    levels_sum = (np.asarray(total, dtype=np.float64) + owners * clip) * (levels / (2.0 * clip))
    rounded = np.rint(levels_sum)
    if not np.all(np.abs(levels_sum - rounded) < 1e-3):
        raise MPUError(f"secure sum: the counts did not decode to integers ({levels_sum[:4].tolist()}); the sum is corrupt")
    return rounded.astype(np.int64)


def write_summed_returns(workdir: str | Path, manifests: list[dict], vectors: list[np.ndarray], counts: np.ndarray,
                         out_dir: str | Path, info: dict | None = None) -> Path:
    """Write ``out_dir`` (must not exist) as an ordinary returns folder from the secure sum.

    ``vectors[k]`` is ``sum_o n_o Delta'_{k,o}`` of the published copy ``manifests[k]["copy_id"]`` in
    :func:`layout` order of the server's model; ``counts`` is ``[sum n, sum steps_1, ...]``. Each
    ``update-K`` gets ``vectors[k] / sum n`` as float32 tensors and the manifest with ``steps`` summed
    (``loss`` and ``seconds`` are not summed: absent). ``secagg.json`` records the totals. Raises
    MPUError for a vector of the wrong length or a total below 1."""
    from mpu.checkpoint import CheckpointReader, ShardedWriter, atomic_write_json, layer_groups, staging_dir
    from mpu.checkpoint.files import PARTY_FILE_MODE
    from mpu.protocol import UPDATE_MANIFEST, update_folder
    from mpu.server.workdir import Workdir

    work = Workdir(workdir)
    model = CheckpointReader(work.model_path(work.load()))
    entries = layout(model)
    shapes = dict(entries)
    offsets, position = {}, 0
    for name, shape in entries:
        offsets[name] = (position, position + math.prod(shape))
        position += math.prod(shape)
    total_rows = int(counts[0])
    if total_rows < 1 or len(counts) != len(vectors) + 1:
        raise MPUError(f"secure sum: counts {counts.tolist()} do not fit {len(vectors)} copies")
    with staging_dir(out_dir) as stage:
        for k, (manifest, vector) in enumerate(zip(manifests, vectors)):
            if vector.shape != (position,):
                raise MPUError(f"secure sum: copy {k + 1} has {vector.size} values, the model {position}")
            target = stage / update_folder(int(manifest["copy_id"]))
            writer = ShardedWriter(target)
            for _, group in layer_groups(model.names()):
                tensors = {}
                for name in group:
                    start, end = offsets[name]
                    tensors[name] = torch.from_numpy(vector[start:end] / total_rows).to(torch.float32).reshape(shapes[name]).contiguous()
                writer.write_shard(tensors)
            writer.finish()
            summed = {key: value for key, value in manifest.items() if key not in ("loss", "seconds")}
            summed["steps"] = int(counts[k + 1])
            atomic_write_json(target / UPDATE_MANIFEST, summed, mode=PARTY_FILE_MODE)
        atomic_write_json(stage / "secagg.json", {"forget_rows_total": total_rows, **(info or {})}, mode=PARTY_FILE_MODE)
    return Path(out_dir)


# --- the owner (ClientApp) -------------------------------------------------------------------------


def requested(content: RecordDict, node_config: dict) -> bool:
    """Whether the job asks for secure aggregation. MPUError when the owner's node config says
    ``secagg = "required"`` and the job does not (the owner then sends nothing)."""
    from mpu.flower.server_app import JOB

    job = content.config_records.get(JOB)
    wanted = job is not None and _flag(job.get(SECAGG, False))
    if not wanted and _flag(node_config.get(SECAGG, False)):
        raise MPUError("this data owner requires secure aggregation (node config secagg); the job does not use it")
    return wanted


def unlearn_and_keep(msg: Message, context: Context, unlearn: Callable[[RecordDict, dict, int], RecordDict]) -> RecordDict:
    """Phase 1 on the owner: ``unlearn`` (the ClientApp's ``unlearn_message``) as always, then keep the
    secure-sum input in ``context.state`` and return only the manifests and the layout digest."""
    from mpu.flower.files import folder_to_record, record_to_folder
    from mpu.flower.server_app import OWNER, RETURNS
    from mpu.protocol import UPDATE_MANIFEST

    reply = unlearn(msg.content, dict(context.node_config), msg.metadata.run_id)
    forget_rows = int(reply.config_records[OWNER]["forget_rows"])
    with tempfile.TemporaryDirectory(prefix="mpu-secagg-") as scratch:
        returns = record_to_folder(reply.array_records[RETURNS], Path(scratch) / "returns", what="own returns")
        vectors, counts, digest, manifests = owner_vectors(returns, forget_rows)
        shown = Path(scratch) / "manifests"
        for manifest in manifests:
            public = {key: value for key, value in manifest.items() if key not in ("loss", "seconds")}
            public["steps"] = 0  # the true steps are summed securely (they reveal the forget-set size)
            folder = shown / f"update-{int(manifest['copy_id'])}"
            folder.mkdir(parents=True)
            (folder / UPDATE_MANIFEST).write_text(json.dumps(public))
        manifests_record = folder_to_record(shown)
    pending = {f"copy-{k}": Array(vector) for k, vector in enumerate(vectors, start=1)}
    pending[COUNTS] = Array(counts)
    context.state.array_records[PENDING] = ArrayRecord(pending)
    context.state.config_records[PENDING_INFO] = ConfigRecord({"round": int(manifests[0]["round"]), "copies": len(vectors)})
    return RecordDict({MANIFESTS: manifests_record,
                       LAYOUT: ConfigRecord({"digest": digest, "elements": int(vectors[0].size), "copies": len(vectors)})})


def is_stage_message(msg: Message) -> bool:
    """A SecAgg+ stage message (it carries Flower's SecAgg+ config record)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records


def stage(msg: Message, context: Context) -> Message:
    """Phase 2 on the owner: one SecAgg+ stage, answered by Flower's ``secaggplus_mod`` around
    :func:`_masked_input`, after the owner-side checks of the module docstring."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    current = configs.get(Key.STAGE)
    if current == Stage.SETUP:
        if int(configs.get(Key.SAMPLE_NUMBER, 0)) < 2:
            raise MPUError("secure aggregation with fewer than 2 data owners hides nothing; refused")
        if float(configs.get(Key.MAX_WEIGHT, 0.0)) != 1.0:
            raise MPUError("secure aggregation: max_weight must be 1 (the forget-set size travels inside the sum)")
    if current == Stage.UNMASK and configs.get(Key.DEAD_NODE_ID_LIST):
        raise MPUError("secure aggregation: the server reports dropped owners; revealing their key shares could unmask "
                       "an owner's update, and an MPU round needs every owner: refused")
    return secaggplus_mod(msg, context, _masked_input)


def _masked_input(msg: Message, context: Context) -> Message:
    """What ``secaggplus_mod`` masks: the kept input, in Flower's ``FitRes`` form (``num_examples`` 1:
    the weights travel inside the sum). The input is deleted from the state here (one sum per update)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    if PENDING not in context.state.array_records:
        raise MPUError("secure aggregation: no unlearned updates are waiting (already summed, or phase 1 did not run)")
    pending = context.state.array_records.pop(PENDING)
    info = context.state.config_records.pop(PENDING_INFO)
    fit_config = msg.content.config_records.get("fitins.config", ConfigRecord())
    if int(fit_config.get(ROUND_KEY, -1)) != int(info["round"]):
        raise MPUError(f"secure aggregation: asked to sum round {fit_config.get(ROUND_KEY)}, the kept updates are of round {info['round']}")
    state = context.state.config_records[RECORD_KEY_STATE]
    clip, levels = float(state["clipping_range"]), int(state["target_range"])
    vectors = [pending[f"copy-{k}"].numpy() for k in range(1, int(info["copies"]) + 1)]
    if not all(np.isfinite(vector).all() for vector in vectors):
        raise MPUError("secure aggregation: the update holds NaN or Inf; nothing is sent (the server could not tell whose it was)")
    largest = max(float(np.abs(vector).max()) for vector in vectors)
    if largest > clip:
        raise MPUError(f"secure aggregation: a value of n_o * Delta' is {largest:.4g}, above secagg-clip {clip:g}; "
                       f"it would be clipped silently. Raise secagg-clip to at least {largest:.4g}")
    arrays = [*vectors, encode_counts(pending[COUNTS].numpy(), clip, levels)]
    fitres = FitRes(status=Status(code=Code.OK, message=""), parameters=ndarrays_to_parameters(arrays), num_examples=1, metrics={})
    return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# --- the server (ServerApp) ------------------------------------------------------------------------


def secure_returns(grid, run, nodes: list[int], replies: dict[int, Message], folder: Path, round_number: int) -> Path:
    """Phase 1's replies checked, phase 2 run, and the summed returns folder ``folder/returns`` written.

    Each owner's manifests must pass :func:`mpu.server.validate.check_manifest` for this round, name
    every published copy with its checksum, be full updates and agree on the job (as
    :func:`mpu.flower.owners.combine_returns` demands); its layout digest must equal the server's.
    Owners without a usable reply are dropped only where ``run.min_owners`` allows it (at least 2 must
    remain; without ``min_owners``, every owner must reply): MPUError naming them otherwise. Whoever
    unlearned must then take part in every SecAgg+ stage. Returns the folder for ``aggregate``.
    """
    from mpu.checkpoint import CheckpointReader, read_json
    from mpu.checkpoint.files import MAX_MANIFEST_BYTES
    from mpu.flower.files import record_to_folder
    from mpu.flower.owners import AGREED
    from mpu.protocol import UPDATE_MANIFEST
    from mpu.protocol.update import same_setting
    from mpu.server.validate import check_manifest
    from mpu.server.workdir import Workdir

    settings: SecAggSettings = run.secagg
    work = Workdir(run.workdir)
    state = work.load()
    published = state.published
    if published is None or published.round != round_number:
        raise MPUError(f"round {round_number} has not been published; nothing to sum")
    entries = layout(CheckpointReader(work.model_path(state)))
    digest, elements = layout_digest(entries), layout_elements(entries)
    dropped = [f"node {node}: " + ("no reply in time" if replies.get(node) is None else f"failed: {replies[node].error.reason}")
               for node in nodes if replies.get(node) is None or replies[node].has_error()]
    minimum = max(2, getattr(run, "min_owners", None) or len(nodes))  # a run config with min-owners may drop owners
    indexed = [(index, node) for index, node in enumerate(nodes, start=1) if replies.get(node) is not None and not replies[node].has_error()]
    if len(indexed) < minimum:
        raise MPUError(f"round {round_number}: {len(indexed)} of {len(nodes)} data owner(s) unlearned, the secure sum needs "
                       f"{minimum}; nothing aggregated: " + "; ".join(dropped))
    for reason in dropped:
        log.warning("round %d: dropped from the secure sum: %s", round_number, reason)
    nodes = [node for _, node in indexed]
    per_owner: list[list] = []
    for index, node in indexed:
        reply = replies[node]
        target = folder / f"owner-{index}"
        content = reply.content
        if MANIFESTS not in content.array_records or LAYOUT not in content.config_records:
            raise InputError(target, f"reply of node {node} lacks its {MANIFESTS!r} or {LAYOUT!r} record (secure aggregation)")
        if set(content.array_records) - {MANIFESTS}:
            raise InputError(target, f"reply of node {node} carries arrays besides its manifests; refused")
        shape = content.config_records[LAYOUT]
        if shape.get("digest") != digest or shape.get("elements") != elements:
            raise InputError(target, f"node {node}: its update layout differs from the server's model")
        manifests_dir = record_to_folder(content.array_records[MANIFESTS], target, max_bytes=len(published.copies) << 20,
                                         what=f"manifests of node {node}")
        manifests = {}
        for copy_id, sha in published.copies.items():
            path = manifests_dir / f"update-{copy_id}" / UPDATE_MANIFEST
            if not path.is_file():
                raise InputError(path, f"node {node}: no manifest for copy {copy_id}")
            manifest = check_manifest(read_json(path, "update manifest", MAX_MANIFEST_BYTES), path, published)
            if manifest.copy_id != copy_id or manifest.copy_sha256 != sha:
                raise InputError(path, f"node {node}: manifest does not name published copy {copy_id} and its checksum")
            if manifest.kind != "full":
                raise InputError(path, "secure aggregation sums full updates only")
            manifests[copy_id] = (path, manifest)
        per_owner.append([manifests[copy_id] for copy_id in sorted(manifests)])
    first = per_owner[0]
    for owner in per_owner[1:]:
        for (path, manifest), (first_path, reference) in zip(owner, first):
            differing = [key for key in AGREED if not same_setting(getattr(manifest, key), getattr(reference, key))]
            if differing:
                raise InputError(path, f"trained with other {', '.join(differing)} than {first_path}; every data owner must run the same job")
    started = time.perf_counter()
    levels = settings.levels_for(len(nodes))
    sums = secure_sum(grid, nodes, settings.clip, levels, round_number, [(elements,)] * len(first) + [(len(first) + 1,)],
                      timeout=run.timeout)
    counts = decode_counts(sums[-1], len(nodes), settings.clip, levels)
    log.info("round %d: secure sum over %d owners in %.2f s (%d forget rows in total)", round_number, len(nodes),
             time.perf_counter() - started, int(counts[0]))
    return write_summed_returns(run.workdir, [manifest.to_json() for _, manifest in first], sums[:-1], counts, folder / "returns",
                                info={"owners": len(nodes), "clip": settings.clip, "levels": levels, "round": round_number})


def secure_sum(grid, nodes: list[int], clip: float, levels: int, round_number: int, shapes: list[tuple[int, ...]],
               timeout: float | None = None) -> list[np.ndarray]:
    """Run Flower's ``SecAggPlusWorkflow`` over ``nodes`` (every one must take part: threshold = all)
    and return the decoded sum of their inputs (float64 arrays of ``shapes``). MPUError when the
    workflow halts (an owner failed or refused) or returns other shapes."""
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    class _Capture(Strategy):
        """configure_fit: exactly ``nodes``; aggregate_fit: keep the unmasked mean Flower computed."""

        def __init__(self):
            self.mean: list[np.ndarray] | None = None
            self.failures: list = []

        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            ins = FitIns(ndarrays_to_parameters([]), {ROUND_KEY: int(round_number)})
            return [(GridClientProxy(node, grid, 0), ins) for node in nodes]

        def aggregate_fit(self, server_round, results, failures):
            self.failures = list(failures)
            if len(results) == len(nodes) and not failures:
                self.mean = parameters_to_ndarrays(results[0][1].parameters)
            return None, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    strategy = _Capture()
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: int(round_number)})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=1.0, max_weight=1.0, clipping_range=float(clip),
                                  quantization_range=int(levels), modulus_range=MODULUS, timeout=timeout)
    watched = _ErrorWatch(grid)
    workflow(watched, context)
    if strategy.mean is None:
        reasons = "; ".join(watched.errors) or "an owner failed, refused or did not answer in time"
        raise MPUError(f"secure aggregation halted, nothing summed: {reasons}")
    if [tuple(array.shape) for array in strategy.mean] != [tuple(shape) for shape in shapes]:
        raise MPUError(f"secure sum: got arrays {[a.shape for a in strategy.mean]}, expected {shapes}")
    return [np.asarray(array, dtype=np.float64) * len(nodes) for array in strategy.mean]


class _ErrorWatch:
    """The grid as the workflow sees it, keeping the reasons of error replies (the workflow itself
    only logs "Secure aggregation halted")."""

    def __init__(self, grid):
        self.grid = grid
        self.errors: list[str] = []

    def send_and_receive(self, messages, *, timeout: float | None = None):
        """The grid's replies, unchanged; error replies' reasons are kept."""
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                self.errors.append(f"node {reply.metadata.src_node_id}: {str(reply.error.reason)[:300]}")
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


# --- in-process transport (tests, benchmarks) -------------------------------------------------------


class InProcessGrid:
    """A stand-in for Flower's ``Grid`` that delivers each message to a ClientApp handler in this
    process, through Flower's wire format (every message's content is serialised to protobuf and
    back, both ways). For tests and benchmarks only: no SuperLink, no network.

    ``handlers``: node id -> ``handler(msg, context)``; each node keeps its own ``Context`` (with
    ``node_configs[node]``) across messages, as a SuperNode does. ``received`` lists every reply the
    server got (what a ServerApp sees), ``bytes_up``/``bytes_down`` the serialised sizes.
    """

    def __init__(self, handlers: dict[int, Callable[[Message, Context], Message]], node_configs: dict[int, dict] | None = None,
                 run_id: int = 1):
        self.handlers = handlers
        self.contexts = {node: Context(run_id=run_id, node_id=node, node_config=dict((node_configs or {}).get(node, {})),
                                       state=RecordDict(), run_config={}) for node in handlers}
        self.run_id = run_id
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 0  # this process is the ServerApp
        self.received: list[Message] = []
        self.bytes_up = 0
        self.bytes_down = 0

    def get_node_ids(self) -> list[int]:
        """The owners' node ids, sorted (as ``Grid.get_node_ids``)."""
        return sorted(self.handlers)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        """Deliver each message to its node's handler, one after another; the replies in order. A
        handler's exception becomes an error reply, as in Flower. ``timeout`` is ignored."""
        from flwr.app.error import Error
        from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_run_id"] = self.run_id
            wire = recorddict_to_proto(msg.content).SerializeToString()
            self.bytes_down += len(wire)
            delivered = Message(_parse(recorddict_from_proto, wire), dst_node_id=msg.metadata.dst_node_id,
                                message_type=msg.metadata.message_type, group_id=msg.metadata.group_id)
            delivered.metadata.__dict__["_message_id"] = msg.metadata.message_id
            delivered.metadata.__dict__["_run_id"] = self.run_id
            node = msg.metadata.dst_node_id
            try:
                reply = self.handlers[node](delivered, self.contexts[node])
            except Exception as err:  # a ClientApp exception becomes an error reply, as in Flower
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=delivered)
            if reply.has_content():
                wire = recorddict_to_proto(reply.content).SerializeToString()
                self.bytes_up += len(wire)
                reply = Message(_parse(recorddict_from_proto, wire), reply_to=delivered)
            self.received.append(reply)
            replies.append(reply)
        return replies


def _parse(from_proto, wire: bytes) -> RecordDict:
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    proto = ProtoRecordDict()
    proto.ParseFromString(wire)
    return from_proto(proto)
