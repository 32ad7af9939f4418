"""What a model owner new to mpu trips over in ``mpu server ...`` (a fresh-eyes walk through its help and
errors): the client commands' progress flag on every server subcommand, help that says what leaving a
flag out means, --model/--base/--workdir checked before anything is written with the flag named and the
fix said, a method's foreign hyperparameter named with the methods that take it, and ``mpu audit``'s
--inbox checked as the client's is."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

import pytest

from mpu.cli import build_parser, main
from mpu.reparam import ReparamConfig
from mpu.server.config import PRESETS, ServerConfig

SERVER_COMMANDS = ("init", "publish", "aggregate", "export", "status")


def _sub(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _entry(help_text: str, flag: str) -> str:
    """The help of ``flag`` in ``help_text`` (from its line up to the next flag), whitespace collapsed."""
    match = re.search(rf"\n  {re.escape(flag)}[ ,\n]", help_text)
    assert match, flag
    rest = help_text[match.start() + 1:]
    return " ".join(re.split(r"\n  -|\n\n", rest)[0].split())


def _tree(path) -> dict:
    """Every file under ``path`` with its bytes (to show a refused command left it unchanged)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- --no-progress-bar -------------------------------------------------------------------------------

def test_every_server_subcommand_takes_no_progress_bar_and_its_alias():
    required = {"init": ["--model", "M", "--workdir", "W"], "publish": ["--workdir", "W", "--out", "O"],
                "aggregate": ["--workdir", "W", "--returns", "R"], "export": ["--workdir", "W", "--out", "O"],
                "status": ["--workdir", "W"]}
    assert set(required) == set(SERVER_COMMANDS)
    parser = build_parser()
    for command, argv in required.items():
        assert parser.parse_args(["server", command, *argv]).no_progress is False
        for flag in ("--no-progress-bar", "--no-progress"):
            assert parser.parse_args(["server", command, *argv, flag]).no_progress is True, (command, flag)
        text = _sub("server", command).format_help()
        assert "--no-progress-bar" in text and re.search(r"--no-progress(?![-\w])", text), command


@pytest.mark.parametrize("flag", [None, "--no-progress-bar", "--no-progress"])
def test_the_progress_flag_reaches_every_step_that_draws_bars(flag, monkeypatch, tmp_path, tiny_model_dir):
    import mpu.server.aggregate
    import mpu.server.export
    import mpu.server.init
    import mpu.server.publish

    seen = {}

    def spy(name, result):
        def call(*args, progress=True, **kwargs):
            seen[name] = progress
            return result
        return call

    class Report:   # just what the handlers print
        round, rounds, copies, out_dir, transforms, blocks, warnings = 1, 1, [], "O", [], [], []
        update_norms, max_block_ratio, weights, mixed, bound, step_norm, combine, model_dir = {}, {}, {}, [], 0.5, 0.0, "harmonic", "M"
        combined = {"copies": [], "method": "NPO", "kind": "full", "steps": 1, "dp": {}}

    class State:
        model_type, config = "llama", ServerConfig()

    monkeypatch.setattr(mpu.server.init, "init_server", spy("init", State()))
    monkeypatch.setattr(mpu.server.publish, "publish", spy("publish", Report()))
    monkeypatch.setattr(mpu.server.aggregate, "aggregate", spy("aggregate", Report()))
    monkeypatch.setattr(mpu.server.export, "export", spy("export", "O"))
    monkeypatch.setattr(mpu.server.export, "rounds_note", lambda workdir: "")
    extra = [flag] if flag else []
    work = str(tmp_path / "w")

    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", work, *extra]) == 0
    assert main(["server", "publish", "--workdir", work, "--out", "O", *extra]) == 0
    assert main(["server", "aggregate", "--workdir", work, "--returns", "R", *extra]) == 0
    assert main(["server", "export", "--workdir", work, "--out", "O", *extra]) == 0

    assert seen == dict.fromkeys(("init", "publish", "aggregate", "export"), flag is None)


def test_no_progress_bar_silences_the_real_bars(tmp_path, tiny_model_dir, capsys):
    work = tmp_path / "w"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(work), "--copies", "2",
                 "--no-progress-bar"]) == 0
    assert main(["server", "publish", "--workdir", str(work), "--out", str(tmp_path / "o1"), "--no-progress"]) == 0
    quiet = capsys.readouterr().err
    assert main(["server", "publish", "--workdir", str(work), "--out", str(tmp_path / "o2")]) == 0
    loud = capsys.readouterr().err

    assert "init: store theta" not in quiet and "publish round 1" not in quiet
    assert "publish round 1" in loud


# --- help text ---------------------------------------------------------------------------------------

