"""Hyperparameters and training options: validation, config files, command-line precedence, --help."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from mpu.errors import InputError, MPUError
from mpu.methods import METHODS, TrainingConfig, add_method_arguments, method_hparams, options_from_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "method"


def parse(argv, parser=None):
    parser = parser or argparse.ArgumentParser()
    add_method_arguments(parser)
    return options_from_args(parser.parse_args(argv))


def test_every_method_has_defaults_alone():
    for name in METHODS.names():
        hp = method_hparams(name, {})
        assert type(hp) is METHODS.get(name).Hparams


def test_openunlearning_defaults():
    expect = {
        "NPO": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0, "retain_loss": "NLL"},
        "SimNPO": {"beta": 4.5, "delta": 0.0, "gamma": 0.125},
        "DPO": {"beta": 0.1},
        "UNDIAL": {"beta": 10.0, "alpha": 0.0},
        "SatImp": {"beta1": 5.0, "beta2": 1.0, "gamma": 0.1},
        "WGA": {"beta": 1.0},
        "GradDiff": {"gamma": 1.0, "alpha": 1.0, "retain_loss": "NLL"},
        "PDU": {"epsilon": None},
    }
    for name, values in expect.items():
        hp = dataclasses.asdict(method_hparams(name, {}))
        assert {key: hp[key] for key in values} == values, name
    assert parse(["--method", "UNDIAL"])[2].learning_rate == 1e-4


def test_unknown_hyperparameter_names_the_key_and_the_valid_ones():
    with pytest.raises(MPUError, match=r"unknown NPO hyperparameter 'betta'.*valid keys: gamma, alpha, retain_loss, beta"):
        method_hparams("NPO", {"betta": 0.5})
    with pytest.raises(MPUError, match="'gamma'.*takes no hyperparameters"):
        method_hparams("GradAscent", {"gamma": 1.0})
    with pytest.raises(MPUError, match="unknown unlearning method 'NPOO'"):
        method_hparams("NPOO", {})


@pytest.mark.parametrize("name,overrides,message", [
    ("NPO", {"beta": "abc"}, "'beta'.*expected a number"),
    ("NPO", {"beta": 0.0}, "beta must be > 0"),
    ("GradDiff", {"retain_loss": "MSE"}, "retain_loss must be one of NLL, KL"),
    ("RMU", {"rmu_layer": 1.5}, "'rmu_layer'.*expected"),
    ("PDU", {"dual_update": "batch"}, "dual_update must be"),
    ("CEU", {"ignore_first_n_answer_tokens": -1}, "must be >= 0"),
])
def test_invalid_values(name, overrides, message):
    with pytest.raises(MPUError, match=message):
        method_hparams(name, overrides)


def test_strings_are_converted_to_the_field_type():
    hp = method_hparams("RMU", {"rmu_layer": "3", "steering_coeff": "6.5", "trainable_params": "none"})
    assert (hp.rmu_layer, hp.steering_coeff, hp.trainable_params) == (3, 6.5, None)
    assert method_hparams("PDU", {"epsilon": "0.4"}).epsilon == 0.4


def test_training_options_validate():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainingConfig(learning_rate=-1)
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        TrainingConfig(lr_scheduler_type="sawtooth")
    assert TrainingConfig(lora_target_modules="q_proj, v_proj").lora_target_modules == ["q_proj", "v_proj"]
    for f in dataclasses.fields(TrainingConfig):
        assert f.metadata.get("help"), f.name


def test_config_file_then_command_line(tmp_path):
    config = tmp_path / "npo.yaml"
    config.write_text("method: NPO\nhparams:\n  beta: 0.3\n  alpha: 2\ntraining:\n  learning_rate: 1e-3\n  epochs: 3\n")
    method, hp, training = parse(["--config", str(config), "--beta", "0.5", "--epochs", "4", "--seed", "9"])
    assert method == "NPO" and (hp.beta, hp.alpha) == (0.5, 2.0)
    assert (training.learning_rate, training.epochs, training.seed) == (1e-3, 4.0, 9)
    with pytest.raises(MPUError, match=rf"unknown GradDiff hyperparameter 'beta' \(from --config {config}\)"):
        parse(["--config", str(config), "--method", "GradDiff"])
    # the method's own training default sits below the config file
    undial = tmp_path / "undial.yaml"
    undial.write_text("training: {learning_rate: 3.0e-4}\n")
    assert parse(["--method", "UNDIAL", "--config", str(undial)])[2].learning_rate == 3e-4
    assert parse(["--method", "UNDIAL", "--config", str(undial), "--lr", "5e-3"])[2].learning_rate == 5e-3


def test_command_line_errors(tmp_path):
    with pytest.raises(MPUError, match=r"unknown NPO hyperparameter 'delta' \(from the command line\)"):
        parse(["--method", "NPO", "--delta", "0.1"])
    with pytest.raises(MPUError, match="unknown NPO hyperparameter 'bogus'"):
        parse(["--method", "NPO", "--hp", "bogus=1"])
    with pytest.raises(MPUError, match="KEY=VALUE"):
        parse(["--method", "NPO", "--hp", "beta"])
    with pytest.raises(MPUError, match="given twice"):
        parse(["--method", "NPO", "--hp", "beta=0.2", "--beta", "0.3"])
    with pytest.raises(MPUError, match="choose a method"):
        parse([])
    with pytest.raises(MPUError, match="training option 'batch_size'.*expected an integer"):
        parse(["--method", "NPO", "--batch-size", "two"])
    assert parse(["--method", "NPO", "--hp", "beta=0.7", "--hp", "retain_loss=KL"])[1].beta == 0.7


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: NPO\nhparam:\n  beta: 1\n")
    with pytest.raises(InputError, match=rf"{bad}: unknown key 'hparam'; valid top-level keys: method, hparams, training"):
        parse(["--config", str(bad)])
    bad.write_text("method: NPO\ntraining:\n  learning_rat: 1\n")
    with pytest.raises(MPUError, match="unknown training option 'learning_rat'"):
        parse(["--config", str(bad)])
    bad.write_text("method: [NPO\n")
    with pytest.raises(InputError, match="not a valid YAML"):
        parse(["--config", str(bad)])


@pytest.mark.parametrize("name", METHODS.names())
def test_shipped_config_selects_its_method(name):
    # the files hold choices only (tests/experiments/test_config_schema.py refuses a restated default)
    assert parse(["--config", str(CONFIGS / f"{name}.yaml")])[0] == name


def test_flags_coexist_with_a_callers_seed():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int)  # e.g. `mpu run` has the server's fixed seed
    add_method_arguments(parser)
    args = parser.parse_args(["--method", "GradAscent", "--seed", "5", "--train-seed", "7"])
    assert args.seed == 5 and options_from_args(args)[2].seed == 7


def test_unlearn_help_lists_every_method_and_parameter(capsys):
    from mpu.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["unlearn", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in METHODS.names():
        assert f"  {name} " in text
        for f in dataclasses.fields(METHODS.get(name).Hparams):
            assert "--" + f.name.replace("_", "-") in text
    for flag in ("--epochs", "--lr", "--batch-size", "--grad-accum", "--warmup-ratio", "--lr-scheduler", "--max-grad-norm",
                 "--lora-rank", "--config", "--hp"):
        assert flag in text
    assert "beta=4.5" in text and "SimNPO=4.5" in text and "learning_rate=0.0001" in text
