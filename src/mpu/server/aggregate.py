"""Post-Process: map each update back with T_k^-1, combine with the round's weights, apply.

    Delta_k = T_k^-1(Delta'_k)                       (transforms regenerated from the round secret)
    Delta   = sum_k w_k Delta_k                      (float32, one tensor at a time)
    theta  <- theta + eta * Delta

The weights w_k come from the combination rule (:mod:`mpu.server.combine`): by default the harmonic
ones, w_k = (1/alpha_k) / sum_j (1/alpha_j), which cancel the zero-sum noise. The round's steps are
:meth:`mpu.server.round.Round.aggregate`; this module holds the streaming and the checks.

Before anything is written, every return passes :func:`mpu.server.validate.find_returns` (paths,
manifest fields, headers, names, shapes) and the returns must have been trained alike (method,
hyperparameters, training options, step count) unless ``allow_mixed``. While the tensors stream, each
Delta_k is checked for NaN/Inf and against the poisoning bound (per block and per tensor of a block)

    ||Delta_k,l|| / ||theta_l|| <= max_update_ratio     for every block l and every tensor outside the blocks
    ||Delta_k,t|| / ||theta_t|| <= 1.8 max_update_ratio for every tensor t of a block (tensors_above)

(Frobenius norms over the group; the groups of Pre-Process, ``Adapter.block_groups``: one per
transformer block, and every tensor outside the blocks (embeddings, final norm, LM head) its own). The new theta is built in a staging folder that is dropped
on any refusal, and becomes current only when ``state.json`` names it, so a rejected return or an
interrupted run leaves the work directory byte-identical.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mpu.checkpoint import CheckpointReader, ShardedWriter
from mpu.errors import InputError, shown
from mpu.protocol import RoundKeys
from mpu.protocol.update import same_setting
from mpu.reparam import Adapter
from mpu.server.combine import DEFAULT_COMBINE, CombineRule
from mpu.server.noise import sum_sq
from mpu.server.validate import ReturnedUpdate, find_returns  # noqa: F401  (find_returns: re-exported for callers)

log = logging.getLogger(__name__)

# What must agree between the returns that are combined (``--allow-mixed`` lifts it).
COMPARED = ("method", "kind", "hparams", "training", "steps", "encoding", "dp")
MAX_REPORTED_BLOCKS = 8


@dataclass
class AggregateReport:
    """What one aggregation did: norms per copy, the step, the new model folder, the settings combined,
    the largest per-block ratio of each copy against the bound, the rounds planned, and the
    combination rule with its weights."""

    round: int
    update_norms: dict[int, float]  # ||Delta'_k|| per copy
    step_norm: float  # ||eta * Delta||
    model_dir: Path
    combined: dict[str, Any] = field(default_factory=dict)  # the COMPARED settings; per copy where they differ
    mixed: list[str] = field(default_factory=list)  # the settings that differ (only with allow_mixed)
    max_block_ratio: dict[int, tuple[str, float]] = field(default_factory=dict)  # copy -> (group, ratio)
    bound: float = 0.0  # max_update_ratio
    rounds: int = 1  # rounds planned
    combine: str = DEFAULT_COMBINE  # the combination rule's name
    weights: dict[int, float] = field(default_factory=dict)  # copy -> w_k


def combined_settings(updates: list[ReturnedUpdate]) -> tuple[dict[str, Any], list[str]]:
    """What the returns were trained with (``COMPARED``), and a line per setting that differs between
    copies (``hparams.beta: copy 1 0.1, copy 2 0.5``). A setting that differs is reported per copy."""
    combined: dict[str, Any] = {"copies": [update.copy_id for update in updates]}
    mixed = []
    for key in COMPARED:
        values = [getattr(update.manifest, key) for update in updates]
        if all(same_setting(value, values[0]) for value in values):
            combined[key] = values[0]
            continue
        combined[key] = {str(update.copy_id): value for update, value in zip(updates, values)}
        if all(isinstance(value, dict) for value in values):
            for sub in sorted(set().union(*values)):
                subvalues = [value.get(sub) for value in values]
                if any(not same_setting(value, subvalues[0]) for value in subvalues):
                    mixed.append(f"{key}.{sub}: " + ", ".join(f"copy {u.copy_id} {shown(v, 100)}" for u, v in zip(updates, subvalues)))
        else:
            mixed.append(f"{key}: " + ", ".join(f"copy {u.copy_id} {shown(v, 100)}" for u, v in zip(updates, values)))
    return combined, mixed


def block_label(layer: int | None, names: list[str]) -> str:
    """The name a group is reported under: ``layer.<l>`` for a block, the tensor's name otherwise."""
    return f"layer.{layer}" if layer is not None else names[0]