def test_export_out_says_what_it_is():
    entry = _entry(_sub("server", "export").format_help(), "--out")

    assert "folder" in entry and "from_pretrained" in entry and "(required)" in entry


def test_settings_flags_say_what_leaving_them_out_means():
    text = _sub("server", "init").format_help()

    seed = _entry(text, "--seed")
    assert "left out" in seed and "CSPRNG" in seed and "NOT secret" in seed
    # every setting a preset may fix, and every reparameterisation switch, says the preset decides when unset
    preset_fields = {key for preset in PRESETS.values() for key in preset if key != "reparam"}
    preset_fields |= {key for preset in PRESETS.values() for key in preset.get("reparam", {})}
    assert {"alpha_mode", "independent_noise", "noise_scope", "vo", "kv_permutation", "ffn_scaling"} <= preset_fields
    flags = {"alpha_mode": "--alphas"}
    server_fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    for f in dataclasses.fields(ReparamConfig):
        preset_fields.add(f.name)
    for name in preset_fields:
        f = server_fields.get(name) or next(f for f in dataclasses.fields(ReparamConfig) if f.name == name)
        flag = flags.get(name) or f.metadata.get("flag") or "--" + name.replace("_", "-")
        entry = _entry(text, flag)
        assert "the --privacy preset's value" in entry, flag
    # the fallback named is the field's own default (the default preset sets nothing)
    assert PRESETS["default"] == {}
    assert "plane unless the preset sets it" in _entry(text, "--vo")
    assert "off unless the preset sets it" in _entry(text, "--kv-permutation")
    assert "1.0 unless the preset sets it" in _entry(text, "--independent-noise")


def test_server_help_says_the_order_of_the_subcommands():
    text = " ".join(_sub("server").format_help().split())

    assert "Start with `init`" in text and "`publish`" in text and "`aggregate`" in text and "`export`" in text


# --- init: paths checked up front --------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--model", "--base"])
def test_init_names_the_flag_of_a_path_that_is_no_model(flag, tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "weights.bin"
    afile.write_text("x")
    for bad, reason in ((str(tmp_path / "nope"), "no such model directory"), (str(empty), "no config.json"),
                        (str(afile), "a file")):
        argv = {"--model": str(tiny_model_dir), "--base": None, flag: bad}
        args = [arg for key, value in argv.items() if value for arg in (key, value)]

        code = main(["server", "init", *args, "--workdir", str(tmp_path / "w")])

        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith(f"mpu server init: error: {flag} {bad}: ") and reason in err, err
        assert "local checkpoint folder" in err and "hub id" in err
        assert not (tmp_path / "w").exists()


def test_init_takes_a_missing_path_in_an_existing_folder_for_a_typo_not_a_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()

    assert main(["server", "init", "--model", "models/typo", "--workdir", "w"]) == 2

    assert "--model models/typo: no such model directory" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_init_on_an_existing_work_directory_says_what_to_do(tmp_path, tiny_model_dir, capsys):
    work = tmp_path / "w"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(work), "--copies", "2"]) == 0
    before = _tree(work)
    capsys.readouterr()

    code = main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(work)])

    err = capsys.readouterr().err
    assert code == 2
    assert f"--workdir {work}: already an mpu server work directory" in err
    assert "no --force" in err and "new --workdir" in err and f"mpu server status --workdir {work}" in err
    assert _tree(work) == before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--workdir {other}: folder exists and is not empty" in err and "new or empty folder" in err
    assert _tree(other) == {"todo.txt": b"keep me"}


def test_a_hyperparameter_of_another_method_names_the_methods_that_take_it(capsys):
    assert main(["unlearn", "--model", "M", "--forget", "F", "--out", "U", "--method", "NPO", "--steering-coeff", "3"]) == 2

    err = capsys.readouterr().err
    assert "unknown NPO hyperparameter 'steering_coeff'" in err and "only RMU takes it (--method RMU)" in err
    assert "valid keys: gamma, alpha, retain_loss, beta" in err


# --- audit --inbox -----------------------------------------------------------------------------------

def test_audit_with_a_wrong_inbox_says_what_to_pass(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "audit.json"
    code = main(["audit", "--inbox", str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"mpu audit: error: --inbox {tmp_path / 'nope'}: no such folder" in err
    assert "`mpu server publish --out`" in err and not out.exists()

    work = tmp_path / "w"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(work), "--copies", "2"]) == 0
    capsys.readouterr()
    assert main(["audit", "--inbox", str(work), "--out", str(out)]) == 2
    assert "this is the server's work directory" in capsys.readouterr().err and not out.exists()
    assert not os.path.exists(out)
