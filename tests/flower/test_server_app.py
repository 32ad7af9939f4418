"""The ServerApp's run config: what it refuses before any round starts."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.errors import MPUError
from mpu.flower.server_app import FlowerRun


def test_a_complete_run_config_is_read_with_its_types(tmp_path):
    run = FlowerRun.from_run_config({"workdir": str(tmp_path / "s"), "out": str(tmp_path / "m"), "owners": 2, "timeout": 5,
                                     "keep-exchange": True, "method": "NPO", "training": '{"epochs": 1}'})
    assert (run.workdir, run.out, run.owners, run.timeout, run.keep_exchange) == (tmp_path / "s", tmp_path / "m", 2, 5.0, True)
    assert run.exchange is None
    assert dict(run.job()) == {"method": "NPO", "hparams": "{}", "training": '{"epochs": 1}'}


@pytest.mark.parametrize("config, reason", [
    ({}, "workdir is required"),
    ({"workdir": "relative/server"}, "must be an absolute path"),
    ({"workdir": "/s", "out": "model"}, "must be an absolute path"),
    ({"workdir": "/s", "owners": 0}, "owners must be >= 1"),
    ({"workdir": "/s", "timeout": 0}, "timeout must be > 0"),
    ({"workdir": "/s", "training": "{epochs: 1}"}, "training is not JSON"),
    ({"workdir": "/s", "hparams": "[1]"}, "hparams must be a JSON object"),
])
def test_an_invalid_run_config_is_refused_naming_the_key(config, reason):
    with pytest.raises(MPUError, match=reason):
        FlowerRun.from_run_config(config)


def test_an_owner_may_return_at_most_m_float32_updates_of_the_model(tmp_path, tiny_model_dir):
    from mpu.checkpoint import CheckpointReader
    from mpu.flower.server_app import returns_limit
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server

    init_server(tmp_path / "server", str(tiny_model_dir), None, ServerConfig(copies=3), progress=False)
    model = CheckpointReader(tiny_model_dir)
    elements = sum(torch.Size(model.shape(name)).numel() for name in model.names())
    assert returns_limit(tmp_path / "server") == 3 * (4 * elements + 2**20)


def reply(files: dict[str, bytes], forget_rows):
    """A stand-in for an owner's reply Message (a real one needs a run): its content and no error."""
    from types import SimpleNamespace

    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    from mpu.flower.files import FILE_STYPE

    returns = ArrayRecord({key: Array(dtype="uint8", shape=(len(data),), stype=FILE_STYPE, data=data) for key, data in files.items()})
    content = RecordDict({"returns": returns, "owner": ConfigRecord({"forget_rows": forget_rows})})
    return SimpleNamespace(has_error=lambda: False, content=content)


def test_an_owner_reply_is_written_as_a_returns_folder_within_its_limits(tmp_path):
    from mpu.errors import InputError
    from mpu.flower.server_app import _owner_returns

    folder, size = _owner_returns(reply({"update-1/update.json": b"{}"}, 4), 9, tmp_path / "ok", max_bytes=2)
    assert size == 4 and (folder / "update-1" / "update.json").read_bytes() == b"{}"
    with pytest.raises(InputError, match="more than 2 bytes"):
        _owner_returns(reply({"update-1/update.json": b"{ }"}, 4), 9, tmp_path / "big", max_bytes=2)
    with pytest.raises(InputError, match="forget_rows must be a positive integer"):
        _owner_returns(reply({"update-1/update.json": b"{}"}, 0), 9, tmp_path / "zero", max_bytes=2)
    with pytest.raises(MPUError, match="did not reply"):
        _owner_returns(None, 9, tmp_path / "none", max_bytes=2)
    assert not any((tmp_path / name).exists() for name in ("big", "zero", "none"))