def block_ratio(delta_sq: float, theta_sq: float) -> float:
    """||Delta_l|| / ||theta_l|| from the squared Frobenius norms of one group (0 for no change; inf
    for a change of a group whose weights are all zero)."""
    if delta_sq == 0:
        return 0.0
    if theta_sq == 0:
        return math.inf
    return math.sqrt(delta_sq / theta_sq)


# A tensor whose RMS is below this fraction of its group's RMS (a bias near zero) is left to the group's
# bound: relative to its own norm any honest change to it would be a huge ratio.
NEGLIGIBLE_TENSOR_RMS = 0.1
# Each tensor of a block may change by this many times max_update_ratio relative to itself (0.9 by
# default): below 1, so that no tensor is erased (a ratio of 1) or negated (2), above the block's
# bound, since an honest update moves some small tensors of a block more than the block (LoRA updates
# of the tiny test model: 0.5-0.6 on attention matrices under a block ratio below 0.5).
TENSOR_BOUND_FACTOR = 1.8


def tensors_above(tensors: list[tuple[str, float, int, list[float]]], k: int, theta_sq: float, bound: float
                  ) -> list[tuple[str, float]]:
    """The tensors of one group whose change by update ``k`` is above ``bound`` relative to the tensor
    itself, ``||Delta_t|| / ||theta_t||`` (the caller passes ``TENSOR_BOUND_FACTOR`` x max_update_ratio). A block's bound alone let one kind of tensor take the whole
    budget: zeroing both RMSNorm weights of every block (which then adds nothing to the residual
    stream), or negating every attention and MLP matrix of a block whose norm weights dominate its
    norm, stayed under 0.5 of the block. Tensors whose RMS is below ``NEGLIGIBLE_TENSOR_RMS`` of the
    group's (biases near zero) are left to the group's bound. ``tensors``: (name, ||theta_t||^2, size,
    [||Delta_k,t||^2 per update]) of the group; ``theta_sq``: the group's ||theta||^2."""
    size = sum(numel for _, _, numel, _ in tensors)
    above = []
    for name, tensor_sq, numel, deltas in tensors:
        if tensor_sq < NEGLIGIBLE_TENSOR_RMS ** 2 * theta_sq * numel / size:
            continue
        ratio = block_ratio(deltas[k], tensor_sq)
        if not ratio <= bound:
            above.append((name, ratio))
    return above


def _finite_sum_sq(delta: torch.Tensor, update: ReturnedUpdate, name: str) -> float:
    """||delta||^2, refusing NaN/Inf. The norm is finite when every value is, so the element-wise
    check runs only when it is not."""
    value = sum_sq(delta)
    if not math.isfinite(value) and not torch.isfinite(delta).all():
        raise InputError(update.tensor_file(name), f"tensor {name} contains NaN or Inf")
    return value  # finite values too large to square in float32 give inf here: the bound refuses them


def aggregate(workdir: str | Path, returns_dir: str | Path, *, progress: bool = True, device: str | None = None,
              allow_mixed: bool = False, combine: "str | CombineRule" = DEFAULT_COMBINE) -> AggregateReport:
    """Post-Process of the current round: :meth:`mpu.server.round.Round.aggregate` on ``workdir``.

    ``returns_dir``: the folder of ``update-K`` sub-folders; ``combine``: the combination rule's name
    (:data:`mpu.server.combine.COMBINE_RULES`) or a rule object; ``device``: where the arithmetic runs
    (default: the GPU when there is one). Raises MPUError when the round is not published or the rule
    unknown, InputError (naming the file and the reason; the work directory unchanged) for any return
    :func:`find_returns` refuses, for returns trained with different settings unless ``allow_mixed``,
    for NaN/Inf, and for a Delta_k above the per-block bound (listing every group above it).
    """
    from mpu.server.round import Round

    return Round(workdir, progress=progress, device=device).aggregate(returns_dir, combine=combine, allow_mixed=allow_mixed)


@dataclass
class CombinedStep:
    """What streaming the combination measured: per copy (in ``updates`` order) ||Delta'_k||^2, the group
    with the largest ratio ||Delta_k,l|| / ||theta_l|| and every group above the bound; ||eta Delta||^2."""

    norms_sq: list[float]
    largest: list[tuple[str, float]]
    above: list[list[tuple[str, float]]]
    step_sq: float = 0.0


