"""What a new user meets first (issue 19, items 5 and 7): safe defaults, insecure choices announced,
readable output of the server commands, help that keeps its layout, Ctrl-C without a traceback."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from mpu.cli import EXIT_INTERRUPTED, build_parser, main
from mpu.cli.unlearn import count_parameters, learning_rate_hint

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def one_round(tmp_path_factory, tiny_model_dir):
    """A server work directory after one aggregated round, and what aggregate printed."""
    import tests.conftest as conftest

    root = tmp_path_factory.mktemp("round")
    forget = conftest.write_jsonl(root / "forget.jsonl", [{"question": q, "answer": a} for q, a in conftest.FACTS[:4]])
    work, outbox, returns = root / "server", root / "outbox", root / "returns"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(work), "--copies", "2", "--rounds", "2"]) == 0
    assert main(["server", "publish", "--workdir", str(work), "--out", str(outbox)]) == 0
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget), "--method", "GradAscent",
                 "--epochs", "1", "--learning-rate", "1e-3", "--out", str(returns), "--no-progress-bar"]) == 0
    return work, returns


def _subparser(*names: str):
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


# --- 19.7: readable output -------------------------------------------------------------------------

def test_aggregate_labels_every_number(tmp_path, tiny_model_dir, capsys):
    work, outbox, returns = tmp_path / "s", tmp_path / "o", tmp_path / "r"
    forget = tmp_path / "f.jsonl"
    forget.write_text(json.dumps({"question": "Where was Ana Lind born?", "answer": "In Porto Vell."}) + "\n")
    main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(work), "--copies", "2"])
    main(["server", "publish", "--workdir", str(work), "--out", str(outbox)])
    main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget), "--method", "GradAscent", "--epochs", "1",
          "--learning-rate", "1e-3", "--out", str(returns), "--no-progress-bar"])
    capsys.readouterr()
    assert main(["server", "aggregate", "--workdir", str(work), "--returns", str(returns)]) == 0
    out = capsys.readouterr().out
    assert "round 1 aggregated 2 update(s)" in out
    for copy in (1, 2):
        assert re.search(rf"copy {copy}: update norm \|\|Delta'_{copy}\|\| = [0-9.e+-]+", out), out
    assert re.search(r"applied step norm \|\|eta \* Delta\|\| = [0-9.e+-]+", out), out
    # every number printed has a label in front of it (no bare list of norms)
    assert not re.search(r"\(\s*[0-9.]+\s*,", out)


def test_status_is_a_readable_summary_and_json_on_request(tmp_path, tiny_model_dir, capsys):
    work = tmp_path / "s"
    main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(work), "--copies", "2", "--rounds", "3"])
    capsys.readouterr()
    assert main(["server", "status", "--workdir", str(work)]) == 0
    text = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "rounds: 0 of 3 done" in text and "m = 2 copies" in text and "`mpu server publish` for round 1" in text
    assert main(["server", "status", "--workdir", str(work), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["rounds_done"] == 0 and state["rounds"] == 3 and state["copies"] == 2


@pytest.mark.parametrize("command", ["init", "publish", "aggregate", "export", "status"])
def test_server_commands_have_a_description(command, capsys):
    parser = _subparser("server", command)
    assert parser.description and len(parser.description) > 40
    with pytest.raises(SystemExit):
        main(["server", command, "--help"])
    assert parser.description.split()[0] in capsys.readouterr().out


def test_client_unlearn_help_keeps_the_methods_table_lines(capsys):
    from mpu.methods import METHODS

    with pytest.raises(SystemExit):
        main(["client", "unlearn", "--help"])
    lines = capsys.readouterr().out.splitlines()
    starts = {line.split()[0] for line in lines if line.startswith("  ") and line.split()}
    assert set(METHODS.names()) <= starts, "each method starts its own line of the table"
    assert any("(default: 1e-05)" in line or "default: 1e-05" in line for line in lines)   # defaults still shown


def test_progress_bars_are_on_by_default_in_client_unlearn_and_hydra(tmp_path):
    from mpu.experiments import compose_config, settings_from_config
    from mpu.methods import options_from_args

    parser = build_parser()
    args = parser.parse_args(["client", "unlearn", "--inbox", "I", "--forget", "F", "--out", "U", "--method", "NPO"])
    assert options_from_args(args)[2].progress_bar is True
    quiet = parser.parse_args(["client", "unlearn", "--inbox", "I", "--forget", "F", "--out", "U", "--method", "NPO",
                               "--no-progress-bar"])
    assert options_from_args(quiet)[2].progress_bar is False
    settings = settings_from_config(compose_config(["trainer=NPO"])[0])
    assert settings.progress is True and settings.training.progress_bar is True


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    from mpu.server.workdir import Workdir

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Workdir, "load", interrupted)
    code = main(["server", "status", "--workdir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == EXIT_INTERRUPTED == 130
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines == ["mpu server status: interrupted (Ctrl-C)"]
    assert "Traceback" not in captured.err + captured.out


# --- 19.5: safe defaults, insecure choices announced -------------------------------------------------

def test_kappa_zero_is_announced_and_the_defaults_are_quiet(tmp_path, tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="mpu.server.init"):
        assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "a")]) == 0
    assert not [r for r in caplog.records if "insecure" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mpu.server.init"):
        assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "b"), "--kappa", "0"]) == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("kappa = 0" in m and "NO noise" in m for m in messages), messages


def test_the_paper_preset_and_a_fixed_seed_are_announced(tmp_path, tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="mpu.server.init"):
        assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "p"),
                     "--privacy", "paper", "--seed", "3"]) == 0
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "tau = 0" in text and "alphas = public" in text and "fixed seed 3" in text


def test_readme_hydra_command_runs_the_default_privacy_settings():
    from mpu.experiments import compose_config, settings_from_config
    from mpu.server.init import insecure_choices

    command = next(line for line in README.read_text().splitlines() if line.startswith("python src/train.py"))
    overrides = command.split("#")[0].split()[2:]
    settings = settings_from_config(compose_config(overrides)[0])
    assert settings.server is not None and insecure_choices(settings.server) == []
    # the paper's preset is still what the experiments reproduce, and the README says it is weak
    paper = settings_from_config(compose_config(["trainer=NPO"])[0])
    assert insecure_choices(paper.server)
    assert "does **not**" in README.read_text() and "mpu=paper" in README.read_text()


def test_default_learning_rate_on_a_tiny_model_prints_a_hint(tmp_path, tiny_model_dir, forget_file, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert count_parameters(tiny_model_dir) == sum(p.numel() for p in model.parameters())
    assert learning_rate_hint(tiny_model_dir, 1e-3) is None
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "1", "--no-progress-bar", "--out", str(tmp_path / "u")]) == 0
    err = capsys.readouterr().err
    assert "hint: learning rate 1e-05" in err and "--learning-rate" in err
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "1", "--learning-rate", "1e-3", "--no-progress-bar", "--out", str(tmp_path / "v")]) == 0
    assert "hint:" not in capsys.readouterr().err


def _next_publication(one_round, tmp_path):
    """(the next round's outbox, a one-row forget file) after aggregating the first round's returns."""
    work, returns = one_round
    outbox = tmp_path / "outbox"
    forget = tmp_path / "f.jsonl"
    forget.write_text(json.dumps({"question": "Where was Ana Lind born?", "answer": "In Porto Vell."}) + "\n")
    main(["server", "aggregate", "--workdir", str(work), "--returns", str(returns)])
    main(["server", "publish", "--workdir", str(work), "--out", str(outbox)])
    return outbox, forget


def test_client_unlearn_prints_the_hint_for_the_default_learning_rate(one_round, tmp_path, capsys):
    outbox, forget = _next_publication(one_round, tmp_path)
    capsys.readouterr()
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget), "--method", "GradAscent",
                 "--max-steps", "1", "--copy", "1", "--no-progress-bar", "--out", str(tmp_path / "r2")]) == 0
    assert "hint: learning rate 1e-05" in capsys.readouterr().err


def test_the_hint_never_reads_what_verification_did_not_check(one_round, tmp_path, capsys):
    """The hint reads the copy that was verified and trained, not the inbox's other entries (a stray
    copy-0 sorts first), and its reader refuses what the hostile-input reader refuses."""
    import os

    outbox, forget = _next_publication(one_round, tmp_path)
    (outbox / "copy-0").mkdir()
    os.mkfifo(outbox / "copy-0" / "model.safetensors")   # plain open() would wait on it forever
    capsys.readouterr()
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget), "--method", "GradAscent",
                 "--max-steps", "1", "--copy", "1", "--no-progress-bar", "--out", str(tmp_path / "r3")]) == 0
    assert "hint: learning rate 1e-05" in capsys.readouterr().err
    bad = {"huge header": (2**62).to_bytes(8, "little") + b"{}", "nested": b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a":[[[[[[]]]]]]}',
           "string shape": _header({"w": {"dtype": "F32", "shape": "12", "data_offsets": [0, 4]}})}
    for name, raw in bad.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(raw)
        assert count_parameters(folder) is None, name
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "model.safetensors").symlink_to(next(Path(outbox).glob("copy-1/*.safetensors")))
    assert count_parameters(tmp_path / "link") is None


def _header(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + b"\x00" * 4


def test_training_shows_a_bar_with_the_loss_not_a_log_dict_per_step(tmp_path, tiny_model_dir, forget_file, capsys):
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "3", "--learning-rate", "1e-3", "--out", str(tmp_path / "u")]) == 0
    captured = capsys.readouterr()
    assert "3/3" in captured.err and "loss=" in captured.err           # the bar, with the latest loss
    assert "{'loss'" not in captured.out + captured.err                  # no printed log dict per step
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "3", "--learning-rate", "1e-3", "--no-progress-bar", "--out", str(tmp_path / "v")]) == 0
    assert "3/3" not in capsys.readouterr().err


def test_mpu_run_prints_the_hint_for_the_default_learning_rate(tmp_path, tiny_model_dir, forget_file, capsys):
    assert main(["run", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "1", "--copies", "2", "--no-progress-bar", "--out", str(tmp_path / "u")]) == 0
    assert "hint: learning rate 1e-05" in capsys.readouterr().err


def test_an_inbox_changed_after_the_run_costs_the_hint_not_the_updates(one_round, tmp_path, capsys, monkeypatch):
    """The run checks and trains a private copy; the hint reads the inbox again after it. A manifest the
    server rewrote meanwhile leaves the hint out and the run a success."""
    from mpu.client import unlearn

    outbox, forget = _next_publication(one_round, tmp_path)
    real = unlearn.unlearn_publication

    def then_rewrite(inbox, *args, **kwargs):
        results = real(inbox, *args, **kwargs)
        (Path(inbox) / "manifest.json").write_text("{not json")
        return results

    monkeypatch.setattr(unlearn, "unlearn_publication", then_rewrite)
    capsys.readouterr()
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget), "--method", "GradAscent",
                 "--max-steps", "1", "--copy", "1", "--no-progress-bar", "--out", str(tmp_path / "r3")]) == 0
    captured = capsys.readouterr()
    assert "1 update(s) in" in captured.out and "hint:" not in captured.err
    assert (tmp_path / "r3" / "update-1" / "update.json").is_file()


def test_python_dash_m_mpu_is_the_mpu_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mpu", "client", "unlearn", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: mpu client unlearn" in done.stdout and "--inbox" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "mpu", "server", "aggregate"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--workdir" in refused.stderr