@pytest.fixture(autouse=True)
def flower_run_id(monkeypatch):
    """Flower builds a Message only inside a run (the ServerApp process sets the run id): set one."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class StandInGrid:
    """A Grid without Flower processes: node ``n``'s owner writes a stand-in update (scale n) of every
    copy it receives; nodes in ``silent`` never reply (as after a timeout), those in ``failing`` reply
    with an error. ``sizes[n]`` is the forget-set size node n reports."""

    def __init__(self, root, nodes=(1, 2), silent=(), failing=(), sizes=None):
        self.root, self.nodes, self.silent, self.failing = root, list(nodes), set(silent), set(failing)
        self.sizes = sizes or {node: 1 for node in nodes}
        self.sent = 0

    def get_node_ids(self):
        return self.nodes

    def send_and_receive(self, messages, timeout):
        from types import SimpleNamespace

        from flwr.app import ConfigRecord, RecordDict

        from mpu.flower.files import folder_to_record, record_to_folder
        from tests.server.stand_in_client import write_returns

        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.sent += 1
            if node in self.silent:
                continue
            meta = SimpleNamespace(src_node_id=node)
            if node in self.failing:
                replies.append(SimpleNamespace(metadata=meta, has_error=lambda: True, error=SimpleNamespace(reason="refused the job")))
                continue
            where = self.root / f"node-{node}-{self.sent}"
            inbox = record_to_folder(message.content.array_records["publication"], where / "inbox")
            write_returns(inbox, where / "returns", lambda name, weights, scale=node: scale * 1e-3 * torch.sin(weights))
            content = RecordDict({"returns": folder_to_record(where / "returns"),
                                  "owner": ConfigRecord({"forget_rows": self.sizes[node], "steps": 1})})
            replies.append(SimpleNamespace(metadata=meta, has_error=lambda: False, content=content))
        return replies


def flower_run(tmp_path, model_dir, name, **run_config):
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server

    server = tmp_path / name
    init_server(server, str(model_dir), None, ServerConfig(copies=3, kappa=0.05, rounds=1, fixed_seed=11, independent_noise=1.0),
                progress=False)
    return FlowerRun.from_run_config({"workdir": str(server), "timeout": 5, "device": "cpu", **run_config})


def test_the_round_object_combines_with_the_rule_of_the_run_config(tmp_path, tiny_model_dir):
    from mpu.server.combine import harmonic_weights, optimal_weights
    from mpu.server.noise import alphas_for_round
    from mpu.server.workdir import Workdir
    from mpu.flower.server_app import run_rounds

    default, chosen = flower_run(tmp_path, tiny_model_dir, "a"), flower_run(tmp_path, tiny_model_dir, "b", combine="variance-optimal")

    run_rounds(StandInGrid(tmp_path / "grid-a", nodes=[1]), default)
    run_rounds(StandInGrid(tmp_path / "grid-b", nodes=[1]), chosen)

    work = Workdir(chosen.workdir)
    state = work.load()
    alphas = alphas_for_round(state.config, work.round_secret(1, state.config.fixed_seed, create=False))
    assert default.combine == "harmonic" and Workdir(default.workdir).load().history[-1]["combine"]["rule"] == "harmonic"
    assert list(Workdir(default.workdir).load().history[-1]["combine"]["weights"].values()) == pytest.approx(harmonic_weights(alphas))
    assert state.rounds_done == 1 and state.history[-1]["combine"]["rule"] == "variance-optimal"
    weights = list(state.history[-1]["combine"]["weights"].values())
    assert weights == pytest.approx(optimal_weights(alphas, 1.0))
    assert weights != pytest.approx(harmonic_weights(alphas))


def test_an_unknown_combination_rule_is_refused_before_any_round(tmp_path):
    with pytest.raises(MPUError, match="harmonic"):
        FlowerRun.from_run_config({"workdir": str(tmp_path), "combine": "median"})
    with pytest.raises(MPUError, match="min-owners must be between 1 and owners = 2"):
        FlowerRun.from_run_config({"workdir": str(tmp_path), "owners": 2, "min-owners": 3})


def test_a_round_goes_on_without_a_dropped_owner_when_enough_replied(tmp_path, tiny_model_dir):
    from mpu.flower.server_app import run_rounds
    from mpu.server.workdir import Workdir

    run = flower_run(tmp_path, tiny_model_dir, "server", owners=3, **{"min-owners": 2, "keep-exchange": True,
                                                                      "exchange": str(tmp_path / "exchange")})

    run_rounds(StandInGrid(tmp_path / "grid", nodes=[1, 2, 3], silent=[3], sizes={1: 1, 2: 3, 3: 1}), run)

    assert Workdir(run.workdir).load().rounds_done == 1
    owners = json.loads((tmp_path / "exchange" / "round-1" / "returns" / "owners.json").read_text())["owners"]
    assert [(owner["forget_rows"], owner["weight"]) for owner in owners] == [(1, 0.25), (3, 0.75)]


@pytest.mark.parametrize("silent, failing", [([2], []), ([], [2])])
def test_too_few_replies_fail_the_round_with_the_model_untouched(tmp_path, tiny_model_dir, silent, failing):
    from mpu.flower.server_app import run_rounds
    from tests.conftest import tree_snapshot

    run = flower_run(tmp_path, tiny_model_dir, "server", owners=2, out=str(tmp_path / "model"))
    models = tree_snapshot(run.workdir / "models")

    with pytest.raises(MPUError, match=r"1 of 2 data owner\(s\) replied, at least 2 needed.*node 2"):
        run_rounds(StandInGrid(tmp_path / "grid", nodes=[1, 2], silent=silent, failing=failing), run)

    from mpu.server.workdir import Workdir
    state = Workdir(run.workdir).load()
    assert state.rounds_done == 0 and state.history == [] and tree_snapshot(run.workdir / "models") == models
    assert not (tmp_path / "model").exists()
