"""What a new user trips over when following the README (a fresh-eyes walk through every command):
one name for the progress flag, help that says "required" and never "(default: None)", no
transformers bars where mpu reports the step, one line per trained copy, hints only after a
successful run, and a CSV in the wrong dialect named as such."""

from __future__ import annotations

import argparse
import re

import pytest

import tests.conftest as conftest
from mpu.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every subcommand under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subparsers(sub, path + (name,))


@pytest.fixture(scope="module")
def outbox(tmp_path_factory, tiny_model_dir):
    """A published round of two copies of the tiny model."""
    root = tmp_path_factory.mktemp("newcomer")
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(root / "s"), "--copies", "2"]) == 0
    assert main(["server", "publish", "--workdir", str(root / "s"), "--out", str(root / "o")]) == 0
    return root / "o"


# --- one progress flag -------------------------------------------------------------------------------

def test_no_progress_bar_is_the_flag_everywhere_and_no_progress_its_alias(capsys):
    from mpu.methods import options_from_args

    parser = build_parser()
    for flag in ("--no-progress-bar", "--no-progress"):
        args = parser.parse_args(["eval", "--model", "M", "--out", "E", flag])
        assert args.no_progress is True
        args = parser.parse_args(["client", "unlearn", "--inbox", "I", "--forget", "F", "--out", "U", "--method", "NPO", flag])
        assert options_from_args(args)[2].progress_bar is False
        args = parser.parse_args(["unlearn", "--model", "M", "--forget", "F", "--out", "U", "--method", "NPO", flag])
        assert options_from_args(args)[2].progress_bar is False
    assert parser.parse_args(["eval", "--model", "M", "--out", "E"]).no_progress is False
    for command in (["eval"], ["client", "unlearn"], ["unlearn"], ["run"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        # both names listed, the short one as a real alias (argparse's prefix matching would break once
        # another --no-progress... flag exists)
        assert "--no-progress-bar" in text and re.search(r"--no-progress(?![-\w])", text), command


# --- help text ---------------------------------------------------------------------------------------

def test_no_help_says_default_none_and_required_flags_say_required():
    for path, parser in _subparsers(build_parser()):
        text = parser.format_help()
        assert "(default: None)" not in text and "default: (required)" not in text, path
        for action in parser._actions:
            if action.required and action.option_strings:
                line = text[text.index("\n  " + action.option_strings[0]) + 1:]
                entry = line.split("\n  -")[0]   # this flag's help, up to the next flag
                assert "(required)" in entry, (path, action.option_strings)


def test_real_defaults_are_still_shown(capsys):
    with pytest.raises(SystemExit):
        main(["client", "unlearn", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1e-05)" in text and "(default: every copy)" in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: first)" in text and "(default: task-vector)" in text


# --- quiet loading, one line per copy, hints after success --------------------------------------------

def _sig_digits(number: str) -> int:
    mantissa = number.lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0")
    return len(mantissa)


def test_client_unlearn_reports_each_copy_once_without_transformers_bars(outbox, tmp_path, capsys, caplog):
    from transformers.utils import logging as hf_logging

    caplog.set_level("INFO")
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(conftest.write_jsonl(
        tmp_path / "f.jsonl", [{"question": q, "answer": a} for q, a in conftest.FACTS[:4]])),
        "--method", "NPO", "--epochs", "1", "--learning-rate", "1e-3", "--out", str(tmp_path / "u"), "--no-progress-bar"]) == 0
    captured = capsys.readouterr()
    text = "\n".join([captured.out, captured.err, *caplog.messages])
    assert "Loading weights" not in text and "Writing model shards" not in text
    assert hf_logging.is_progress_bar_enabled()   # put back afterwards
    for copy in (1, 2):
        lines = [line for line in text.splitlines() if f"copy {copy}:" in line]
        assert len(lines) == 1, lines
        first, last = re.search(r"loss (\S+) -> (\S+);", lines[0]).groups()
        assert 1 <= _sig_digits(first) <= 4 and 1 <= _sig_digits(last) <= 4, lines[0]
    assert sum("no retain set" in message for message in caplog.messages) == 1   # a job warning once, not per copy
    assert "2 update(s) in" in captured.out


def test_mpu_unlearn_shows_no_transformers_bars(tiny_model_dir, forget_file, tmp_path, capsys):
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "1", "--learning-rate", "1e-3", "--no-progress-bar", "--out", str(tmp_path / "u")]) == 0
    captured = capsys.readouterr()
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err


