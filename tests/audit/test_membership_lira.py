"""The offline likelihood-ratio membership test (mpu.audit.lira) on planted, seeded scores."""

from __future__ import annotations

import numpy as np
import pytest

from mpu.audit.lira import lira_offline, shadow_forget_sets
from mpu.audit.membership import auc

N_ITEMS, N_MEMBERS, RUNS = 200, 100, 8


def planted(signal: float, seed: int = 0):
    """Scores whose raw spread is mostly per-item difficulty (sd 3) and whose membership signal is
    ``signal`` on the first N_MEMBERS items; references forget balanced halves of the items."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 3.0, N_ITEMS)
    member = np.arange(N_ITEMS) < N_MEMBERS
    shadows = shadow_forget_sets(N_ITEMS, N_ITEMS // 2, RUNS, seed=seed)
    reference = difficulty + rng.normal(0.0, 0.5, (RUNS, N_ITEMS)) + 1.5 * shadows
    target = difficulty + rng.normal(0.0, 0.5, N_ITEMS) + signal * member
    return target, reference, shadows, member


@pytest.mark.parametrize("global_variance", [False, True])
def test_planted_signal_is_found_where_the_raw_score_misses_it(global_variance):
    target, reference, shadows, member = planted(signal=1.5)

    scores = lira_offline(target, reference, shadows, global_variance=global_variance)

    assert auc(scores[member], scores[~member]) > 0.9
    assert auc(target[member], target[~member]) < 0.75  # the raw loss-increase test, for contrast


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uninformative_update_scores_chance(seed):
    target, reference, shadows, member = planted(signal=0.0, seed=seed)

    scores = lira_offline(target, reference, shadows, global_variance=True)

    assert abs(auc(scores[member], scores[~member]) - 0.5) < 0.1


def test_references_that_forgot_the_item_are_ignored():
    target, reference, shadows, _ = planted(signal=1.5)
    spoiled = np.where(shadows, 1e6, reference)  # IN scores carry no weight in the OUT fit

    assert np.allclose(lira_offline(target, spoiled, shadows), lira_offline(target, reference, shadows))


def test_score_is_the_one_sided_gaussian_tail():
    reference = np.array([[0.0, 10.0], [2.0, 14.0]])  # item 0: mu 1, sd sqrt(2); item 1: mu 12, sd sqrt(8)

    scores = lira_offline(np.array([1.0, 12.0 + 2 * np.sqrt(8.0)]), reference)

    assert scores[0] == pytest.approx(-np.log(0.5))
    assert scores[1] == pytest.approx(-np.log(0.0227501319), rel=1e-6)  # Pr[Z >= 2 sd]


def test_shadow_sets_leave_every_item_out_of_most_runs():
    members = shadow_forget_sets(120, 40, 4, seed=3)

    assert members.shape == (4, 120)
    assert (members.sum(axis=1) == 40).all()
    assert (members.sum(axis=0) <= 2).all() and ((~members).sum(axis=0) >= 2).all()


@pytest.mark.parametrize("call, match", [
    (lambda: lira_offline(np.zeros(3), np.zeros((2, 4))), "reference"),
    (lambda: lira_offline(np.zeros(2), np.zeros((2, 2)), np.ones((2, 2), dtype=bool)), "no OUT"),
    (lambda: lira_offline(np.zeros(2), np.zeros((1, 2))), "global_variance"),
    (lambda: lira_offline(np.zeros(2), np.zeros((2, 2)), np.zeros((3, 2), dtype=bool)), "shape"),
    (lambda: shadow_forget_sets(10, 10, 2), "set_size"),
    (lambda: shadow_forget_sets(10, 5, 0), "runs"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
