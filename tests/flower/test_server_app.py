"""The ServerApp's run config: what it refuses before any round starts."""

from __future__ import annotations

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
