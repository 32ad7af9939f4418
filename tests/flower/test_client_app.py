"""The ClientApp's work on one message, in-process: the owner's files from its node config, the
publication checked and unlearned as by `mpu client unlearn`, round 1's copies kept as reference."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, RecordDict

from mpu.errors import InputError, MPUError
from mpu.flower.client_app import unlearn_message
from mpu.flower.files import folder_to_record, record_to_folder
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish

JOB = ConfigRecord({"method": "GradAscent", "hparams": "{}", "training": json.dumps({"epochs": 1, "learning_rate": 1e-3})})


def message(outbox) -> RecordDict:
    return RecordDict({"publication": folder_to_record(outbox), "job": JOB})


def update_manifest(reply: RecordDict, copy: int) -> dict:
    return json.loads(reply.array_records["returns"][f"update-{copy}/update.json"].data)


def test_round_one_copies_are_the_reference_of_round_two_with_a_state_dir(tmp_path, tiny_model_dir, forget_file):
    server = tmp_path / "server"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=2, fixed_seed=3), progress=False)
    (tmp_path / "state").mkdir()
    node = {"forget": str(forget_file), "state-dir": str(tmp_path / "state")}

    publish(server, tmp_path / "outbox-1", progress=False)
    first = unlearn_message(message(tmp_path / "outbox-1"), node, run_id=7)
    aggregate(server, record_to_folder(first.array_records["returns"], tmp_path / "returns-1"), progress=False)
    publish(server, tmp_path / "outbox-2", progress=False)
    second = unlearn_message(message(tmp_path / "outbox-2"), node, run_id=7)
    without_state = unlearn_message(message(tmp_path / "outbox-2"), {"forget": str(forget_file)}, run_id=7)

    assert first.config_records["owner"]["forget_rows"] == 3 and first.config_records["owner"]["steps"] > 0
    assert {key.split("/")[0] for key in first.array_records["returns"]} == {"update-1", "update-2"}
    assert {"update-1/update.json", "update-2/update.json"} <= set(first.array_records["returns"])
    assert update_manifest(first, 1)["reference_round"] == 1
    assert update_manifest(second, 1)["round"] == 2 and update_manifest(second, 1)["reference_round"] == 1
    assert update_manifest(without_state, 1)["reference_round"] == 2
    assert (tmp_path / "state" / "run-7" / "reference" / "manifest.json").read_bytes() == (tmp_path / "outbox-1" / "manifest.json").read_bytes()


@pytest.mark.parametrize("node, error, reason", [
    ({}, MPUError, "forget is required"),
    ({"forget": "forget.jsonl"}, MPUError, "must be an absolute path"),
    ({"forget": "/nowhere/forget.jsonl"}, InputError, "not found"),
])
def test_a_node_config_without_a_usable_forget_file_is_refused(tmp_path, node, error, reason):
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "manifest.json").write_text("{}")
    with pytest.raises(error, match=reason):
        unlearn_message(message(tmp_path / "outbox"), node)


def test_a_simulated_supernode_takes_its_files_from_the_run_config_by_partition():
    from mpu.flower.client_app import owner_node_config

    run_config = {"simulation-forget": "/a/f1.jsonl, /b/f2.jsonl", "simulation-retain": "/a/r1.jsonl,/b/r2.jsonl"}

    second = owner_node_config({"partition-id": 1, "num-partitions": 2}, run_config)

    assert (second["forget"], second["retain"]) == ("/b/f2.jsonl", "/b/r2.jsonl")
    assert owner_node_config({"partition-id": 0, "num-partitions": 2}, {"simulation-forget": "/a/f1.jsonl"}) == {
        "partition-id": 0, "num-partitions": 2, "forget": "/a/f1.jsonl"}
    real_node = {"forget": "/own/forget.jsonl", "partition-id": 1}
    assert owner_node_config(real_node, run_config) == real_node  # a real SuperNode's own config wins
    with pytest.raises(MPUError, match="none for simulated SuperNode 2"):
        owner_node_config({"partition-id": 2, "num-partitions": 3}, run_config)


def dp_job(**training) -> RecordDict:
    return ConfigRecord({"method": "GradAscent", "hparams": "{}",
                         "training": json.dumps({"epochs": 1, "learning_rate": 1e-3, **training})})


def test_an_owner_with_a_dp_floor_applies_it_refuses_it_or_refuses_to_reply(tmp_path, tiny_model_dir, forget_file):
    # arrange: one published round; an owner whose node config asks for epsilon <= 8 per round
    server = tmp_path / "server"
    init_server(server, str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=1, fixed_seed=3), progress=False)
    publish(server, tmp_path / "outbox", progress=False)
    publication = folder_to_record(tmp_path / "outbox")
    floor = {"forget": str(forget_file), "dp-epsilon": 8.0}

    def ask(job, node):
        return unlearn_message(RecordDict({"publication": publication, "job": job}), node)

    # act
    applied = ask(dp_job(), floor)                       # the job has no DP: the owner's floor is applied
    stricter = ask(dp_job(dp_epsilon=4.0), floor)        # the job asks for more than the floor: kept
    with pytest.raises(MPUError, match="requires DP-SGD with epsilon <= 8.*asks for no DP-SGD"):
        ask(dp_job(), {**floor, "dp-enforce": "refuse"})
    with pytest.raises(MPUError, match="weaker than this owner's floor"):  # sigma 0.3 over 2 copies: epsilon far above 8
        ask(dp_job(dp_noise_multiplier=0.3), floor)

    # assert: each returned manifest records the guarantee it was trained with
    for reply, target in ((applied, 8.0), (stricter, 4.0)):
        for copy in (1, 2):
            dp = update_manifest(reply, copy)["dp"]
            assert dp["target_epsilon"] == target and 0 < dp["epsilon"] <= target and dp["runs"] == 2
            assert update_manifest(reply, copy)["training"]["dp_epsilon"] == target
        assert 0 < reply.config_records["owner"]["dp_epsilon"] <= target


@pytest.mark.parametrize("node, reason", [
    ({"dp-epsilon": 0}, "dp-epsilon must be finite and > 0"),
    ({"dp-epsilon": 1, "dp-delta": 2}, r"dp-delta must be in \(0, 1\)"),
    ({"dp-epsilon": 1, "dp-enforce": "maybe"}, "dp-enforce must be apply or refuse"),
])
def test_an_invalid_dp_floor_is_refused(node, reason):
    from mpu.flower.client_app import PrivacyFloor

    with pytest.raises(MPUError, match=reason):
        PrivacyFloor.from_node_config(node)
