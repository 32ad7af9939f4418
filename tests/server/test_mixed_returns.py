"""No silent surprises on the server: returns trained differently are combined only with --allow-mixed
(and aggregate prints what it combined); export before any aggregate is refused unless
--allow-unaggregated; every file written for or by a party is mode 0600."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from mpu.cli import main
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from mpu.server.workdir import Workdir
from tests.server.hostile import refused
from tests.server.stand_in_client import write_returns

SAME = {"hparams": {"beta": 0.1, "retain_loss": "NLL"}, "training": {"learning_rate": 0.001, "epochs": 5.0}, "steps": 25, "method": "NPO"}


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("mixed")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=6), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    write_returns(root / "outbox", root / "good", lambda name, w: -0.01 * w, manifest_overrides={1: SAME, 2: SAME})
    return root


def rewrite(published, returns, second: dict):
    shutil.rmtree(returns)
    write_returns(published / "outbox", returns, lambda name, w: -0.01 * w, manifest_overrides={1: SAME, 2: {**SAME, **second}})


MIXED = {
    "method": ({"method": "GradAscent"}, "method: copy 1 'NPO', copy 2 'GradAscent'"),
    "hyperparameter": ({"hparams": {"beta": 0.5, "retain_loss": "NLL"}}, "hparams.beta: copy 1 0.1, copy 2 0.5"),
    "training option": ({"training": {"learning_rate": 1e-05, "epochs": 5.0}}, "training.learning_rate: copy 1 0.001, copy 2 1e-05"),
    "step count": ({"steps": 1}, "steps: copy 1 25, copy 2 1"),
    # Python's == says 5 == 5.0 (and True == 1, 0.0 == -0.0): the settings still differ
    "integer for a float": ({"training": {"learning_rate": 0.001, "epochs": 5}}, "training.epochs: copy 1 5.0, copy 2 5"),
}
SAME_TYPED = {**SAME, "hparams": {"beta": 1, "retain_loss": "NLL"}}
MIXED_TYPES = {"hparams": {"beta": True, "retain_loss": "NLL"}}


def test_a_boolean_and_the_number_it_equals_in_python_are_different_settings(published, tmp_path, capsys):
    def returns(r, t):
        shutil.rmtree(r)
        write_returns(published / "outbox", r, lambda name, w: -0.01 * w,
                      manifest_overrides={1: SAME_TYPED, 2: {**SAME_TYPED, **MIXED_TYPES}})
    message = refused(published, tmp_path, returns, capsys)
    assert "hparams.beta: copy 1 1, copy 2 True" in message


def test_aggregate_prints_the_clients_strings_escaped(published, tmp_path, capsys):
    """A client's setting carrying terminal control sequences (clear screen, carriage return, a forged
    line) is printed as escapes, not interpreted by the owner's terminal."""
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    returns = tmp_path / "returns"
    forged = "NLL\r\x1b[2Jall checks passed\n\u202e"
    settings = {**SAME, "hparams": {"beta": 0.1, "retain_loss": forged}}
    write_returns(published / "outbox", returns, lambda name, w: -0.01 * w, manifest_overrides={1: settings, 2: settings})
    capsys.readouterr()

    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns)]) == 0

    out = capsys.readouterr().out
    assert "retain_loss=NLL\\r\\x1b[2Jall checks passed\\n\\u202e" in out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out


def test_a_differing_setting_is_shown_cut_to_a_line(published, tmp_path, capsys):
    # arrange: copy 2 carries 64 strings of 4,096 characters (about 270 KB) where copy 1 has none; the
    # refusal echoed them whole (769,000 characters on one line)
    long_list = {"hparams": {"beta": 0.1, "retain_loss": "NLL", "extra": ["x" * 4096] * 64}}

    # act
    message = refused(published, tmp_path, lambda r, t: rewrite(published, r, long_list), capsys)

    # assert: the setting is named, its value cut, with its length
    assert "hparams.extra: copy 1 None, copy 2 ['xxxx" in message
    assert "characters)" in message and len(message) < 2_000


@pytest.mark.parametrize("case", sorted(MIXED))
def test_returns_trained_differently_are_refused_without_allow_mixed(case, published, tmp_path, capsys):
    second, reason = MIXED[case]
    message = refused(published, tmp_path, lambda r, t: rewrite(published, r, second), capsys)
    assert reason in message
    assert "--allow-mixed" in message


def test_allow_mixed_combines_them_and_says_what_differed(published, tmp_path, capsys):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    returns = tmp_path / "returns"
    returns.mkdir()
    rewrite(published, returns, {"method": "GradAscent", "steps": 3})
    capsys.readouterr()

    code = main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns), "--allow-mixed"])

    out = capsys.readouterr().out
    assert code == 0
    assert "warning: mixed returns (--allow-mixed): method: copy 1 'NPO', copy 2 'GradAscent'" in out
    assert "steps: copy 1 25, copy 2 3" in out
    history = Workdir(server).load().history[-1]
    assert history["combined"]["method"] == {"1": "NPO", "2": "GradAscent"}
    assert len(history["mixed"]) == 2


def test_aggregate_prints_what_it_combined(published, tmp_path, capsys):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    capsys.readouterr()

    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(published / "good")]) == 0

    out = capsys.readouterr().out
    assert "round 1 aggregated 2 update(s) (1 of 1 rounds done)" in out
    assert "combined copies [1, 2]: method NPO, kind full, steps 25" in out
    assert "hparams: beta=0.1, retain_loss=NLL" in out
    assert "training: epochs=5.0, learning_rate=0.001" in out
    assert Workdir(server).load().history[-1]["mixed"] == []


def test_export_before_any_aggregate_is_refused_unless_allowed(published, tmp_path, capsys):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)

    code = main(["server", "export", "--workdir", str(server), "--out", str(tmp_path / "model")])

    assert code == 2
    assert "no round aggregated yet (0 of 1 rounds done)" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
    assert main(["server", "export", "--workdir", str(server), "--out", str(tmp_path / "model"), "--allow-unaggregated"]) == 0
    assert "unaggregated, the original model (after 0 of 1 rounds)" in capsys.readouterr().out
    assert (tmp_path / "model" / "config.json").is_file()


def modes(root):
    return {path.relative_to(root).as_posix(): stat.S_IMODE(os.lstat(path).st_mode) for path in root.rglob("*") if path.is_file()}


def test_every_file_written_for_or_by_the_server_is_owner_only(published, tmp_path, capsys):
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    assert main(["server", "aggregate", "--workdir", str(server), "--returns", str(published / "good")]) == 0
    assert main(["server", "export", "--workdir", str(server), "--out", str(tmp_path / "model")]) == 0
    assert "after 1 of 1 rounds" in capsys.readouterr().out
    outbox = tmp_path / "outbox"
    init_server(tmp_path / "server2", str(published / "server" / "models" / "round-0"), None, ServerConfig(copies=2, fixed_seed=1), progress=False)
    publish(tmp_path / "server2", outbox, progress=False)

    for root in (outbox, server, tmp_path / "server2", tmp_path / "model"):
        found = modes(root)
        assert any(name.endswith(".json") for name in found) and any(name.endswith(".safetensors") for name in found)
        assert {name: mode for name, mode in found.items() if mode != 0o600} == {}, root
