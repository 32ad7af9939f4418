"""benchmarks/audit_table.py: each named setting builds the server configuration its table label says."""

from __future__ import annotations

import pytest

from mpu.server.config import PRESETS, ServerConfig
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def audit_table():
    return load_benchmark("audit_table")


def test_the_paper_settings_are_the_paper_preset_without_independent_noise(audit_table):
    paper = ServerConfig(**PRESETS["paper"])

    for name, kappa in (("paper", 0.01), ("paper-k0.1", 0.1)):
        config = audit_table.server_config(audit_table.SETTINGS[name][0])
        assert (config.alpha_mode, config.independent_noise, config.reparam, config.kappa) == \
               (paper.alpha_mode, 0.0, paper.reparam, kappa), name


def test_no_reparameterisation_has_public_alphas_and_no_independent_noise(audit_table):
    config = audit_table.server_config(audit_table.SETTINGS["no-reparam"][0])

    assert (config.alpha_mode, config.independent_noise, config.reparam.enabled) == ("public", 0.0, False)


@pytest.mark.parametrize("name, tau", [("hardened-tau0", 0.0), ("hardened", 1.0), ("hardened-tau2", 2.0), ("hardened-tau4", 4.0)])
def test_the_hardened_rows_are_the_hardened_preset_at_the_tau_their_label_names(audit_table, name, tau):
    hardened = ServerConfig(**PRESETS["hardened"])

    settings, label = audit_table.SETTINGS[name]
    config = audit_table.server_config(settings)

    assert (config.alpha_mode, config.noise_scope, config.reparam, config.independent_noise) == \
           (hardened.alpha_mode, hardened.noise_scope, hardened.reparam, tau)
    assert f"tau = {tau:g}" in label or tau == 0.0


def test_every_tau_label_matches_its_setting(audit_table):
    for name, (settings, label) in audit_table.SETTINGS.items():
        config = audit_table.server_config(settings)
        if "tau = " in label:
            named = float(label.split("tau = ")[1].split()[0].rstrip(")"))
            assert config.independent_noise == named, name
