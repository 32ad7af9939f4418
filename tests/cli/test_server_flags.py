"""``mpu server init``'s settings flags are ServerConfig's fields: every field has its flag, the help is
the field's, an unset flag keeps the field's default, and every historical flag name still works."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from mpu.cli.server import add_server_config_arguments, server_config_from_args
from mpu.errors import MPUError
from mpu.server.config import PRESETS, ServerConfig

NOT_FLAGS = {"alpha_mode", "reparam"}   # alpha_mode is set by --alphas; reparam has its own flags


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

    for f in dataclasses.fields(ServerConfig):
        if f.name not in NOT_FLAGS:
            assert " ".join(f.metadata.get("flag_help", f.metadata["help"]).split()) in text, f.name


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
    (("--seed", "1.5"), "--seed: expected int or null"),
    (("--kappa", "-1"), "kappa must be >= 0"),
    (("--alphas", "1,a"), "--alphas must be"),
])
def test_a_bad_value_is_an_mpu_error_naming_the_flag(argv, message):
    with pytest.raises(MPUError, match=message):
        config_of(*argv)
