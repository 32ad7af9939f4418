"""Several data owners in one round: one returns folder of forget-size-weighted updates per copy.

Every owner unlearns on the same m published copies. Before the usual Post-Process, the server
combines, for each copy k, the owners' updates (all in copy k's coordinates, so T_k^-1 still applies
once, afterwards):

    Delta'_k = sum_o w_o Delta'_{k,o},     w_o = n_o / sum_o' n_o'

where n_o is owner o's forget-set size (rows, as the owner reports it). With one owner w = 1 and the
result equals that owner's update bit for bit. The weighted mean (not the plain sum) keeps the
server's step on the scale of one owner's update, so ``eta`` and the per-block bound
``max_update_ratio`` mean the same with any number of owners. :func:`mpu.server.aggregate.aggregate`
then applies T_k^-1 and the harmonic combination to this folder as to a single client's returns.

Checks: each owner's folder passes :func:`mpu.server.validate.find_returns` first (paths, manifest,
headers, names, shapes, this round's publication); the owners must have trained with the same
method, kind, hyperparameters and training options apart from the DP-SGD settings (InputError
naming the owner's manifest otherwise: each owner may tighten its own DP, and the combined manifest
records the weakest owner's guarantee); LoRA returns are refused (a sum of rank-r products is not rank r). The NaN/Inf
check and the per-block bound run on the combined update in ``aggregate``: the bound limits the
combined step, not each owner's share of it.

The combined ``update-K/update.json`` keeps the update manifest's schema (the first owner's fields;
``steps`` and ``seconds`` summed over owners, ``loss`` the weighted mean, ``encoding`` only when all
owners agree); ``owners.json`` next to the update folders records the sizes and weights.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from mpu.checkpoint import CheckpointReader, ShardedWriter, atomic_write_json, layer_groups, staging_dir
from mpu.checkpoint.files import PARTY_FILE_MODE
from mpu.errors import InputError, MPUError
from mpu.protocol import UPDATE_MANIFEST, UpdateManifest, update_folder
from mpu.protocol.update import MAX_STEPS, same_setting

AGREED = ("method", "kind", "hparams", "training")  # what every owner's update must share (training without dp_*)
OWNERS_FILE = "owners.json"


def owner_weights(sizes: list[int]) -> list[float]:
    """w_o = n_o / sum n (float64, then used as Python floats). Raises MPUError for no owners or a size < 1."""
    if not sizes or any(not isinstance(size, int) or size < 1 for size in sizes):
        raise MPUError(f"forget-set sizes must be positive integers, got {sizes}")
    total = sum(sizes)
    return [size / total for size in sizes]


def combine_returns(workdir: str | Path, owner_dirs: list[Path], sizes: list[int], out_dir: str | Path) -> Path:
    """Write ``out_dir`` (must not exist) with one ``update-K`` folder per published copy: the owners'
    updates of copy k weighted by their forget-set sizes. See the module docstring for the checks."""
    from mpu.server.validate import find_returns
    from mpu.server.workdir import Workdir

    if len(owner_dirs) != len(sizes):
        raise MPUError(f"{len(owner_dirs)} owner folders but {len(sizes)} forget-set sizes")
    work = Workdir(workdir)
    state = work.load()
    published = state.published
    if published is None or published.round != state.current_round:
        raise MPUError(f"round {state.current_round} has not been published; nothing to combine")
    model = CheckpointReader(work.model_path(state))
    per_owner = [find_returns(folder, published, model) for folder in owner_dirs]
    first = per_owner[0]
    for folder, updates in zip(owner_dirs, per_owner):
        for update, reference in zip(updates, first):
            if update.kind != "full":
                raise InputError(update.manifest_path, "LoRA returns cannot be combined across data owners; return the full update")
            differing = [key for key in AGREED
                         if not same_setting(_agreed(update.manifest, key), _agreed(reference.manifest, key))]
            if differing:
                raise InputError(update.manifest_path, f"trained with other {', '.join(differing)} than {reference.manifest_path}; "
                                                       "every data owner must run the same job")
    weights = owner_weights(list(sizes))
    names = model.names()
    with staging_dir(out_dir) as stage:
        for k, reference in enumerate(first):
            updates = [owner[k] for owner in per_owner]
            target = stage / update_folder(reference.copy_id)
            writer = ShardedWriter(target)
            for _, group in layer_groups(names):
                tensors = {}
                for name in group:
                    shape = tuple(model.shape(name))
                    total = None
                    for weight, update in zip(weights, updates):
                        delta = update.dense(name, shape).to(torch.float32)
                        total = delta.mul(weight) if total is None else total.add_(delta, alpha=weight)
                    tensors[name] = total.contiguous()
                writer.write_shard(tensors)
            writer.finish()
            atomic_write_json(target / UPDATE_MANIFEST, combined_manifest([u.manifest for u in updates], weights).to_json(),
                              mode=PARTY_FILE_MODE)
        atomic_write_json(stage / OWNERS_FILE, {
            "round": published.round,
            "owners": [{"returns": str(folder), "forget_rows": size, "weight": weight}
                       for folder, size, weight in zip(owner_dirs, sizes, weights)],
        }, mode=PARTY_FILE_MODE)
    return Path(out_dir)


def _agreed(manifest: UpdateManifest, key: str):
    """The manifest's ``key`` as the owners must agree on it: the training options without the DP
    settings (``dp_*``), which each owner may tighten for its own data (its node config's floor)."""
    value = getattr(manifest, key)
    if key == "training" and isinstance(value, dict):
        return {name: item for name, item in value.items() if not name.startswith("dp_")}
    return value


def weakest_dp(manifests: list[UpdateManifest]) -> dict | None:
    """The DP guarantee that holds for every owner's data: the record with the largest ``epsilon``
    (None when any owner's update has none, or an unbounded epsilon)."""
    records = [m.dp for m in manifests]
    if any(record is None or record.get("epsilon") is None for record in records):
        return None
    return max(records, key=lambda record: float(record["epsilon"]))


def combined_manifest(manifests: list[UpdateManifest], weights: list[float]) -> UpdateManifest:
    """The update manifest of a combined copy: the first owner's, with ``steps`` and ``seconds`` summed,
    ``loss`` the weighted mean (a key None when any owner's is), ``encoding`` dropped unless all agree,
    ``steps`` capped at the manifest's bound and ``seconds`` None past a float's range (owners that are
    each within the bounds must not make the server write a manifest it refuses),
    ``dp`` the weakest owner's guarantee (:func:`weakest_dp`) and ``training`` without ``dp_*`` keys
    unless all owners agree on them."""
    first = manifests[0]
    seconds = None
    if all(m.seconds is not None for m in manifests):
        seconds = round(sum(float(m.seconds) for m in manifests), 3)   # inf past a float's range
        seconds = seconds if math.isfinite(seconds) else None
    loss = None
    if all(isinstance(m.loss, dict) for m in manifests):
        loss = {}
        for key in first.loss:
            values = [m.loss.get(key) for m in manifests]
            loss[key] = None if any(v is None for v in values) else sum(w * v for w, v in zip(weights, values))
    encoding = first.encoding if all(same_setting(m.encoding, first.encoding) for m in manifests) else None
    training = first.training
    if any(not same_setting(m.training, first.training) for m in manifests):
        training = _agreed(first, "training")
    return dataclasses.replace(first, steps=min(sum(m.steps for m in manifests), MAX_STEPS), seconds=seconds, loss=loss, encoding=encoding,
                               dp=weakest_dp(manifests), training=training)
