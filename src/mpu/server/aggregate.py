"""Post-Process (SPEC §5): map each update back with T_k^-1, combine with harmonic weights, apply.

    Delta_k = T_k^-1(Delta'_k)                       (transforms regenerated from the round secret)
    Delta   = sum_k (1/alpha_k) Delta_k / sum_k (1/alpha_k)     (float32, one tensor at a time)
    theta  <- theta + eta * Delta

The new theta is built in a staging folder and becomes current only when ``state.json`` names it,
so a rejected return or an interrupted run leaves the work directory as it was.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from mpu.checkpoint import CheckpointReader, ShardedWriter, copy_model_files, staging_dir
from mpu.errors import InputError, MPUError
from mpu.reparam import get_adapter
from mpu.server import randomness
from mpu.server.noise import alphas_for_round, default_device, harmonic_weights, sum_sq
from mpu.server.validate import ReturnedUpdate, find_returns
from mpu.server.workdir import Workdir

log = logging.getLogger(__name__)


@dataclass
class AggregateReport:
    round: int
    update_norms: dict[int, float]  # ||Delta'_k|| per copy
    step_norm: float  # ||eta * Delta||
    model_dir: Path


def _finite_sum_sq(delta: torch.Tensor, update: ReturnedUpdate, name: str) -> float:
    """||delta||^2, refusing NaN/Inf. The norm is finite when every value is, so the element-wise
    check runs only when it is not."""
    value = sum_sq(delta)
    if not math.isfinite(value) and not torch.isfinite(delta).all():
        raise InputError(update.tensor_file(name), f"tensor {name} contains NaN or Inf")
    return value  # finite values too large to square in float32 give inf here: the norm bound refuses them


def aggregate(workdir: str | Path, returns_dir: str | Path, *, progress: bool = True, device: str | None = None) -> AggregateReport:
    work = Workdir(workdir)
    state = work.load()
    config = state.config
    published = state.published
    if not published or published["round"] != state.current_round:
        raise MPUError(f"round {state.current_round} has not been published; run `mpu server publish` first")
    round_number = state.current_round
    model = CheckpointReader(work.model_path(state))
    updates = find_returns(returns_dir, published, model)
    secret = work.round_secret(round_number, config.fixed_seed, create=False)
    weights = harmonic_weights(alphas_for_round(config, secret))
    adapter = get_adapter(AutoConfig.from_pretrained(work.model_path(state)), config.reparam)
    bound = config.max_update_ratio * published["model_norm"]
    device = torch.device(device) if device else default_device()

    norms_sq = [0.0] * len(updates)
    step_sq = 0.0
    new_rel = f"models/round-{round_number}"
    with staging_dir(work.path / new_rel, replace=True) as stage:
        writer = ShardedWriter(stage)
        # The same block groups as publish drew its transforms for (the model's blocks, any family).
        for layer, names in tqdm(adapter.block_groups(model.names()), desc=f"aggregate round {round_number}", disable=not progress):
            transforms = [None] * len(updates)
            if layer is not None:
                transforms = [adapter.sample(layer, randomness.generator(secret, "reparam", f"layer.{layer}", u.copy_id)) for u in updates]
            new_tensors = {}
            for name in names:
                theta = model.get(name, device).to(torch.float32)
                step = None
                for k, update in enumerate(updates):
                    delta = update.dense(name, theta.shape).to(device)
                    norms_sq[k] += _finite_sum_sq(delta, update, name)
                    if transforms[k] is not None:
                        delta = adapter.apply(transforms[k], name, delta, inverse=True)
                    if step is None:
                        step = delta.mul(weights[k] * config.eta)
                    else:
                        step.add_(delta, alpha=weights[k] * config.eta)
                step_sq += sum_sq(step)
                new_tensors[name] = theta.add_(step)
            writer.write_shard(new_tensors)
        # Checked before the new model is committed: the staging folder is dropped on error.
        for update, norm_sq in zip(updates, norms_sq):
            if math.sqrt(norm_sq) > bound:
                raise InputError(update.path, f"update norm {math.sqrt(norm_sq):.4g} exceeds the bound {bound:.4g} (max_update_ratio {config.max_update_ratio} x model norm)")
        writer.finish()
        copy_model_files(work.model_path(state), stage)

    state.history.append(
        {"round": round_number, "update_norms": [math.sqrt(n) for n in norms_sq], "step_norm": math.sqrt(step_sq),
         "methods": sorted({u.manifest.get("method", "?") for u in updates})}
    )
    state.rounds_done = round_number
    state.model_dir = new_rel
    state.published = None
    work.save(state)  # the commit point
    work.clean_stale(state)
    return AggregateReport(round_number, {u.copy_id: math.sqrt(n) for u, n in zip(updates, norms_sq)}, math.sqrt(step_sq), work.path / new_rel)