def test_the_learning_rate_hint_does_not_come_with_an_unrelated_error(outbox, tiny_model_dir, forget_file, tmp_path, capsys):
    # mpu unlearn: a method that needs a retain set, at the default learning rate
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradDiff",
                 "--max-steps", "1", "--no-progress-bar", "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert "needs retain data" in err and "hint:" not in err
    # mpu client unlearn: an --out that already holds updates
    returns = tmp_path / "r"
    (returns / "update-1").mkdir(parents=True)
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "1", "--copy", "1", "--no-progress-bar", "--out", str(returns)]) == 2
    err = capsys.readouterr().err
    assert "already holds" in err and "hint:" not in err
    # and after a successful run it is there
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget_file), "--method", "GradAscent",
                 "--max-steps", "1", "--copy", "1", "--no-progress-bar", "--out", str(tmp_path / "ok")]) == 0
    assert "hint: learning rate 1e-05" in capsys.readouterr().err


# --- data files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_with_another_separator_is_named_with_the_fix(separator, tiny_model_dir, tmp_path, capsys):
    forget = tmp_path / "forget.csv"
    forget.write_text(f"question{separator}answer\nWhere was Ana Lind born?{separator}In Porto Vell.\n")
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--method", "GradAscent",
                 "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert str(forget) in err and f"separated by {separator!r}" in err and "','" in err
    assert not (tmp_path / "u").exists()


# --- typos and wrong paths ---------------------------------------------------------------------------

def test_a_mistyped_command_or_flag_gets_the_closest_name_and_the_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sever", "init"])
    assert exit_info.value.code == 2 and "did you mean 'server'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["server", "innit"])
    assert "mpu server: error: unknown command 'innit'; did you mean 'init'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["server", "init", "--model", "M", "--workdir", "S", "--copy", "3"])
    err = capsys.readouterr().err
    assert "mpu server init: error: unrecognized arguments: --copy 3; did you mean --copies?" in err
    assert "usage: mpu server init" in err   # the subcommand's usage, not the top-level one
    with pytest.raises(SystemExit):
        main(["client", "unlearn", "--inbox", "I", "--forget", "F", "--out", "U", "--metod", "NPO"])
    assert "did you mean --method?" in capsys.readouterr().err


@pytest.mark.parametrize("argv, typo, meant", [
    (["client", "unlearn", "--inbx", "I", "--forget", "F", "--out", "U", "--method", "NPO"], "--inbx", "--inbox"),
    (["server", "init", "--modle", "M", "--workdir", "S"], "--modle", "--model"),
    (["server", "publish", "--workdir", "S", "--out=O", "--ot", "P"], "--ot", "--out"),
    (["eval", "--model", "M", "--outt", "E"], "--outt", "--out"),
    (["audit", "--inbox=I", "--out-file", "A"], "--out-file", "--out"),
])
def test_a_mistyped_required_flag_is_named_with_the_flag_it_resembles_not_reported_missing(argv, typo, meant, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"unrecognized arguments: {typo}" in err and f"did you mean {meant}?" in err
    assert "are required" not in err


def test_a_missing_required_flag_is_still_reported_and_marked_in_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["client", "unlearn", "--forget", "F", "--method", "NPO"])
    assert exit_info.value.code == 2
    assert "mpu client unlearn: error: the following arguments are required: --inbox, --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["client", "unlearn", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(required, unless --config gives 'method:')" in shown and "--inbox INBOX" in shown
    for argv in (["eval", "--help"], ["eval", "--benchmark", "foo"]):   # help and argparse's own errors, through main
        with pytest.raises(SystemExit):
            main(argv)
        captured = capsys.readouterr()
        usage = " ".join((captured.out + captured.err).split())
        assert "usage: mpu eval [-h] --model MODEL" in usage and "[--model MODEL]" not in usage, usage
    assert "--out OUT" in usage and "[--out OUT]" not in usage and "invalid choice: 'foo'" in usage


