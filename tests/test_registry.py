"""The name registry: names as users type them, suggestions on typos, loud duplicates."""

from __future__ import annotations

import pytest

from mpu.errors import MPUError
from mpu.registry import Registry


def make():
    registry = Registry("unlearning method")
    for name in ("GradAscent", "GradDiff", "NPO", "SimNPO"):
        registry.register(name)(object())
    return registry


@pytest.mark.parametrize("typed,expected", [
    ("npo", "NPO"), ("NPO", "NPO"), ("Npo", "NPO"),
    ("gradascent", "GradAscent"), ("grad_ascent", "GradAscent"), ("GradAscent", "GradAscent"),
    ("GRAD-ASCENT", "GradAscent"), ("grad-diff", "GradDiff"), ("sim_npo", "SimNPO"),
])
def test_names_match_case_insensitively_ignoring_underscores_and_hyphens(typed, expected):
    registry = make()
    assert registry.canonical(typed) == expected
    assert registry.get(typed) is registry.get(expected)
    assert typed in registry


def test_a_typo_suggests_the_closest_name():
    registry = make()
    with pytest.raises(MPUError, match=r"^unknown unlearning method 'NPOO'; did you mean 'NPO'\? known: "):
        registry.get("NPOO")
    with pytest.raises(MPUError, match=r"did you mean 'GradAscent'\?"):
        registry.canonical("gradasent")
    assert "NPOO" not in registry


def test_a_name_far_from_every_known_one_lists_them_without_a_guess():
    registry = make()
    with pytest.raises(MPUError) as err:
        registry.get("xyzzy")
    assert str(err.value) == "unknown unlearning method 'xyzzy'; known: GradAscent, GradDiff, NPO, SimNPO"


@pytest.mark.parametrize("clash", ["NPO", "npo", "N_P_O", "n-p-o"])
def test_duplicates_fail_loudly_even_when_they_differ_only_by_case_or_underscores(clash):
    registry = make()
    with pytest.raises(ValueError, match=f"duplicate unlearning method name {clash!r}"):
        registry.register(clash)(object())
    assert registry.names() == ["GradAscent", "GradDiff", "NPO", "SimNPO"]  # nothing half-registered


def test_one_registration_with_clashing_aliases_is_refused_whole():
    registry = Registry("metric")
    with pytest.raises(ValueError, match="duplicate metric names"):
        registry.register("rouge", "ROUGE")(object())
    with pytest.raises(ValueError, match="at least one name"):
        registry.register()
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("_-")
    assert registry.names() == []


def test_aliases_and_listing():
    registry = Registry("architecture")
    adapter = object()
    registry.register("llama", "mistral")(adapter)
    assert registry.get("Mistral") is adapter and registry.get("LLAMA") is adapter
    assert registry.names() == ["llama", "mistral"] and list(registry) == ["llama", "mistral"]
    assert 3 not in registry


def test_every_project_registry_resolves_names_as_typed():
    from mpu.eval import METRICS
    from mpu.methods import METHODS
    from mpu.reparam import ARCHITECTURES

    assert METHODS.canonical("npo") == "NPO" and METHODS.canonical("grad_ascent") == "GradAscent"
    assert METHODS.canonical("undial") == "UNDIAL" and METHODS.canonical("sat-imp") == "SatImp"
    assert METRICS.canonical("Truth-Ratio") == "truth_ratio"
    assert ARCHITECTURES.canonical("Qwen2") == "qwen2"
    with pytest.raises(MPUError, match="unknown unlearning method 'NPOO'; did you mean 'NPO'?"):
        METHODS.get("NPOO")
