"""A stronger server-side membership test: the offline likelihood-ratio attack (LiRA).

The loss-increase test of :mod:`mpu.audit.membership` ranks items by one raw number,
``s(x) = NLL(theta + Delta, x) - NLL(theta, x)``. Items differ in how much ANY unlearning update moves
them (an author's other answers, short answers, rare tokens), and that spread hides the forget set when
the update is small or noisy. LiRA (Carlini et al. 2022, "Membership Inference Attacks From First
Principles", offline variant, their Section VI-C) calibrates each item against its own behaviour:

1. the server, which holds theta and its training data, runs R *reference* unlearning runs from theta
   with the method and settings the update manifest records, each forgetting a set of candidate items
   it picked itself (:func:`shadow_forget_sets`), and scores every candidate under every reference;
2. per item x, the scores of the references that did NOT forget x (its "OUT" scores) are fitted with a
   Gaussian N(mu_x, sd_x^2) (or one pooled sd when there are few references, their "global variance");
3. the item's membership score is the one-sided likelihood ratio test statistic
   ``-log Pr[Z >= s(x)], Z ~ N(mu_x, sd_x^2)``: large when the returned update moved x further than
   updates that did not forget it.

Only numbers come in here; producing the reference updates (training) is the caller's (see
``benchmarks/dp_frontier.py``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm


def shadow_forget_sets(n_items: int, set_size: int, runs: int, seed: int = 0) -> np.ndarray:
    """Which candidate items each of ``runs`` reference runs forgets, balanced so that every item is
    left OUT of as many runs as possible.

    The items are shuffled (``seed``) and cut into ``ceil(n_items / set_size)`` chunks; run r forgets
    chunk ``r mod chunks`` (a fresh shuffle each full cycle). So an item is forgotten by at most
    ``ceil(runs / chunks)`` runs and left out of the rest.

    Returns a bool array of shape ``(runs, n_items)``, True where run r forgets item i. Raises
    ``ValueError`` unless ``0 < set_size < n_items`` and ``runs >= 1``.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if not 0 < set_size < n_items:
        raise ValueError(f"set_size must be in (0, n_items={n_items}), got {set_size}")
    rng = np.random.default_rng(seed)
    chunks = -(-n_items // set_size)
    members = np.zeros((runs, n_items), dtype=bool)
    order = rng.permutation(n_items)
    for r in range(runs):
        if r and r % chunks == 0:
            order = rng.permutation(n_items)
        c = r % chunks
        members[r, order[c * set_size:(c + 1) * set_size]] = True
    return members


def lira_offline(target: np.ndarray, reference: np.ndarray, reference_members: np.ndarray | None = None,
                 global_variance: bool = False, min_std: float = 1e-6) -> np.ndarray:
    """Offline LiRA membership scores (higher = more likely forgotten).

    Args:
        target: shape ``(n,)``, each item's score under the update being tested (e.g. its loss
            increase, nats).
        reference: shape ``(R, n)``, the same score under R reference updates.
        reference_members: bool, shape ``(R, n)``: True where reference r forgot item i (those
            entries are ignored: only OUT scores are fitted). ``None``: every reference is OUT.
        global_variance: one sd pooled over all items' OUT residuals instead of one per item (the
            paper's choice for few references; needed when an item has a single OUT score).
        min_std: floor on the sd, in the score's unit (no division by zero for constant scores).

    Returns:
        shape ``(n,)``: ``-log Pr[Z >= target_i]`` for ``Z ~ N(mu_i, sd_i^2)`` fitted to item i's OUT
        scores (``scipy.stats.norm.logsf``; stays finite far in the tail).

    Raises:
        ValueError: mismatched shapes, an item with no OUT score, or (per-item variance) an item with
            fewer than two OUT scores.
    """
    target = np.asarray(target, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if target.ndim != 1 or reference.ndim != 2 or reference.shape[1] != target.shape[0]:
        raise ValueError(f"target must be (n,) and reference (R, n); got {target.shape} and {reference.shape}")
    out = np.ones_like(reference, dtype=bool)
    if reference_members is not None:
        members = np.asarray(reference_members, dtype=bool)
        if members.shape != reference.shape:
            raise ValueError(f"reference_members must have the reference's shape {reference.shape}, got {members.shape}")
        out = ~members
    counts = out.sum(axis=0)
    if (counts < 1).any():
        raise ValueError(f"{int((counts < 1).sum())} item(s) have no OUT reference (every reference forgot them)")
    mu = np.where(out, reference, 0.0).sum(axis=0) / counts
    residual = np.where(out, reference - mu, 0.0)
    if global_variance:
        dof = max(int(out.sum()) - target.shape[0], 1)
        sd = np.full_like(mu, np.sqrt((residual ** 2).sum() / dof))
    else:
        if (counts < 2).any():
            raise ValueError("per-item variance needs >= 2 OUT references for every item; pass global_variance=True")
        sd = np.sqrt((residual ** 2).sum(axis=0) / (counts - 1))
    sd = np.maximum(sd, min_std)
    return -norm.logsf(target, loc=mu, scale=sd)
