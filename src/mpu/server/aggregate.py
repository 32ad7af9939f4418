"""Post-Process: map each update back with T_k^-1, combine with harmonic weights, apply.

    Delta_k = T_k^-1(Delta'_k)                       (transforms regenerated from the round secret)
    Delta   = sum_k (1/alpha_k) Delta_k / sum_k (1/alpha_k)     (float32, one tensor at a time)
    theta  <- theta + eta * Delta

Before anything is written, every return passes :func:`mpu.server.validate.find_returns` (paths,
manifest fields, headers, names, shapes) and the returns must have been trained alike (method,
hyperparameters, training options, step count) unless ``allow_mixed``. While the tensors stream, each
Delta_k is checked for NaN/Inf and against the per-block poisoning bound

    ||Delta_k,l|| / ||theta_l|| <= max_update_ratio     for every block l and every tensor outside the blocks

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
from transformers import AutoConfig

from mpu.checkpoint import CheckpointReader, ShardedWriter, copy_model_files, staging_dir
from mpu.errors import InputError, MPUError
from mpu.protocol import RoundKeys
from mpu.reparam import get_adapter
from mpu.server.noise import alphas_for_round, default_device, harmonic_weights, sum_sq
from mpu.server.validate import ReturnedUpdate, find_returns
from mpu.server.workdir import Workdir

log = logging.getLogger(__name__)

# What must agree between the returns that are combined (``--allow-mixed`` lifts it).
COMPARED = ("method", "kind", "hparams", "training", "steps", "encoding", "dp")
MAX_REPORTED_BLOCKS = 8


@dataclass
class AggregateReport:
    """What one aggregation did: norms per copy, the step, the new model folder, the settings combined,
    the largest per-block ratio of each copy against the bound, and the rounds planned."""

    round: int
    update_norms: dict[int, float]  # ||Delta'_k|| per copy
    step_norm: float  # ||eta * Delta||
    model_dir: Path
    combined: dict[str, Any] = field(default_factory=dict)  # the COMPARED settings; per copy where they differ
    mixed: list[str] = field(default_factory=list)  # the settings that differ (only with allow_mixed)
    max_block_ratio: dict[int, tuple[str, float]] = field(default_factory=dict)  # copy -> (group, ratio)
    bound: float = 0.0  # max_update_ratio
    rounds: int = 1  # rounds planned


def combined_settings(updates: list[ReturnedUpdate]) -> tuple[dict[str, Any], list[str]]:
    """What the returns were trained with (``COMPARED``), and a line per setting that differs between
    copies (``hparams.beta: copy 1 0.1, copy 2 0.5``). A setting that differs is reported per copy."""
    combined: dict[str, Any] = {"copies": [update.copy_id for update in updates]}
    mixed = []
    for key in COMPARED:
        values = [getattr(update.manifest, key) for update in updates]
        if all(value == values[0] for value in values):
            combined[key] = values[0]
            continue
        combined[key] = {str(update.copy_id): value for update, value in zip(updates, values)}
        if all(isinstance(value, dict) for value in values):
            for sub in sorted(set().union(*values)):
                subvalues = [value.get(sub) for value in values]
                if any(value != subvalues[0] for value in subvalues):
                    mixed.append(f"{key}.{sub}: " + ", ".join(f"copy {u.copy_id} {v!r}" for u, v in zip(updates, subvalues)))
        else:
            mixed.append(f"{key}: " + ", ".join(f"copy {u.copy_id} {v!r}" for u, v in zip(updates, values)))
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


def _finite_sum_sq(delta: torch.Tensor, update: ReturnedUpdate, name: str) -> float:
    """||delta||^2, refusing NaN/Inf. The norm is finite when every value is, so the element-wise
    check runs only when it is not."""
    value = sum_sq(delta)
    if not math.isfinite(value) and not torch.isfinite(delta).all():
        raise InputError(update.tensor_file(name), f"tensor {name} contains NaN or Inf")
    return value  # finite values too large to square in float32 give inf here: the bound refuses them


def aggregate(workdir: str | Path, returns_dir: str | Path, *, progress: bool = True, device: str | None = None,
              allow_mixed: bool = False) -> AggregateReport:
    """Validate the returns in ``returns_dir``, combine them and advance the round.

    Raises InputError (naming the file and the reason; the work directory unchanged) for any return
    :func:`find_returns` refuses, for returns trained with different settings unless ``allow_mixed``,
    for NaN/Inf, and for a Delta_k above the per-block bound (listing every group above it).
    """
    work = Workdir(workdir)
    state = work.load()
    config = state.config
    published = state.published
    if published is None or published.round != state.current_round:
        raise MPUError(f"round {state.current_round} has not been published; run `mpu server publish` first")
    round_number = state.current_round
    model = CheckpointReader(work.model_path(state))
    updates = find_returns(returns_dir, published, model)
    combined, mixed = combined_settings(updates)
    if mixed and not allow_mixed:
        raise InputError(returns_dir, "returns were trained with different settings (" + "; ".join(mixed)
                         + "); combine them only on purpose, with --allow-mixed")
    for line in mixed:
        log.warning("combining returns trained with different settings: %s", line)
    secret = work.round_secret(round_number, config.fixed_seed, create=False)
    keys = RoundKeys(secret)
    weights = harmonic_weights(alphas_for_round(config, secret))
    adapter = get_adapter(AutoConfig.from_pretrained(work.model_path(state)), config.reparam)
    bound = config.max_update_ratio
    device = torch.device(device) if device else default_device()

    norms_sq = [0.0] * len(updates)
    largest: list[tuple[str, float]] = [("", 0.0)] * len(updates)
    above: list[list[tuple[str, float]]] = [[] for _ in updates]
    step_sq = 0.0
    new_rel = f"models/round-{round_number}"
    with staging_dir(work.path / new_rel, replace=True) as stage:
        writer = ShardedWriter(stage)
        # The same block groups as publish drew its transforms for (the model's blocks, any family).
        for layer, names in tqdm(adapter.block_groups(model.names()), desc=f"aggregate round {round_number}", disable=not progress):
            transforms = [None] * len(updates)
            if layer is not None:
                transforms = [adapter.sample(layer, keys.transform(u.copy_id, layer)) for u in updates]
            new_tensors = {}
            theta_sq, block_sq = 0.0, [0.0] * len(updates)
            for name in names:
                theta = model.get(name, device).to(torch.float32)
                theta_sq += sum_sq(theta)
                step = None
                for k, update in enumerate(updates):
                    delta = update.dense(name, theta.shape).to(device)
                    norms_sq[k] += _finite_sum_sq(delta, update, name)
                    if transforms[k] is not None:
                        delta = adapter.apply(transforms[k], name, delta, inverse=True)
                    block_sq[k] += sum_sq(delta)
                    if step is None:
                        step = delta.mul(weights[k] * config.eta)
                    else:
                        step.add_(delta, alpha=weights[k] * config.eta)
                step_sq += sum_sq(step)
                new_tensors[name] = theta.add_(step)
            group = block_label(layer, names)
            for k in range(len(updates)):
                ratio = block_ratio(block_sq[k], theta_sq)
                if not ratio <= largest[k][1]:
                    largest[k] = (group, ratio)
                if not ratio <= bound:
                    above[k].append((group, ratio))
            if not any(above):  # after a refusal nothing more is written; the groups are still measured
                writer.write_shard(new_tensors)
        # Checked before the new model is committed: the staging folder is dropped on error.
        for update, groups in zip(updates, above):
            if groups:
                listed = ", ".join(f"{group} {ratio:.3g}" for group, ratio in groups[:MAX_REPORTED_BLOCKS])
                more = f" and {len(groups) - MAX_REPORTED_BLOCKS} more" if len(groups) > MAX_REPORTED_BLOCKS else ""
                others = [u.copy_id for u, g in zip(updates, above) if g and u is not update]
                raise InputError(update.path, f"update changes {len(groups)} group(s) by more than the bound "
                                              f"||Delta_block|| / ||theta_block|| <= {bound:g} (max_update_ratio): {listed}{more}"
                                              + (f"; copies {others} too" if others else ""))
        writer.finish()
        copy_model_files(work.model_path(state), stage)

    state.history.append({
        "round": round_number,
        "update_norms": [math.sqrt(n) for n in norms_sq],
        "step_norm": math.sqrt(step_sq),
        "methods": sorted({str(u.manifest.method) for u in updates}),
        "combined": combined,
        "mixed": mixed,
        "max_block_ratio": [{"copy": u.copy_id, "group": g, "ratio": r} for u, (g, r) in zip(updates, largest)],
    })
    state.rounds_done = round_number
    state.model_dir = new_rel
    state.published = None
    work.save(state)  # the commit point
    work.clean_stale(state)
    return AggregateReport(round_number, {u.copy_id: math.sqrt(n) for u, n in zip(updates, norms_sq)}, math.sqrt(step_sq),
                           work.path / new_rel, combined, mixed, {u.copy_id: largest[k] for k, u in enumerate(updates)},
                           bound, config.rounds)
