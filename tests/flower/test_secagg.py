"""Secure aggregation across data owners (Flower's SecAgg+), in-process: the ServerApp's round loop
and the owners' handlers talk through Flower's wire format (InProcessGrid), the masking is Flower's
own ``SecAggPlusWorkflow``/``secaggplus_mod``. The server's result equals the plain forget-size-weighted
combination within the quantisation error, and no reply the server receives holds an owner's update."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from mpu.checkpoint import CheckpointReader
from mpu.errors import MPUError
from mpu.flower import secagg
from mpu.flower.files import folder_to_record, record_to_folder
from mpu.flower.owners import combine_returns
from mpu.flower.server_app import OWNER, PUBLICATION, RETURNS, FlowerRun, run_rounds
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from mpu.server.workdir import Workdir
from tests.server.stand_in_client import write_returns

SIZES = {11: 3, 22: 5}  # node id -> forget rows
STEPS = {11: 4, 22: 7}


def update_of(node: int):
    """A distinct, deterministic stand-in update per owner (values ~1e-3, like a real one)."""
    scale = {11: 1.0, 22: -0.6}[node]
    return lambda name, weights: scale * 1e-3 * torch.sin(weights * (3.0 if node == 11 else 5.0))


def stand_in_unlearn(node: int, keep: Path, update=None):
    """The ClientApp's unlearn_message replaced by a stand-in owner: its update folder is also kept
    in ``keep`` (the test compares with it; the server never sees it)."""
    def unlearn(content: RecordDict, node_config: dict, run_id: int) -> RecordDict:
        with tempfile.TemporaryDirectory() as scratch:
            outbox = record_to_folder(content.array_records[PUBLICATION], Path(scratch) / "outbox")
            steps = {copy: {"steps": STEPS[node]} for copy in (1, 2)}
            write_returns(outbox, keep, update or update_of(node), manifest_overrides=steps)
        return RecordDict({RETURNS: folder_to_record(keep), OWNER: ConfigRecord({"forget_rows": SIZES[node], "steps": 1})})
    return unlearn


def owner_handler(unlearn):
    """client_app.train with the stand-in unlearn (the same hook calls)."""
    def handler(msg: Message, context) -> Message:
        if secagg.is_stage_message(msg):
            return secagg.stage(msg, context)
        assert secagg.requested(msg.content, dict(context.node_config))
        return Message(secagg.unlearn_and_keep(msg, context, unlearn), reply_to=msg)
    return handler


def server_dir(root: Path, model_dir: Path) -> Path:
    init_server(root, str(model_dir), None, ServerConfig(copies=2, kappa=0.01, rounds=1, fixed_seed=5), progress=False)
    return root


def flat(folder: Path) -> np.ndarray:
    reader = CheckpointReader(folder)
    return np.concatenate([reader.get(name).double().numpy().ravel() for name in sorted(reader.names())])


def test_owner_vectors_and_summed_returns_round_trip_to_the_weighted_combination(tmp_path, tiny_model_dir):
    server = server_dir(tmp_path / "server", tiny_model_dir)
    publish(server, tmp_path / "outbox", progress=False)
    owners = {}
    for node in SIZES:
        write_returns(tmp_path / "outbox", tmp_path / f"owner-{node}", update_of(node),
                      manifest_overrides={copy: {"steps": STEPS[node]} for copy in (1, 2)})
        owners[node] = secagg.owner_vectors(tmp_path / f"owner-{node}", SIZES[node])

    sums = [sum(owners[node][0][k] for node in SIZES) for k in range(2)]
    counts = sum(owners[node][1] for node in SIZES)
    clip, levels = 1.0, secagg.default_levels(2)
    encoded = sum(secagg.encode_counts(owners[node][1], clip, levels) for node in SIZES)
    returns = secagg.write_summed_returns(server, owners[11][3], sums, counts, tmp_path / "returns")
    combine_returns(server, [tmp_path / "owner-11", tmp_path / "owner-22"], [3, 5], tmp_path / "plain")

    assert owners[11][2] == owners[22][2] == secagg.layout_digest(secagg.layout(CheckpointReader(tiny_model_dir)))
    assert secagg.decode_counts(encoded, 2, clip, levels).tolist() == [8, 11, 11]
    for copy in (1, 2):
        np.testing.assert_allclose(flat(returns / f"update-{copy}"), flat(tmp_path / "plain" / f"update-{copy}"), rtol=0, atol=1e-9)
        assert json.loads((returns / f"update-{copy}" / "update.json").read_text())["steps"] == 11
    assert aggregate(server, returns, progress=False).step_norm > 0  # an ordinary returns folder


def test_two_owners_secure_sum_equals_the_plain_combination_and_the_server_sees_no_update(tmp_path, tiny_model_dir):
    secure = server_dir(tmp_path / "secure", tiny_model_dir)
    plain = server_dir(tmp_path / "plain", tiny_model_dir)
    grid = secagg.InProcessGrid({node: owner_handler(stand_in_unlearn(node, tmp_path / f"kept-{node}")) for node in SIZES})
    run = FlowerRun.from_run_config({"workdir": str(secure), "owners": 2, "timeout": 60, "keep-exchange": True,
                                     "exchange": str(tmp_path / "exchange"), "secagg": True, "secagg-clip": 0.05})

    run_rounds(grid, run)
    publish(plain, tmp_path / "plain-outbox", progress=False)  # same fixed seed: the same copies
    combined = combine_returns(plain, [tmp_path / "kept-11", tmp_path / "kept-22"], [3, 5], tmp_path / "plain-returns")

    summed = tmp_path / "exchange" / "round-1" / "returns"
    for copy in (1, 2):
        got, want = flat(summed / f"update-{copy}"), flat(combined / f"update-{copy}")
        levels = secagg.default_levels(2)
        bound = 2 * 2 * 0.05 / levels / 8  # two owners, each off by less than one level, divided by sum n = 8
        assert np.abs(got - want).max() <= bound + 1e-9
        assert 0 < np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
        assert json.loads((summed / f"update-{copy}" / "update.json").read_text())["steps"] == 11
    assert json.loads((summed / "secagg.json").read_text())["forget_rows_total"] == 8
    assert Workdir(secure).load().current_round == 2  # aggregated, round advanced

    # what the ServerApp received: manifests, layouts, public keys, shares, masked vectors; never an update
    own = {node: np.concatenate([SIZES[node] * flat(tmp_path / f"kept-{node}" / f"update-{c}") for c in (1, 2)]) for node in SIZES}
    assert all(RETURNS not in reply.content.array_records for reply in grid.received)
    assert all(json.loads(reply.content.array_records["manifests"]["update-1/update.json"].data)["steps"] == 0
               for reply in grid.received if "manifests" in reply.content.array_records)
    seen = [values for reply in grid.received for values in numbers_in(reply.content)]
    assert any(values.size >= own[11].size // 2 for values in seen)  # the masked vectors are among them
    for values in seen:
        for vector in own.values():
            part = vector[: values.size] if values.size <= vector.size else vector
            assert values.size < 64 or abs(np.corrcoef(values[: part.size].astype(np.float64), part)[0, 1]) < 0.05


def numbers_in(content: RecordDict):
    """Every numeric array a reply carries: Arrays, and byte strings of config records decoded as
    Flower ndarrays where they are ones (the masked vectors travel so)."""
    from flwr.common import bytes_to_ndarray

    for record in content.array_records.values():
        for array in record.values():
            if array.stype != "mpu.file-bytes/1":
                yield array.numpy().ravel()
    for record in content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes) and item[:6] == b"\x93NUMPY":
                    yield bytes_to_ndarray(item).ravel()


def nan_update(name, weights):
    return torch.full_like(weights, float("nan"))


@pytest.mark.parametrize("clip, update, reason", [(1e-4, None, "above secagg-clip"), (8.0, nan_update, "NaN or Inf")])
def test_an_owner_refuses_to_clip_or_send_nan_and_the_round_is_not_aggregated(tmp_path, tiny_model_dir, clip, update, reason):
    server = server_dir(tmp_path / "server", tiny_model_dir)
    grid = secagg.InProcessGrid({node: owner_handler(stand_in_unlearn(node, tmp_path / f"kept-{node}", update if node == 22 else None))
                                 for node in SIZES})
    run = FlowerRun.from_run_config({"workdir": str(server), "owners": 2, "timeout": 60, "secagg": True, "secagg-clip": clip})

    with pytest.raises(MPUError, match=f"secure aggregation halted.*node 22.*{reason}"):
        run_rounds(grid, run)
    assert Workdir(server).load().current_round == 1 and Workdir(server).load().published is not None


def test_an_owner_refuses_to_reveal_a_dropped_owners_key_shares(tmp_path):
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    msg = Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [1],
                                                                Key.DEAD_NODE_ID_LIST: [2]})}), dst_node_id=1, message_type="train")
    with pytest.raises(MPUError, match="dropped owners"):
        secagg.stage(msg, None)


@pytest.mark.parametrize("config, reason", [
    ({"secagg": True, "owners": 2, "secagg-clip": 0}, "secagg-clip"),
    ({"secagg": True, "owners": 2, "secagg-levels": 1}, "secagg-levels"),
    ({"secagg": True, "owners": 1}, "owners >= 2"),
])
def test_invalid_secagg_settings_are_refused(config, reason):
    with pytest.raises(MPUError, match=reason):
        secagg.SecAggSettings.from_run_config(config)


def test_levels_leave_room_for_the_sum_and_an_owner_may_require_secure_aggregation():
    assert secagg.default_levels(2) == 2**30 and secagg.default_levels(4) == 2**29
    assert secagg.SecAggSettings.from_run_config({"secagg": False}) is None
    with pytest.raises(MPUError, match="overflow"):
        secagg.SecAggSettings(levels=2**30).levels_for(4)
    with pytest.raises(MPUError, match="requires secure aggregation"):
        secagg.requested(RecordDict({"job": ConfigRecord({"method": "GradAscent", "secagg": False})}), {"secagg": "required"})


def tampered(handler, change):
    """An owner whose phase-1 reply is changed by ``change(content)`` (a hostile or broken owner)."""
    def wrapped(msg: Message, context) -> Message:
        reply = handler(msg, context)
        if not secagg.is_stage_message(msg):
            change(reply.content)
        return reply
    return wrapped


def other_digest(content):
    content.config_records[secagg.LAYOUT]["digest"] = "0" * 64


def extra_arrays(content):
    content.array_records[RETURNS] = folder_to_record(Path(__file__).parent)


def wrong_copy_checksum(content):
    record = content.array_records[secagg.MANIFESTS]
    manifest = json.loads(record["update-2/update.json"].data)
    manifest["copy_sha256"] = "f" * 64
    data = json.dumps(manifest).encode()
    record["update-2/update.json"] = type(record["update-2/update.json"])(dtype="uint8", shape=(len(data),),
                                                                          stype="mpu.file-bytes/1", data=data)


def not_json(content):
    record = content.array_records[secagg.MANIFESTS]
    record["update-1/update.json"] = type(record["update-1/update.json"])(dtype="uint8", shape=(3,), stype="mpu.file-bytes/1",
                                                                          data=b"{no")


@pytest.mark.parametrize("change, reason", [
    (other_digest, "layout differs"),
    (not_json, "update manifest"),
    (extra_arrays, "carries arrays besides its manifests"),
    (wrong_copy_checksum, "does not name published copy 2"),
])
def test_a_hostile_phase_one_reply_is_refused_before_the_secure_sum(tmp_path, tiny_model_dir, change, reason):
    from mpu.errors import InputError

    server = server_dir(tmp_path / "server", tiny_model_dir)
    handlers = {node: owner_handler(stand_in_unlearn(node, tmp_path / f"kept-{node}")) for node in SIZES}
    handlers[22] = tampered(handlers[22], change)
    grid = secagg.InProcessGrid(handlers)
    run = FlowerRun.from_run_config({"workdir": str(server), "owners": 2, "timeout": 60, "secagg": True})

    with pytest.raises(InputError, match=reason):
        run_rounds(grid, run)
    assert len(grid.received) == 2  # the two phase-1 replies: no SecAgg+ stage was started
    assert Workdir(server).load().current_round == 1


def test_an_owner_that_failed_to_unlearn_stops_the_round_naming_it(tmp_path, tiny_model_dir):
    server = server_dir(tmp_path / "server", tiny_model_dir)

    def broken(msg, context):
        raise MPUError("forget file unreadable")

    grid = secagg.InProcessGrid({11: owner_handler(stand_in_unlearn(11, tmp_path / "kept-11")), 22: broken})
    run = FlowerRun.from_run_config({"workdir": str(server), "owners": 2, "timeout": 60, "secagg": True})

    with pytest.raises(MPUError, match="1 of 2 data owner.*node 22: failed: .*forget file unreadable"):
        run_rounds(grid, run)
    assert Workdir(server).load().current_round == 1
