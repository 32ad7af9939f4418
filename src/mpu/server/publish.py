"""Pre-Process: publish m noisy, secretly reparameterised copies c_k = T_k(theta + eps_k), k = 1..m.

Streams one block at a time: memory holds one block's tensors times m, never m models. Blocks come
from the model's module tree (``Adapter.block_groups``), so noise and sigma follow the transformer
blocks of every family; a tensor that is in no block and no known tensor of the model is refused
before anything is written, never published as it is. The round's steps are
:meth:`mpu.server.round.Round.publish`; this module holds the noise and the streaming.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mpu.checkpoint import CheckpointReader, ShardedWriter
from mpu.protocol import RoundKeys
from mpu.reparam import Adapter
from mpu.server.config import ServerConfig
from mpu.server.noise import independent_noise, rms, sum_sq, zero_sum_noise

log = logging.getLogger(__name__)

OUTSIDE_BLOCKS = "outside the transformer blocks (noise_scope 'blocks')"
WARN_FRACTION = 0.5  # warn when rounding to the publish dtype removes more than half of the noise


@dataclass
class BlockNoise:
    """Intended vs effective perturbation of one block (RMS over its elements and copies).

    Both are measured in the copy's coordinates (the same as theta's unless FFN scaling is on).
    ``effective`` is the noise left after rounding to the publish dtype: the published copy minus
    what the clean model would publish. ``changed`` is the fraction of
    published values that differ from the clean model's: rounding makes small noise sparse (most
    values identical to the clean ones, a few off by one unit), which RMS alone does not show.
    """

    group: str
    sigma: float
    intended: float
    effective: float
    changed: float


@dataclass
class PublishReport:
    """What one publication did: the round, the outbox, the copies as the manifest lists them
    (``{"id", "path", "sha256"}``), the intended and effective noise per block, the warnings, the
    transforms applied, and the tensors published without noise (name -> reason)."""

    round: int
    out_dir: Path
    copies: list[dict]
    blocks: list[BlockNoise] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    transforms: list[str] = field(default_factory=list)
    # Tensors published without noise although kappa > 0, with the reason: outside the blocks under
    # noise_scope "blocks" (embeddings, positions, final norm, head), or a group equal to the base.
    clean: dict[str, str] = field(default_factory=dict)


def publish(workdir: str | Path, out_dir: str | Path, *, replace: bool = False, progress: bool = True, device: str | None = None) -> PublishReport:
    """Pre-Process of the current round: :meth:`mpu.server.round.Round.publish` on ``workdir``.

    Writes ``out_dir/manifest.json`` and ``out_dir/copy-1 ... copy-m`` (built in a staging folder; an
    existing ``out_dir`` is refused unless ``replace``) and records the publication in the server state.
    ``device``: where the arithmetic runs (default: the GPU when there is one). Raises MPUError when
    every round is done, InputError for a model the adapter cannot place.
    """
    from mpu.server.round import Round

    return Round(workdir, progress=progress, device=device).publish(out_dir, replace=replace)


def _write_copies(job: "_Job", reader: CheckpointReader, base: CheckpointReader | None, groups: list[tuple[int | None, list[str]]],
                  copy_dirs: list[Path], report: PublishReport, progress: bool) -> float:
    """Streams the model group by group (``Adapter.block_groups``) into the m copies; returns ||theta||.
    Records in ``report.clean`` every tensor published without noise while kappa > 0. ``copy_dirs[i]``
    receives copy i + 1."""
    m = len(copy_dirs)
    writers = [ShardedWriter(path) for path in copy_dirs]
    model_norm_sq = 0.0
    for layer, names in tqdm(groups, desc=f"publish round {report.round}", disable=not progress):
        noisy = job.config.kappa > 0 and (layer is not None or job.config.noise_scope == "all")
        sigma = job.config.kappa * _group_rms(reader, base, names) if noisy else 0.0
        if job.config.kappa > 0 and sigma == 0:
            reason = (OUTSIDE_BLOCKS if not noisy
                      else "equal to the base model (task vector zero), nothing to hide" if base is not None
                      else "all zero")
            report.clean.update({name: reason for name in names})
        transforms = [None] * m
        if layer is not None:
            transforms = [job.adapter.sample(layer, job.keys.transform(copy_id, layer)) for copy_id in range(1, m + 1)]
        stats = _NoiseStats()
        outputs = [{} for _ in range(m)]
        for name in names:
            theta = reader.get(name, job.device).to(torch.float32)
            model_norm_sq += sum_sq(theta)
            for k, copy in enumerate(_perturbed_copies(job, name, theta, sigma, transforms, stats)):
                outputs[k][name] = copy
        for writer, tensors in zip(writers, outputs):
            writer.write_shard(tensors)
        if noisy:
            group = f"layer.{layer}" if layer is not None else names[0]
            report.blocks.append(BlockNoise(group, sigma, rms(stats.intended_sq, stats.count), rms(stats.effective_sq, stats.count), stats.changed / max(stats.count, 1)))
    for writer in writers:
        writer.finish()
    return model_norm_sq**0.5


def _clean_warnings(clean: dict[str, str], kappa: float) -> list[str]:
    """One warning per reason, naming the tensors published without noise at kappa > 0."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in clean.items():
        by_reason.setdefault(reason, []).append(name)
    return [
        f"kappa={kappa} but {len(names)} tensor(s) published without noise, {reason}: {', '.join(names[:10])}"
        f"{' ...' if len(names) > 10 else ''}"
        for reason, names in by_reason.items()
    ]


