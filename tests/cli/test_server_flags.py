"""``mpu server init``'s settings flags are the fields of ServerConfig and of its ReparamConfig: every
field has its flag, the help is the field's, an unset flag keeps the field's default, and every
historical flag name still works."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from mpu.cli.server import add_server_config_arguments, server_config_from_args
from mpu.errors import MPUError
from mpu.reparam import ReparamConfig
from mpu.server.config import PRESETS, ServerConfig

NOT_FLAGS = {"alpha_mode", "reparam"}   # alpha_mode is set by --alphas; reparam's fields have their flags


def server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_server_config_arguments(parser)
    return parser


def config_of(*argv: str) -> ServerConfig:
    return server_config_from_args(server_parser().parse_args(list(argv)))


def test_no_flags_give_the_dataclass_defaults():
    assert config_of() == ServerConfig()


def test_every_field_has_a_flag_with_the_fields_help():
    text = " ".join(server_parser().format_help().split())

    fields = [f for f in dataclasses.fields(ServerConfig) if f.name not in NOT_FLAGS] + list(dataclasses.fields(ReparamConfig))
    for f in fields:
        assert " ".join(f.metadata.get("flag_help", f.metadata["help"]).split()) in text, f.name


def test_every_reparam_field_is_a_flag_that_overrides_the_preset():
    # each ReparamConfig field set to a value that differs from both its default and the hardened preset's
    flipped = {"enabled": False, "qk_rotation": False, "vo": "none", "kv_permutation": False,
               "ffn_permutation": False, "ffn_scaling": False, "ffn_scale_range": 3.0}
    assert set(flipped) == {f.name for f in dataclasses.fields(ReparamConfig)}
    argv = ["--privacy", "hardened", "--no-reparam", "--no-qk-rotation", "--vo", "none", "--no-kv-permutation",
            "--no-ffn-permutation", "--no-ffn-scaling", "--ffn-scale-range", "3"]

    config = config_of(*argv)

    assert dataclasses.asdict(config.reparam) == flipped
    assert config_of("--reparam", "--qk-rotation", "--ffn-permutation").reparam == ReparamConfig()


def test_the_privacy_help_lists_each_presets_settings():
    text = " ".join(server_parser().format_help().split())

    assert "hardened (alpha_mode=secret, noise_scope=all, independent_noise=4.0, vo=haar, kv_permutation=True, " \
           "ffn_scaling=True)" in text
    assert "paper (alpha_mode=public, independent_noise=0.0" in text


def test_every_historical_flag_and_alias_sets_its_field():
    config = config_of("-m", "4", "--kappa", "0.02", "--rounds", "2", "--eta", "0.5", "--alphas", "1,1.5,2,2",
                       "--alpha-max", "3", "--independent-noise", "2", "--noise-scope", "all", "--publish-dtype",
                       "float16", "--max-update-ratio", "0.25", "--seed", "7", "--no-reparam", "--no-qk-rotation",
                       "--vo", "haar", "--kv-permutation", "--no-ffn-permutation", "--ffn-scaling")

    assert (config.copies, config.kappa, config.rounds, config.eta) == (4, 0.02, 2, 0.5)
    assert (config.alpha_mode, config.alphas, config.alpha_max) == ("list", [1.0, 1.5, 2.0, 2.0], 3.0)
    assert (config.independent_noise, config.noise_scope, config.publish_dtype) == (2.0, "all", "float16")
    assert (config.max_update_ratio, config.fixed_seed) == (0.25, 7)
    reparam = config.reparam
    assert (reparam.enabled, reparam.qk_rotation, reparam.vo, reparam.kv_permutation, reparam.ffn_permutation,
            reparam.ffn_scaling) == (False, False, "haar", True, False, True)
    assert config_of("--copies", "5", "--alphas", "public").copies == 5
    assert config_of("--alphas", "public").alpha_mode == "public"
    assert config_of("--alphas", "reference").alpha_mode == "public"  # the old name still works


def test_a_preset_fills_only_the_flags_not_given():
    paper = config_of("--privacy", "paper")
    assert (paper.alpha_mode, paper.independent_noise) == (PRESETS["paper"]["alpha_mode"], PRESETS["paper"]["independent_noise"])

    overridden = config_of("--privacy", "paper", "--independent-noise", "0.5", "--alphas", "secret")

    assert (overridden.alpha_mode, overridden.independent_noise) == ("secret", 0.5)


@pytest.mark.parametrize("argv, message", [
    (("--copies", "x"), "--copies: expected an integer"),
    (("--seed", "1.5"), "--seed: expected an integer or null"),
    (("--ffn-scale-range", "big"), "--ffn-scale-range: expected a number"),
    (("--ffn-scale-range", "0.5"), "ffn_scale_range must be a finite number >= 1"),
    (("--kappa", "-1"), "kappa must be >= 0"),
    (("--alphas", "1,a"), "--alphas must be"),
])
def test_a_bad_value_is_an_mpu_error_naming_the_flag(argv, message):
    with pytest.raises(MPUError, match=message):
        config_of(*argv)
