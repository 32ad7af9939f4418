"""`mpu client unlearn --dp-epsilon`: the update manifest states the guarantee for the whole round."""

from __future__ import annotations

import json

from mpu.cli import main
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish


def test_the_manifest_records_the_rounds_guarantee_and_no_data(tmp_path, tiny_model_dir, forget_file):
    init_server(tmp_path / "server", str(tiny_model_dir), None, ServerConfig(copies=3, kappa=0.05, fixed_seed=4), progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    code = main(["client", "unlearn", "--inbox", str(tmp_path / "outbox"), "--forget", str(forget_file), "--method", "GradAscent",
                 "--epochs", "1", "--learning-rate", "1e-3", "--dp-epsilon", "4", "--dp-delta", "1e-3", "--copy", "2",
                 "--out", str(tmp_path / "returns")])
    assert code == 0
    manifest = json.loads((tmp_path / "returns" / "update-2" / "update.json").read_text())
    dp = manifest["dp"]
    assert dp["runs"] == 3 and dp["target_epsilon"] == 4.0 and 3.5 < dp["epsilon"] <= 4.004 and dp["delta"] == 1e-3
    assert set(dp) == {"epsilon", "epsilon_one_copy", "runs", "delta", "clip_norm", "noise_multiplier", "sample_rate",
                       "steps", "target_epsilon", "accountant"}
    assert manifest["training"]["dp_epsilon"] == 4.0


def test_the_server_aggregates_private_returns_and_states_the_guarantee(tmp_path, tiny_model_dir, forget_file, capsys):
    init_server(tmp_path / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, fixed_seed=4), progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    assert main(["client", "unlearn", "--inbox", str(tmp_path / "outbox"), "--forget", str(forget_file), "--method", "NPO",
                 "--max-steps", "1", "--learning-rate", "1e-3", "--dp-epsilon", "8", "--dp-delta", "1e-3",
                 "--out", str(tmp_path / "returns")]) == 0
    capsys.readouterr()
    assert main(["server", "aggregate", "--workdir", str(tmp_path / "server"), "--returns", str(tmp_path / "returns")]) == 0
    out = capsys.readouterr().out
    assert "client differential privacy: epsilon" in out and "for the 2 copies together" in out
