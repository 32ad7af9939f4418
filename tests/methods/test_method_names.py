"""Method names as users type them, on every path that takes one: `mpu client unlearn`, `mpu unlearn`,
the method config file and the experiment (Hydra) trainer section."""

from __future__ import annotations

import pytest

from mpu.cli import build_parser, main
from mpu.errors import MPUError
from mpu.methods import options_from_args


def client_args(tmp_path, *method):
    return ["client", "unlearn", "--inbox", str(tmp_path / "inbox"), "--forget", str(tmp_path / "forget.json"),
            "--out", str(tmp_path / "out"), *method]


@pytest.mark.parametrize("typed,expected", [("npo", "NPO"), ("gradascent", "GradAscent"),
                                            ("grad_ascent", "GradAscent"), ("GradAscent", "GradAscent"),
                                            ("simnpo", "SimNPO"), ("grad-diff", "GradDiff")])
def test_client_and_baseline_parse_method_names_as_typed(tmp_path, typed, expected):
    parser = build_parser()
    method, hparams, _ = options_from_args(parser.parse_args(client_args(tmp_path, "--method", typed)))
    from mpu.methods import METHODS

    assert method == expected and type(hparams) is METHODS.get(expected).Hparams
    baseline = parser.parse_args(["unlearn", "--model", "m", "--forget", "f.json", "--out", "o", "--method", typed])
    assert options_from_args(baseline)[0] == expected


def test_a_typo_is_refused_with_the_closest_name_and_exit_code_2(tmp_path, capsys):
    assert main(client_args(tmp_path, "--method", "NPOO")) == 2
    err = capsys.readouterr().err
    assert "unknown unlearning method 'NPOO'; did you mean 'NPO'?" in err
    assert not (tmp_path / "out").exists()


def test_method_in_a_config_file_is_matched_the_same_way(tmp_path):
    config = tmp_path / "npo.yaml"
    config.write_text("method: npo\nhparams: {beta: 0.2}\n")
    method, hparams, _ = options_from_args(build_parser().parse_args(client_args(tmp_path, "--config", str(config))))
    assert method == "NPO" and hparams.beta == 0.2


def test_experiment_trainer_method_is_matched_and_typos_suggested():
    from mpu.experiments.config import training_settings

    settings = training_settings({"method": "grad_ascent"}, epochs=1.0, seed=0)
    assert settings[0] == "GradAscent"
    with pytest.raises(MPUError, match=r"trainer.method: unknown unlearning method 'simnpoo'; did you mean 'SimNPO'\?"):
        training_settings({"method": "simnpoo"}, epochs=1.0, seed=0)


def test_demo_resolves_the_method_before_training(tmp_path, capsys):
    from mpu.experiments.demo import DemoConfig

    assert DemoConfig(method="grad_ascent").method == "GradAscent"
    assert main(["demo", "--method", "NPOO", "--out", str(tmp_path / "demo")]) == 2
    assert "did you mean 'NPO'?" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
