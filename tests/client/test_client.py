"""The client side: it refuses tampered inputs, and its LoRA returns aggregate like merged ones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mpu.checkpoint import CheckpointReader
from mpu.client.inbox import read_publication
from mpu.client.unlearn import unlearn_copies
from mpu.data.qa import load_qa_rows
from mpu.errors import InputError
from mpu.methods import training_options
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish


@pytest.fixture(scope="module")
def outbox(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("client")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, fixed_seed=4), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    return root


def test_a_tampered_copy_is_refused(outbox, tmp_path, forget_file):
    inbox = tmp_path / "inbox"
    shutil.copytree(outbox / "outbox", inbox)
    config = json.loads((inbox / "copy-2" / "config.json").read_text())
    config["rms_norm_eps"] = 0.5
    (inbox / "copy-2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="checksum does not match") as err:
        unlearn_copies(inbox, load_qa_rows(forget_file), None, "GradAscent", {}, training_options({"epochs": 1}), tmp_path / "out", copy_ids=[2])
    assert "copy-2" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "manifest, reason",
    [
        ('{"format": "mpu-publication/1", "round": 1, "copies": [', "truncated or not valid JSON"),
        ('{"format": "something-else"}', "not an mpu publication manifest"),
        ('{"format": "mpu-publication/1", "round": 1, "publication_id": "x", "copies": [{"id": 1, "path": "../../etc", "sha256": "0"}]}', "leaves the inbox"),
        ('{"format": "mpu-publication/1", "round": 1, "copies": [{"id": 1}]}', "malformed publication manifest"),
    ],
)
def test_a_malformed_manifest_is_refused(tmp_path, manifest, reason):
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(InputError, match=reason) as err:
        read_publication(tmp_path)
    assert "manifest.json" in str(err.value)


def test_an_unknown_copy_id_is_refused(outbox):
    with pytest.raises(InputError, match="no copy"):
        read_publication(outbox / "outbox").select([7])


def test_updates_are_float32_deltas_with_a_manifest(outbox, tmp_path, forget_file):
    results = unlearn_copies(outbox / "outbox", load_qa_rows(forget_file), None, "GradAscent", {},
                             training_options({"epochs": 1, "learning_rate": 1e-3}), tmp_path / "returns")
    assert [result.copy_id for result in results] == [1, 2]
    update = CheckpointReader(tmp_path / "returns" / "update-1")
    copy = CheckpointReader(outbox / "outbox" / "copy-1")
    assert update.names() == copy.names()
    assert all(update.dtype(name) == torch.float32 for name in update.names())
    manifest = json.loads((tmp_path / "returns" / "update-1" / "update.json").read_text())
    assert manifest["copy_sha256"] == read_publication(outbox / "outbox").copies[0].sha256
    assert manifest["kind"] == "full" and manifest["method"] == "GradAscent" and manifest["steps"] >= 1
    assert set(manifest["loss"]) == {"first", "last", "min", "mean"}
    # no examples or per-example values leave the client
    assert "question" not in json.dumps(manifest) and "answer" not in json.dumps(manifest)


def test_lora_factors_and_merged_lora_updates_aggregate_to_the_same_model(outbox, tmp_path, forget_file):
    forget = load_qa_rows(forget_file)
    training = training_options({"epochs": 2, "learning_rate": 1e-2, "lora_rank": 4, "seed": 3})
    unlearn_copies(outbox / "outbox", forget, None, "GradAscent", {}, training, tmp_path / "merged")
    unlearn_copies(outbox / "outbox", forget, None, "GradAscent", {}, training, tmp_path / "factors", return_lora=True)
    assert json.loads((tmp_path / "factors" / "update-1" / "update.json").read_text())["kind"] == "lora"
    assert any(name.endswith(".lora_A") for name in CheckpointReader(tmp_path / "factors" / "update-1").names())

    models = {}
    for kind in ("merged", "factors"):
        server = tmp_path / f"server-{kind}"
        shutil.copytree(outbox / "server", server)
        report = aggregate(server, tmp_path / kind, progress=False)
        reader = CheckpointReader(report.model_dir)
        models[kind] = {name: reader.get(name) for name in reader.names()}
    original = CheckpointReader(outbox / "server" / "models" / "round-0")
    moved = [n for n in models["merged"] if not torch.equal(models["merged"][n], original.get(n))]
    assert moved, "LoRA training changed nothing"
    for name in models["merged"]:
        assert torch.allclose(models["merged"][name], models["factors"][name], atol=1e-6), name


def test_each_copy_and_each_round_trains_with_its_own_data_seed(tmp_path, tiny_model_dir, forget_file, monkeypatch):
    import mpu.client.unlearn as client_unlearn

    seeds = []
    real_run = client_unlearn.UnlearnJob.run
    monkeypatch.setattr(client_unlearn.UnlearnJob, "run",
                        lambda job, *args, **kwargs: seeds.append(job.training.seed) or real_run(job, *args, **kwargs))
    init_server(tmp_path / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=2, fixed_seed=4), progress=False)
    training = training_options({"epochs": 1, "learning_rate": 1e-4, "seed": 7})
    for round_number in (1, 2):
        outbox, returns = tmp_path / f"outbox-{round_number}", tmp_path / f"returns-{round_number}"
        publish(tmp_path / "server", outbox, progress=False)
        unlearn_copies(outbox, load_qa_rows(forget_file), None, "GradAscent", {}, training, returns)
        aggregate(tmp_path / "server", returns, progress=False)
    # round 1: seed + copy id, as a single-round run always had; round 2 does not replay round 1's batches
    assert seeds == [8, 9, 1008, 1009]
