import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mpu.protocol import RoundKeys
from mpu.server import randomness
from mpu.server.config import ServerConfig
from mpu.server.noise import alphas_for_round, harmonic_weights, zero_sum_noise


def generators(m: int, seed: int = 0):
    return RoundKeys(randomness.new_round_secret(seed, 1)).noise_generators(m, "w")


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 8), sigma=st.floats(1e-4, 10.0), seed=st.integers(0, 10_000))
def test_zero_sum_noise_sums_to_zero(m, sigma, seed):
    noise = zero_sum_noise(torch.Size([17, 5]), sigma, generators(m, seed))
    assert noise.shape == (m, 17, 5)
    assert noise.sum(dim=0).abs().max() <= 1e-5 * sigma * m


@pytest.mark.parametrize("m", [2, 3, 5])
def test_each_copy_has_variance_sigma_squared(m):
    sigma, n = 0.3, 200_000
    noise = zero_sum_noise(torch.Size([n]), sigma, generators(m, seed=7))
    for k in range(m):
        sample = noise[k].double()
        # (n-1) s^2 / sigma^2 ~ chi2(n-1): a two-sided 0.1% test of the variance.
        statistic = (n - 1) * sample.var().item() / sigma**2
        p_low = stats.chi2.cdf(statistic, n - 1)
        assert 0.0005 < p_low < 0.9995, f"copy {k}: variance {sample.var().item():.5f} vs {sigma**2:.5f}"


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_harmonic_weights_cancel_alpha_scaled_noise(m, seed):
    config = ServerConfig(copies=m, fixed_seed=seed)
    alphas = alphas_for_round(config, randomness.new_round_secret(seed, 1))
    noise = zero_sum_noise(torch.Size([64]), 1.0, generators(m, seed))
    scaled = [alpha * eps for alpha, eps in zip(alphas, noise)]
    combined = sum(w * eps for w, eps in zip(harmonic_weights(alphas), scaled))
    assert combined.abs().max() < 1e-5


def test_a_plain_average_does_not_cancel_alpha_scaled_noise():
    alphas = alphas_for_round(ServerConfig(copies=3, alpha_mode="public"), b"x" * 16)
    noise = zero_sum_noise(torch.Size([64]), 1.0, generators(3))
    average = sum(alpha * eps for alpha, eps in zip(alphas, noise)) / 3
    assert average.abs().max() > 0.1


def test_public_alphas_are_evenly_spaced_on_one_to_two():
    assert alphas_for_round(ServerConfig(copies=3, alpha_mode="public"), b"x" * 16) == [1.0, 1.5, 2.0]


def test_the_public_schedules_old_name_is_still_read():
    """A state.json or YAML written before the rename says alpha_mode "reference"."""
    old = ServerConfig.from_dict({**ServerConfig().to_dict(), "alpha_mode": "reference"})
    assert old.alpha_mode == "public"
    assert alphas_for_round(old, b"x" * 16) == [1.0, 1.5, 2.0]


def test_explicit_alphas_are_used_as_given():
    assert alphas_for_round(ServerConfig(copies=2, alpha_mode="list", alphas=[1.0, 3.0]), b"x" * 16) == [1.0, 3.0]


def test_secret_alphas_are_fresh_per_secret_and_in_range():
    config = ServerConfig(copies=4, alpha_max=2.0)
    first = alphas_for_round(config, randomness.new_round_secret(None, 1))
    second = alphas_for_round(config, randomness.new_round_secret(None, 1))
    assert first != second
    assert all(1.0 <= alpha <= 2.0 for alpha in first + second)


def test_round_secrets_come_from_a_csprng_unless_a_seed_is_fixed():
    assert randomness.new_round_secret(None, 1) != randomness.new_round_secret(None, 1)
    assert len(randomness.new_round_secret(None, 1)) == 16
    assert randomness.new_round_secret(5, 1) == randomness.new_round_secret(5, 1)
    assert randomness.new_round_secret(5, 1) != randomness.new_round_secret(5, 2)


def test_generators_are_independent_per_name_and_copy():
    keys = RoundKeys(b"s" * 16)
    draw = lambda name, k: torch.randn(4, generator=keys.noise(k, name))
    assert torch.equal(draw("a", 1), draw("a", 1))
    assert not torch.equal(draw("a", 1), draw("a", 2))
    assert not torch.equal(draw("a", 1), draw("b", 1))


@pytest.mark.parametrize("bad", [dict(copies=1), dict(kappa=-1), dict(alpha_mode="list", alphas=[1.0]), dict(alpha_mode="nope"), dict(rounds=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ServerConfig(**bad)