@dataclass
class Combination:
    """What every group of one Post-Process needs: the model's ``adapter``, the round's ``keys`` (the
    transforms T_k are regenerated from them), ``weights[k]`` for ``updates[k]``, the server rate
    ``eta``, the per-block ``bound`` (max_update_ratio) and the ``device`` the arithmetic runs on."""

    adapter: Adapter
    keys: RoundKeys
    weights: list[float]
    eta: float
    bound: float
    device: torch.device


def write_combined(combination: Combination, model: CheckpointReader, updates: list[ReturnedUpdate], stage: Path, *,
                   desc: str = "aggregate", progress: bool = True) -> CombinedStep:
    """Stream theta + eta sum_k w_k T_k^-1(Delta'_k) group by group into sharded files in ``stage``.

    The groups are the ones publish drew its transforms for (``Adapter.block_groups``). Each tensor is
    read, combined and written in float32 on ``combination.device``, one group at a time. Once any
    group is above the bound nothing more is written (the groups are still measured, so the refusal
    can list them all); the caller refuses with :func:`refuse_above_bound` and drops ``stage``.
    Raises InputError for a Delta'_k with NaN/Inf.
    """
    adapter, keys, weights, eta, bound, device = (combination.adapter, combination.keys, combination.weights,
                                                  combination.eta, combination.bound, combination.device)
    step = CombinedStep([0.0] * len(updates), [("", 0.0)] * len(updates), [[] for _ in updates])
    writer = ShardedWriter(stage)
    for layer, names in tqdm(adapter.block_groups(model.names()), desc=desc, disable=not progress):
        transforms = [None] * len(updates)
        if layer is not None:
            transforms = [adapter.sample(layer, keys.transform(u.copy_id, layer)) for u in updates]
        new_tensors = {}
        theta_sq, block_sq = 0.0, [0.0] * len(updates)
        tensors: list[tuple[str, float, int, list[float]]] = []   # name, ||theta_t||^2, size, ||Delta_k,t||^2
        for name in names:
            theta = model.get(name, device).to(torch.float32)
            tensors.append((name, sum_sq(theta), theta.numel(), [0.0] * len(updates)))
            theta_sq += tensors[-1][1]
            change = None
            for k, update in enumerate(updates):
                delta = update.dense(name, theta.shape).to(device)
                step.norms_sq[k] += _finite_sum_sq(delta, update, name)
                if transforms[k] is not None:
                    delta = adapter.apply(transforms[k], name, delta, inverse=True)
                tensors[-1][3][k] = sum_sq(delta)
                block_sq[k] += tensors[-1][3][k]
                if change is None:
                    change = delta.mul(weights[k] * eta)
                else:
                    change.add_(delta, alpha=weights[k] * eta)
            step.step_sq += sum_sq(change)
            new_tensors[name] = theta.add_(change)
        group = block_label(layer, names)
        for k in range(len(updates)):
            ratio = block_ratio(block_sq[k], theta_sq)
            if not ratio <= step.largest[k][1]:
                step.largest[k] = (group, ratio)
            if not ratio <= bound:
                step.above[k].append((group, ratio))
            elif len(tensors) > 1:
                step.above[k] += tensors_above(tensors, k, theta_sq, TENSOR_BOUND_FACTOR * bound)
        if not any(step.above):  # after a refusal nothing more is written; the groups are still measured
            writer.write_shard(new_tensors)
    writer.finish()
    return step


def refuse_above_bound(updates: list[ReturnedUpdate], above: list[list[tuple[str, float]]], bound: float) -> None:
    """Raise InputError naming the first update with a group above ``bound`` (``above[k]``: update k's
    groups and ratios), up to MAX_REPORTED_BLOCKS of its groups and the other copies above it; None
    when no group is above."""
    for update, groups in zip(updates, above):
        if groups:
            listed = ", ".join(f"{group} {ratio:.3g}" for group, ratio in groups[:MAX_REPORTED_BLOCKS])
            more = f" and {len(groups) - MAX_REPORTED_BLOCKS} more" if len(groups) > MAX_REPORTED_BLOCKS else ""
            others = [u.copy_id for u, g in zip(updates, above) if g and u is not update]
            raise InputError(update.path, f"update changes {len(groups)} group(s) by more than the bound "
                                          f"||Delta_block|| / ||theta_block|| <= {bound:g} (max_update_ratio; for a tensor "
                                          f"of a block ||Delta_t|| / ||theta_t|| <= {TENSOR_BOUND_FACTOR * bound:g}): "
                                          f"{listed}{more}"
                                          + (f"; copies {others} too" if others else ""))
