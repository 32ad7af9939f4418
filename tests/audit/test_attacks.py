"""The attacks work: exact recovery without reparameterisation, and alignment finds the true transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from mpu.audit import Aligner, estimate_alphas, fit_orthogonal, fit_rope_orthogonal, harmonic_weights, optimal_weights, rope_angles, run_audit
from mpu.audit.alphas import model_distances
from mpu.reparam import ReparamConfig, maths
from mpu.server.config import ServerConfig
from tests.audit.helpers import publish_round, relative_truth, true_alphas, true_transforms

HARDENED = ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True)
ATTACKS = {"average", "harmonic-public", "harmonic-estimated", "aligned-average", "aligned-harmonic-public",
           "aligned-harmonic-estimated", "single-copy"}


def test_without_reparameterisation_and_public_alphas_theta_is_recovered_to_round_off(tmp_path, tiny_model_dir, tiny_base_dir):
    config = ServerConfig(copies=3, kappa=0.01, alpha_mode="public", independent_noise=0.0, fixed_seed=3, reparam=ReparamConfig(enabled=False))
    _, outbox = publish_round(tmp_path, tiny_model_dir, tiny_base_dir, config)

    report = run_audit(outbox, tiny_model_dir, tiny_base_dir, logit_sequences=4).report

    assert set(report["attacks"]) == ATTACKS
    single = report["attacks"]["single-copy"]["weights_error"]["raw"]["overall"]
    assert single > 1e-4  # each copy is visibly perturbed ...
    for name in ("harmonic-public", "aligned-harmonic-public"):
        attack = report["attacks"][name]
        # ... and the harmonic combination returns theta to float32 round-off of the published copies
        assert attack["weights_error"]["raw"]["overall"] < 1e-7, name
        assert attack["task_vector_error"]["raw"]["overall"] < 1e-5, name
        assert attack["logits"]["top1_agreement"] == 1.0 and attack["logits"]["mean_kl"] < 1e-12
    # alpha estimated from the distances alone comes close to the schedule
    assert np.allclose(report["alphas"]["estimated_aligned"]["alphas"], [1.0, 1.5, 2.0], rtol=0.05)
    # the plain average does not cancel the alpha-weighted noise
    assert report["attacks"]["average"]["weights_error"]["raw"]["overall"] > 10 * report["attacks"]["harmonic-public"]["weights_error"]["raw"]["overall"]
    assert report["summary"]["best_over_single_copy"] < 1e-3


@pytest.mark.parametrize("reparam", [ReparamConfig(), HARDENED], ids=["paper-transforms", "hardened-transforms"])
def test_alignment_recovers_the_true_transforms(tmp_path, tiny_model_dir, tiny_base_dir, reparam):
    # secret alphas; no independent share, so that recovery is exact once aligned
    config = ServerConfig(copies=3, kappa=0.01, fixed_seed=5, independent_noise=0.0, reparam=reparam)
    server, outbox = publish_round(tmp_path, tiny_model_dir, tiny_base_dir, config)
    hf = AutoConfig.from_pretrained(tiny_model_dir)
    geometry = Aligner(hf).geometry
    truth = true_transforms(server, tiny_model_dir)

    result = run_audit(outbox, tiny_model_dir, tiny_base_dir, logit_sequences=4)

    for k in (2, 3):
        for layer in range(hf.num_hidden_layers):
            fitted = result.alignments[k][layer].transform
            expected = relative_truth(truth[1][layer], truth[k][layer], geometry.n_kv, geometry.intermediate)
            assert torch.equal(fitted.ffn_perm, expected["ffn_perm"])
            assert torch.equal(fitted.kv_perm, expected["kv_perm"])
            assert torch.allclose(fitted.qk, expected["qk"], atol=2e-3)
            assert torch.allclose(fitted.vo, expected["vo"], atol=5e-3)
            # the same rotation angle in every RoPE plane, to a few milliradians
            diff = rope_angles(fitted.qk, geometry.rotary_dim) - rope_angles(expected["qk"], geometry.rotary_dim)
            assert float(torch.remainder(diff + math.pi, 2 * math.pi).sub(math.pi).abs().max()) < 2e-3
            if expected["ffn_scale"] is None:
                assert fitted.ffn_scale is None
            else:
                assert torch.allclose(fitted.ffn_scale, expected["ffn_scale"], rtol=1e-2)
        # the audit reports it: the matching agrees with the scorer's, and the copies line up
        per_copy = result.report["alignment"]["per_copy"][str(k)]
        assert per_copy["agreement_with_scorer"] == {"ffn_units": 1.0, "kv_groups": 1.0}
        assert per_copy["residual_before"] > 0.1 and per_copy["residual_after"] < 0.01
        for layer in range(hf.num_hidden_layers):
            assert per_copy["layers"][str(layer)]["kv_perm"] == expected_kv(truth, k, layer, geometry.n_kv)

    report = result.report
    # aligned and with alphas estimated from the copies, theta comes back far below one copy's error
    estimated = report["attacks"]["aligned-harmonic-estimated"]["task_vector_error"]["scored"]["overall"]
    single = report["attacks"]["single-copy"]["task_vector_error"]["scored"]["overall"]
    assert estimated < 0.02 * single
    assert np.allclose(report["alphas"]["estimated_aligned"]["alphas"], np.array(true_alphas(server)) / min(true_alphas(server)), rtol=0.05)
    assert report["attacks"]["aligned-harmonic-estimated"]["logits"]["top1_agreement"] == 1.0
    # without alignment the combination is not even a working model
    assert report["attacks"]["average"]["logits"]["top1_agreement"] < 0.9


def expected_kv(truth, k, layer, n_kv):
    t1, tk = truth[1][layer], truth[k][layer]
    ident = torch.arange(n_kv)
    p1 = t1.kv_perm if t1.kv_perm is not None else ident
    pk = tk.kv_perm if tk.kv_perm is not None else ident
    return torch.argsort(pk)[p1].tolist()


def test_independent_noise_leaves_an_error_floor(tmp_path, tiny_model_dir, tiny_base_dir):
    config = ServerConfig(copies=3, kappa=0.01, fixed_seed=5, alpha_mode="public", independent_noise=1.0)
    server, outbox = publish_round(tmp_path, tiny_model_dir, tiny_base_dir, config)
    report = run_audit(outbox, tiny_model_dir, tiny_base_dir, oracle_alphas=true_alphas(server), oracle_tau=1.0, logit_sequences=4).report
    single = report["attacks"]["single-copy"]["task_vector_error"]["scored"]["overall"]
    oracle = report["attacks"]["aligned-oracle"]["task_vector_error"]["scored"]["overall"]
    best = report["summary"]["best_error"]
    # no attack of this family beats the oracle combination by more than fitting noise; the floor is
    # a sizeable fraction of a single copy's error (about 1/sqrt(m) of the independent share)
    assert 0.2 * single < oracle < 0.6 * single
    assert best > 0.9 * oracle


def test_alpha_estimate_from_distances():
    for alphas in ([1.0, 1.5, 2.0], [1.3, 1.0, 1.9], [1.0, 1.2, 1.7, 1.4]):
        distances = 7.0 * model_distances(np.array(alphas))
        np.fill_diagonal(distances, 0)
        estimate = estimate_alphas(distances)
        assert np.allclose(estimate.alphas, np.array(alphas) / min(alphas), rtol=1e-6)
        assert np.allclose(harmonic_weights(estimate.alphas), harmonic_weights(alphas))
    assert estimate_alphas(np.array([[0, 1.0], [1.0, 0]])).alphas is None  # m = 2: not identifiable
    assert np.allclose(optimal_weights([1.0, 1.5, 2.0], 0.0), harmonic_weights([1.0, 1.5, 2.0]))


def test_procrustes_fits_are_exact_on_clean_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 40, dtype=torch.float64, generator=generator)
    rotation = maths.rope_plane_rotation(maths.uniform_angles((1, 6), generator), 16)[0]
    rotation[12:, 12:] = maths.haar_orthogonal(1, 4, generator)[0]  # partial rotary: 12 rotary dims
    fitted, residual = fit_rope_orthogonal(x, rotation @ x, rotary_dim=12)
    assert torch.allclose(fitted, rotation, atol=1e-10) and residual < 1e-18
    q = maths.haar_orthogonal(1, 16, generator)[0]
    fitted, residual = fit_orthogonal(x, q @ x)
    assert torch.allclose(fitted, q, atol=1e-10) and residual < 1e-18
