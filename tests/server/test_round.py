"""The round as an object: Round.publish / Round.aggregate and the combination-rule hook."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.audit.alphas import optimal_weights as audit_optimal_weights
from mpu.checkpoint import CheckpointReader
from mpu.errors import MPUError
from mpu.reparam import ReparamConfig
from mpu.server.aggregate import aggregate
from mpu.server.combine import COMBINE_RULES, HarmonicCombine, VarianceOptimalCombine, get_combine
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.noise import alphas_for_round
from mpu.server.round import Round
from mpu.server.workdir import Workdir
from tests.server.stand_in_client import write_returns

ETA = 0.7


def nonlinear_update(name: str, weights: torch.Tensor) -> torch.Tensor:
    """A client whose update is not linear in the copy, so the combined noise depends on the weights."""
    return 0.05 * torch.sin(3.0 * weights)


def setup_round(root, model_dir, tau: float):
    """A published round 1 (secret alphas, no reparameterisation: Delta_k is in theta's coordinates) with
    the stand-in client's returns; the secret's alphas in copy order."""
    config = ServerConfig(copies=3, kappa=0.2, fixed_seed=5, eta=ETA, independent_noise=tau, reparam=ReparamConfig(enabled=False),
                          max_update_ratio=10.0)
    init_server(root / "server", str(model_dir), None, config, progress=False)
    Round(root / "server", device="cpu", progress=False).publish(root / "outbox")
    write_returns(root / "outbox", root / "returns", nonlinear_update)
    work = Workdir(root / "server")
    return alphas_for_round(config, work.round_secret(1, config.fixed_seed, create=False))


def expected_model(model_dir, returns, weights) -> dict[str, torch.Tensor]:
    """theta + eta sum_k w_k Delta_k, with the float32 operations in the order Post-Process performs them."""
    theta = CheckpointReader(model_dir)
    deltas = [CheckpointReader(returns / f"update-{k}") for k in (1, 2, 3)]
    out = {}
    for name in theta.names():
        step = deltas[0].get(name).to(torch.float32).mul(weights[0] * ETA)
        for k in (1, 2):
            step.add_(deltas[k].get(name).to(torch.float32), alpha=weights[k] * ETA)
        out[name] = theta.get(name).to(torch.float32).add_(step)
    return out


def tensors(model_dir) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(model_dir)
    return {name: reader.get(name) for name in reader.names()}


def test_the_harmonic_rule_gives_bit_identical_harmonic_aggregation(tmp_path, tiny_model_dir):
    alphas = setup_round(tmp_path, tiny_model_dir, tau=1.0)
    inverse = [1.0 / a for a in alphas]
    harmonic = [v / sum(inverse) for v in inverse]

    report = Round(tmp_path / "server", device="cpu", progress=False).aggregate(tmp_path / "returns")  # default rule

    got, want = tensors(report.model_dir), expected_model(tiny_model_dir, tmp_path / "returns", harmonic)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)
    assert report.combine == "harmonic" and report.weights == dict(zip((1, 2, 3), harmonic))
    history = Workdir(tmp_path / "server").load().history[-1]
    assert history["combine"] == {"rule": "harmonic", "weights": {"1": harmonic[0], "2": harmonic[1], "3": harmonic[2]}}


def test_the_variance_optimal_rule_uses_the_audits_weights_and_differs(tmp_path, tiny_model_dir):
    alphas = setup_round(tmp_path, tiny_model_dir, tau=1.0)
    optimal = audit_optimal_weights(alphas, 1.0)
    assert max(abs(a - b) for a, b in zip(optimal, HarmonicCombine().weights(alphas, 1.0))) > 1e-3

    report = aggregate(tmp_path / "server", tmp_path / "returns", progress=False, device="cpu", combine="variance_optimal")

    got = tensors(report.model_dir)
    want = expected_model(tiny_model_dir, tmp_path / "returns", optimal)
    harmonic = expected_model(tiny_model_dir, tmp_path / "returns", HarmonicCombine().weights(alphas, 1.0))
    assert all(torch.equal(got[name], want[name]) for name in want)
    assert any(not torch.equal(got[name], harmonic[name]) for name in want)
    assert report.combine == "variance-optimal"
    assert Workdir(tmp_path / "server").load().history[-1]["combine"]["rule"] == "variance-optimal"


def test_variance_optimal_weights_minimise_the_combined_noise_and_equal_harmonic_without_tau():
    alphas = [1.0, 1.4, 1.9]
    rule = VarianceOptimalCombine()
    assert rule.weights(alphas, 0.0) == HarmonicCombine().weights(alphas, 0.0)
    from mpu.server.combine import combined_noise_std

    best = rule.weights(alphas, 1.0)
    assert sum(best) == pytest.approx(1.0)
    for other in (HarmonicCombine().weights(alphas, 1.0), [1 / 3] * 3, [0.5, 0.3, 0.2]):
        assert combined_noise_std(best, alphas, 1.0) < combined_noise_std(other, alphas, 1.0)


def test_an_unknown_rule_is_refused_before_anything_changes(tmp_path, tiny_model_dir):
    setup_round(tmp_path, tiny_model_dir, tau=1.0)
    state = (tmp_path / "server" / "state.json").read_bytes()
    with pytest.raises(MPUError, match="unknown combination rule 'median'.*harmonic, variance-optimal"):
        Round(tmp_path / "server", progress=False).aggregate(tmp_path / "returns", combine="median")
    assert (tmp_path / "server" / "state.json").read_bytes() == state
    assert not (tmp_path / "server" / "models" / "round-1").exists()
    with pytest.raises(TypeError):
        get_combine(object())


def test_the_cli_takes_combine_and_refuses_an_unknown_rule(tmp_path, tiny_model_dir, capsys):
    from mpu.cli import main

    with pytest.raises(SystemExit) as refused:
        main(["server", "aggregate", "--workdir", str(tmp_path), "--returns", str(tmp_path), "--combine", "mean"])
    assert refused.value.code == 2 and "unknown combination rule 'mean'" in capsys.readouterr().err

    setup_round(tmp_path, tiny_model_dir, tau=0.5)
    assert main(["server", "aggregate", "--workdir", str(tmp_path / "server"), "--returns", str(tmp_path / "returns"),
                 "--combine", "variance-optimal"]) == 0
    assert "combination rule variance-optimal" in capsys.readouterr().out
    state = json.loads((tmp_path / "server" / "state.json").read_text())
    assert state["history"][-1]["combine"]["rule"] == "variance-optimal"
    assert main(["server", "status", "--workdir", str(tmp_path / "server")]) == 0
    assert "combined with the variance-optimal rule" in capsys.readouterr().out


def test_one_round_object_runs_every_round(tmp_path, tiny_model_dir):
    config = ServerConfig(copies=2, kappa=0.05, rounds=2, fixed_seed=1, reparam=ReparamConfig(enabled=False))
    init_server(tmp_path / "server", str(tiny_model_dir), None, config, progress=False)
    server = Round(tmp_path / "server", device="cpu", progress=False)
    for number in (1, 2):
        published = server.publish(tmp_path / f"outbox-{number}")
        write_returns(tmp_path / f"outbox-{number}", tmp_path / f"returns-{number}", lambda name, w: -0.01 * w)
        report = server.aggregate(tmp_path / f"returns-{number}")
        assert published.round == report.round == number
    with pytest.raises(MPUError, match="rounds are done"):
        server.publish(tmp_path / "outbox-3")


def test_every_registered_rule_has_a_description_and_weights_summing_to_one():
    for name in COMBINE_RULES:
        rule = get_combine(name)
        assert rule.name == name and rule.description
        assert sum(rule.weights([1.0, 1.5, 2.0], 0.5)) == pytest.approx(1.0)
