"""Flags renamed so that "reference" means only the reference model (issue 15) keep their old names as
hidden aliases: the old spelling parses to the same setting, and --help shows only the new name."""

from __future__ import annotations

import pytest

from mpu.cli import build_parser

RUN = ["run", "--model", "M", "--forget", "F", "--out", "O"]


@pytest.mark.parametrize("argv, dest, value", [
    (RUN + ["--sigma-from", "weights"], "sigma_from", "weights"),
    (RUN + ["--sigma-reference", "weights"], "sigma_from", "weights"),
    (RUN, "sigma_from", "task-vector"),
    (["demo", "--out", "O", "--sigma-reference", "weights"], "sigma_from", "weights"),
    (["demo", "--out", "O"], "sigma_from", "task-vector"),
    (["audit", "--inbox", "I", "--out", "A", "--reference", "T"], "true_weights", "T"),
    (["audit", "--inbox", "I", "--out", "A", "--true-weights", "T"], "true_weights", "T"),
    (RUN + ["--client-reference", "round"], "reference_model_round", "round"),
    (RUN + ["--reference-model-round", "round"], "reference_model_round", "round"),
    (RUN, "reference_model_round", "first"),
    (["client", "unlearn", "--inbox", "I", "--forget", "F", "--out", "O", "--reference-inbox", "R1"], "reference_model_inbox", "R1"),
    (["client", "unlearn", "--inbox", "I", "--forget", "F", "--out", "O"], "reference_model_inbox", None),
])
def test_the_old_flag_sets_the_new_setting(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


@pytest.mark.parametrize("command, old, new", [(["run"], "--sigma-reference", "--sigma-from"),
                                               (["demo"], "--sigma-reference", "--sigma-from"),
                                               (["run"], "--client-reference", "--reference-model-round"),
                                               (["client", "unlearn"], "--reference-inbox ", "--reference-model-inbox")])
def test_help_shows_only_the_new_name(command, old, new, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = capsys.readouterr().out
    assert new in text and old not in text
