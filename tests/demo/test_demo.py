"""The demo pipeline end to end at a reduced size (issue 5): every summary key is produced."""

import json

from mpu.cli import main
from mpu.demo import COLUMNS


def test_demo_runs_end_to_end_and_writes_every_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"

    code = main(["demo", "--out", str(out), "--authors", "20", "--finetune-epochs", "3", "--epochs", "1", "--copies", "2"])

    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"target", "retain", "noise-free", "MPU"}
    for name, values in summary["models"].items():
        assert set(values) == set(COLUMNS)
        assert values["model_utility"] is not None and 0 <= values["model_utility"] <= 1, name
    assert summary["models"]["retain"]["forget_quality"] == 1.0
    assert summary["seconds"]["total"] > 0
    assert (out / "report.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "MPU model utility" in printed and "forget_quality" in printed
