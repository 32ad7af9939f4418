"""`mpu server init` states what the copies reveal: the attack floor κ·τ/√m, or that there is none."""

from __future__ import annotations

import math

import pytest

from mpu.cli import main
from mpu.server.config import ServerConfig
from mpu.server.init import attack_floor, describe_attack_floor


@pytest.mark.parametrize("kappa,tau,copies", [(0.01, 1.0, 3), (0.1, 4.0, 3), (0.01, 2.0, 5)])
def test_the_floor_is_kappa_tau_over_root_m(kappa, tau, copies):
    config = ServerConfig(copies=copies, kappa=kappa, independent_noise=tau)
    assert attack_floor(config) == pytest.approx(kappa * tau / math.sqrt(copies))
    assert f"{kappa * tau / math.sqrt(copies):.2e} of the task vector" in describe_attack_floor(config, has_base=True)
    assert "of the weights" in describe_attack_floor(config, has_base=False)


def test_no_independent_noise_is_announced_as_no_floor():
    line = describe_attack_floor(ServerConfig(independent_noise=0.0), has_base=True)
    assert line.startswith("attack floor: none") and "--independent-noise" in line


def test_init_prints_the_floor(tmp_path, tiny_model_dir, capsys):
    assert main(["server", "init", "--model", str(tiny_model_dir), "--copies", "4", "--kappa", "0.02",
                 "--independent-noise", "2", "--workdir", str(tmp_path / "w")]) == 0
    assert f"{0.02 * 2 / 2:.2e}" in capsys.readouterr().out