def _rounding_warnings(blocks: list[BlockNoise], dtype: str) -> list[str]:
    return [
        f"{block.group}: in {dtype} the noise survives in only {block.changed:.0%} of the values "
        f"(effective RMS {block.effective:.3g} vs intended {block.intended:.3g}); raise kappa or publish in float32"
        for block in blocks
        if block.intended > 0 and (block.effective < WARN_FRACTION * block.intended or block.changed < WARN_FRACTION)
    ]


@dataclass
class _Job:
    """What every tensor of one publication needs."""

    config: ServerConfig
    keys: RoundKeys
    alphas: list[float]  # alphas[i]: copy i + 1's
    adapter: Adapter
    dtype: torch.dtype
    device: torch.device


@dataclass
class _NoiseStats:
    intended_sq: float = 0.0
    effective_sq: float = 0.0
    changed: int = 0
    count: int = 0


def _perturbed_copies(job: _Job, name: str, theta: torch.Tensor, sigma: float, transforms: list, stats: _NoiseStats) -> list[torch.Tensor]:
    """c_k = T_k(theta + eps_k) for k = 1..m, cast to the publish dtype; element i is copy i + 1's
    (``transforms`` likewise)."""
    m = len(job.alphas)
    if sigma == 0:
        return [_transform(job.adapter, transforms[k], name, theta).to(job.dtype) for k in range(m)]
    noise = zero_sum_noise(theta.shape, sigma, job.keys.noise_generators(m, name, job.device))
    copies = []
    for k in range(m):
        copy_id = k + 1
        eps = noise[k].mul_(job.alphas[k])
        if job.config.independent_noise > 0:
            scale = job.config.independent_noise * sigma
            eps += independent_noise(theta.shape, scale, job.keys.independent_noise(copy_id, name, job.device))
        intended = sum_sq(eps)
        stats.intended_sq += intended
        stats.count += theta.numel()
        if job.dtype == torch.float32:
            # Nothing is rounded away: the copy holds theta + eps exactly as drawn (in float32).
            copies.append(_transform(job.adapter, transforms[k], name, eps.add_(theta)))
            stats.effective_sq += intended
            stats.changed += theta.numel()
            continue
        # T is linear, so T(theta + eps) = T(theta) + T(eps); T(theta) rounded is what the clean
        # model would publish, and the difference from it is the noise that survives rounding.
        clean = _transform(job.adapter, transforms[k], name, theta)
        copy = (clean + _transform(job.adapter, transforms[k], name, eps)).to(job.dtype)
        surviving = copy.to(torch.float32) - clean.to(job.dtype).to(torch.float32)
        stats.effective_sq += sum_sq(surviving)
        stats.changed += int(torch.count_nonzero(surviving))
        copies.append(copy)
    return copies


def _transform(adapter, transform, name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor if transform is None else adapter.apply(transform, name, tensor)


def _group_rms(reader: CheckpointReader, base: CheckpointReader | None, names: list[str]) -> float:
    """RMS over every element of the group of (theta - theta_base), or of theta without a base."""
    total, count = 0.0, 0
    for name in names:
        values = reader.get(name).to(torch.float32)
        if base is not None:
            values = values - base.get(name).to(torch.float32)
        total += sum_sq(values)
        count += values.numel()
    return rms(total, count)
