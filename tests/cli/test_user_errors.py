"""Mistakes a new user makes get the message that names the real problem (found by a fresh-eyes review)."""

from __future__ import annotations

import json

from mpu.cli import main


def test_aggregating_again_says_the_round_is_done_not_unpublished(tmp_path, tiny_model_dir, forget_file, capsys):
    server, outbox, returns = tmp_path / "s", tmp_path / "o", tmp_path / "r"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--copies", "2", "--rounds", "2", "--seed", "1",
                 "--workdir", str(server)]) == 0
    assert main(["server", "publish", "--workdir", str(server), "--out", str(outbox)]) == 0
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "1", "--learning-rate", "1e-3", "--out", str(returns)]) == 0
    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns)]) == 0
    capsys.readouterr()
    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns)]) == 2
    assert "round 1 is already aggregated" in capsys.readouterr().err

    # status shows the rule but not the weights: harmonic weights give the ratios of the secret alphas
    assert main(["server", "status", "--workdir", str(server), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["history"] and all("weights" not in entry.get("combine", {}) for entry in status["history"])
    assert "weights" in json.dumps(json.loads((server / "state.json").read_text())["history"])


def test_eval_of_a_folder_that_is_not_a_model_says_so(tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "notes.txt").write_text("hello")
    assert main(["eval", "--model", str(tmp_path / "notamodel"), "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "not a model directory (no config.json)" in capsys.readouterr().err


def test_a_missing_model_path_is_called_missing(tmp_path, capsys):
    assert main(["server", "init", "--model", str(tmp_path / "nope"), "--workdir", str(tmp_path / "s")]) == 2
    assert "no such model directory" in capsys.readouterr().err
