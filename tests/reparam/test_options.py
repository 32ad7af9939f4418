"""ReparamConfig: defaults and validation."""

import dataclasses

import pytest

from mpu.reparam import ReparamConfig


def test_defaults_match_the_paper():
    o = ReparamConfig()
    assert (o.enabled, o.qk_rotation, o.vo, o.kv_permutation, o.ffn_permutation, o.ffn_scaling) == (
        True, True, "plane", False, True, False)
    assert o.ffn_scale_range == 2.0


def test_every_field_has_help_text():
    for f in dataclasses.fields(ReparamConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vo": "orthogonal"},
        {"ffn_scale_range": 0.5},
        {"ffn_scale_range": float("nan")},
        {"ffn_scale_range": float("inf")},
        {"ffn_scale_range": "2"},
        {"qk_rotation": 1},
        {"enabled": "yes"},
    ],
)
def test_bad_values_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        ReparamConfig(**kwargs)


def test_options_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReparamConfig().vo = "haar"
