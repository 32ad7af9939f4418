"""An output folder never replaces what a command reads: the work directory, the base, the model,
a folder of the user's own; a file or an unwritable place is refused before any work."""

from __future__ import annotations

import json
import shutil

import pytest

from mpu.cli import main
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from tests.server.stand_in_client import write_returns


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory, tiny_model_dir):
    """A work directory after one aggregated round of two."""
    root = tmp_path_factory.mktemp("outputs")
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, rounds=2, kappa=0.01, fixed_seed=3), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    write_returns(root / "outbox", root / "returns", lambda name, w: -0.01 * w)
    aggregate(root / "server", root / "returns", progress=False)
    return root


def snapshot(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def workdir_copy(aggregated, tmp_path):
    shutil.copytree(aggregated / "server", tmp_path / "server")
    return tmp_path / "server"


@pytest.mark.parametrize("command", ["export", "publish"])
@pytest.mark.parametrize("where, reason", [
    (lambda t: t / "server", "is {server}, which this command reads"),
    (lambda t: t, "holds {server}, which this command reads"),
    (lambda t: t / "server" / "models" / "out", "lies inside {server}, which this command reads"),
], ids=["the-workdir", "its-parent", "inside-it"])
def test_an_output_over_the_work_directory_is_refused_with_force_and_deletes_nothing(
        aggregated, tmp_path, capsys, monkeypatch, command, where, reason):
    # arrange: `export --out W --force` deleted the work directory (secrets, state, model), then failed
    server = workdir_copy(aggregated, tmp_path)
    before = snapshot(tmp_path)
    out = where(tmp_path)

    # act
    code = main(["server", command, "--workdir", str(server), "--out", str(out), "--force", "--no-progress-bar"])

    # assert
    err = capsys.readouterr().err
    assert code == 2, err
    assert reason.format(server=server.resolve()) in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_force_replaces_an_earlier_export_and_never_a_folder_of_the_users_own(aggregated, tmp_path, capsys):
    # arrange: `export --out NE --force` emptied a folder holding the user's notes
    server = workdir_copy(aggregated, tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    export = ["server", "export", "--workdir", str(server), "--no-progress-bar", "--force"]

    # act
    first = main([*export, "--out", str(tmp_path / "model")])
    again = main([*export, "--out", str(tmp_path / "model")])
    refused = main([*export, "--out", str(mine)])

    # assert
    err = capsys.readouterr().err
    assert (first, again, refused) == (0, 0, 2), err
    assert f"{mine}: holds files that are no earlier output of this command (no config.json)" in err
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("out, reason", [
    (lambda t: t / "file.txt", "is the file {file}; choose a folder to write"),
    (lambda t: t / "file.txt" / "below", "lies under the file {file}; choose a folder to write"),
], ids=["a-file", "under-a-file"])
def test_an_output_that_is_or_lies_under_a_file_is_refused_without_a_traceback(aggregated, tmp_path, capsys, out, reason):
    # arrange: NotADirectoryError from rmtree, after the work
    server = workdir_copy(aggregated, tmp_path)
    (tmp_path / "file.txt").write_text("x")

    # act
    code = main(["server", "export", "--workdir", str(server), "--out", str(out(tmp_path)), "--force", "--no-progress-bar"])

    # assert
    err = capsys.readouterr().err
    assert code == 2 and reason.format(file=(tmp_path / "file.txt").resolve()) in err and "Traceback" not in err
    assert (tmp_path / "file.txt").read_text() == "x"


def test_mpu_run_refuses_its_model_or_an_earlier_output_before_any_work(tmp_path, tiny_model_dir, forget_file, capsys, monkeypatch):
    # arrange: `mpu run` always replaced --out: a second run, the input model, a folder of the user's
    import mpu.experiments.two_party as two_party

    monkeypatch.setattr(two_party, "init_server", lambda *args, **kwargs: pytest.fail("the run started before --out was checked"))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "config.json").write_text("{}")
    run = ["run", "--model", str(model), "--forget", str(forget_file), "--method", "GradAscent", "--max-steps", "1",
           "--copies", "2", "--kappa", "0.01", "--seed", "1", "--no-progress-bar"]
    before = snapshot(model)

    # act
    over_the_model = main([*run, "--out", str(model), "--overwrite"])
    over_an_output = main([*run, "--out", str(tmp_path / "earlier")])

    # assert: both refused before any work; the model is intact
    err = capsys.readouterr().err
    assert (over_the_model, over_an_output) == (2, 2), err
    assert f"{model}: is {model.resolve()}, which this command reads" in err
    assert f"{tmp_path / 'earlier'}: already exists (remove it or choose another path, or pass --overwrite to replace it)" in err
    assert snapshot(model) == before


def test_publishing_a_round_again_says_the_earlier_outbox_is_stale(aggregated, tmp_path, caplog):
    # arrange: a second publish of round 2 made a new publication id without a word; returns made from the
    # first outbox were then refused
    import logging

    server = workdir_copy(aggregated, tmp_path)
    publish(server, tmp_path / "first", progress=False)

    # act
    with caplog.at_level(logging.WARNING, logger="mpu.server.publish"):
        publish(server, tmp_path / "second", progress=False)

    # assert: the copies are the same (the round's secret is kept); the publication id, which returns may name, is not
    assert "round 2 was already published (publication " in caplog.text
    assert "returns that name the earlier publication are refused" in caplog.text
    for copy in sorted(path.name for path in (tmp_path / "first").glob("copy-*")):
        assert snapshot(tmp_path / "first" / copy) == snapshot(tmp_path / "second" / copy), copy
    ids = [json.loads((tmp_path / folder / "manifest.json").read_text())["publication_id"] for folder in ("first", "second")]
    assert ids[0] != ids[1]


def test_keep_exchange_without_a_work_directory_is_refused(tmp_path, tiny_model_dir, forget_file, capsys, monkeypatch):
    # arrange: the exchange sat beside the temporary work directory and was removed with it
    import mpu.experiments.two_party as two_party

    monkeypatch.setattr(two_party, "init_server", lambda *args, **kwargs: pytest.fail("the run started"))

    # act
    code = main(["run", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "GradAscent",
                 "--out", str(tmp_path / "out"), "--keep-exchange"])

    # assert
    assert code == 2 and "pass --workdir W too" in capsys.readouterr().err