def test_errors_name_the_whole_subcommand(tmp_path, capsys):
    assert main(["server", "status", "--workdir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("mpu server status: error: ")


def test_a_wrong_inbox_says_which_folder_to_pass(outbox, forget_file, tmp_path, capsys):
    def unlearn(inbox) -> str:
        assert main(["client", "unlearn", "--inbox", str(inbox), "--forget", str(forget_file), "--method", "NPO",
                     "--out", str(tmp_path / "u")]) == 2
        return capsys.readouterr().err

    err = unlearn(tmp_path / "typo")
    assert "no such folder" in err and "mpu server publish --out" in err
    workdir = outbox.parent / "s"
    assert "the server's work directory" in unlearn(workdir)
    err = unlearn(outbox / "copy-1")
    assert "one copy of a publication" in err and str(outbox) in err
    assert not (tmp_path / "u").exists()


def test_a_wrong_model_says_what_to_pass(outbox, tiny_model_dir, forget_file, tmp_path, capsys):
    def unlearn(model) -> str:
        assert main(["unlearn", "--model", str(model), "--forget", str(forget_file), "--method", "GradAscent",
                     "--out", str(tmp_path / "u")]) == 2
        return capsys.readouterr().err

    assert "hf download org/model --local-dir DIR" in unlearn("org/model")
    assert "a file; pass the model's folder" in unlearn(tiny_model_dir / "config.json")
    err = unlearn(outbox)
    assert "mpu client unlearn --inbox" in err and err.count("\n") == 1   # the message alone, nothing before it


def test_eval_checks_the_model_and_the_split_before_announcing_data(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tmp_path / "typo"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "no such model directory" in err and "data:" not in err
    assert main(["eval", "--model", str(tiny_model_dir), "--forget-split", "forget11", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "did you mean forget10?" in err and "data:" not in err


def test_report_on_a_folder_without_runs_says_what_it_reads(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "python src/train.py" in capsys.readouterr().err


# --- the README matches the code -----------------------------------------------------------------------

def test_every_flag_the_readme_shows_exists():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    parser = build_parser()
    checked = 0
    for line in readme.splitlines():
        line = line.split("#")[0].strip().lstrip("`").split("`")[0]   # a command, or one quoted in prose
        if not line.startswith("mpu ") or "--" not in line:
            continue
        _, handler = __import__("mpu.cli", fromlist=["_subcommand"])._subcommand(parser, line.split()[1:])
        handler.format_help()   # populates the method flags
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
            assert flag in handler._option_string_actions, (flag, line)
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("command", ["eval", "audit", "finetune", "data"])
def test_an_output_under_a_file_is_refused_before_the_work(tmp_path, tiny_model_dir, capsys, monkeypatch, command):
    # arrange: eval, audit, finetune and data build wrote their output after all the work, and then
    # failed with NotADirectoryError (a traceback)
    import mpu.cli.audit as audit_cli

    monkeypatch.setattr("mpu.eval.evaluator.model_data", lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    monkeypatch.setattr(audit_cli, "apply_threads", lambda *a, **k: pytest.fail("attacked before --out was checked"))
    (tmp_path / "file.txt").write_text("x")
    out = str(tmp_path / "file.txt" / "results")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "manifest.json").write_text("{}")
    monkeypatch.setattr("mpu.experiments.finetune.finetune", lambda *a, **k: pytest.fail("trained before --out was checked"))
    monkeypatch.setattr("mpu.data.builtin.build_benchmark", lambda *a, **k: pytest.fail("built before --out was checked"))
    argv = {"eval": ["eval", "--model", str(tiny_model_dir), "--out", out],
            "audit": ["audit", "--inbox", str(inbox), "--out", out],
            "finetune": ["finetune", "--split", "full", "--out", out],
            "data": ["data", "build", "--out", out]}[command]

    # act
    code = main(argv)

    # assert
    err = capsys.readouterr().err
    assert code == 2 and f"the file {(tmp_path / 'file.txt').resolve()}" in err and "Traceback" not in err
