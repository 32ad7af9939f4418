"""``mpu server init``: take in the model (and its base), check it can be reparameterised, and
store theta as the float32 master copy of round 0."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from mpu.checkpoint import CheckpointReader, ShardedWriter, copy_model_files, layer_groups, staging_dir
from mpu.checkpoint.files import weights_sha256
from mpu.checkpoint.hub import resolve_model_dir
from mpu.errors import InputError, MPUError
from mpu.reparam import get_adapter
from mpu.server.config import ServerConfig
from mpu.server.workdir import ServerState, Workdir

MASTER_DTYPE = torch.float32
log = logging.getLogger(__name__)


def insecure_choices(config: ServerConfig) -> list[str]:
    """One sentence per setting of ``config`` that weakens what the copies hide (docs/privacy.md):
    no noise, noise that cancels exactly across copies, public alphas, seeded (not secret)
    randomness, no reparameterisation. Empty for the default settings. ``init_server`` logs each as
    a warning when the run starts, so an insecure choice is announced when it is made."""
    choices = []
    if config.kappa == 0:
        choices.append("kappa = 0: the published copies carry NO noise; every copy is the model itself (only "
                       "reparameterised), so the client gets the weights. Use kappa > 0 (default 0.01) outside controls")
    elif config.independent_noise == 0:
        choices.append("independent noise tau = 0 (the paper's setting): the copies' noise cancels exactly, so a client "
                       "holding all copies recovers the weights (docs/privacy.md); the default is tau = 1")
    if config.alpha_mode != "secret":
        choices.append(f"alphas = {config.alpha_mode}, not secret: the client knows each copy's noise multiplier; the default "
                       "draws them secretly")
    if config.fixed_seed is not None:
        choices.append(f"fixed seed {config.fixed_seed}: noise, alphas and transforms follow from the seed (reproducible, NOT "
                       "secret); for experiments and tests only")
    if not config.reparam.enabled:
        choices.append("no reparameterisation: the copies are published in the model's own coordinates")
    return choices


def init_server(workdir: str | Path, model: str, base: str | None, config: ServerConfig, progress: bool = True) -> ServerState:
    """Create the server's work directory for ``model`` (a local HF directory or a hub id): θ stored in
    float32 as ``models/round-0`` (the master copy every round updates), ``state.json`` with ``config``,
    the source dtype and the model type, the folder made private (mode 0700).

    ``base``: the model θ was fine-tuned from (directory or hub id), recorded so that publish can take σ
    from the task vector θ − θ_base; it must have the same tensor names and shapes. Insecure settings
    (κ = 0, τ = 0, public α, a fixed seed, no reparameterisation) are logged as warnings.

    Raises InputError naming the folder when ``workdir`` exists and is not empty, or the base's tensors
    differ from the model's; MPUError (from the adapter) when the architecture cannot be
    reparameterised with ``config.reparam``. Nothing is written before these checks pass."""
    work = Workdir(workdir)
    if work.path.exists() and any(work.path.iterdir()):
        raise InputError(work.path, "work directory exists and is not empty")
    for choice in insecure_choices(config):
        log.warning("insecure setting: %s", choice)
    model_dir = resolve_model_dir(model)
    reader = CheckpointReader(model_dir)
    hf_config = AutoConfig.from_pretrained(model_dir)
    # Fail now, not at publish time, if the architecture cannot be reparameterised.
    get_adapter(hf_config, config.reparam).check_names(reader.names())
    base_dir = None
    if base is not None:
        base_dir = resolve_model_dir(base)
        _check_same_layout(reader, CheckpointReader(base_dir), base_dir)

    work.path.mkdir(parents=True, exist_ok=True)
    os.chmod(work.path, 0o700)
    model_rel = "models/round-0"
    with staging_dir(work.path / model_rel) as stage:
        writer = ShardedWriter(stage)
        for _, names in tqdm(layer_groups(reader.names()), desc="init: store theta", disable=not progress):
            writer.write_shard({name: reader.get(name).to(MASTER_DTYPE) for name in names})
        writer.finish()
        copy_model_files(model_dir, stage, {"dtype": "float32"})
    state = ServerState(
        config=config,
        model_dir=model_rel,
        source_dtype=_dtype_name(reader.dtype(reader.names()[0])),
        model_type=hf_config.model_type,
        base=str(base_dir.resolve()) if base_dir else None,
        base_sha256=weights_sha256(base_dir) if base_dir else None,
    )
    work.save(state)
    return state


def _check_same_layout(model: CheckpointReader, base: CheckpointReader, base_dir: Path) -> None:
    if set(model.names()) != set(base.names()):
        different = sorted(set(model.names()) ^ set(base.names()))
        raise InputError(base_dir, f"base model's tensors differ from the model's: {', '.join(different[:5])}")
    for name in model.names():
        if model.shape(name) != base.shape(name):
            raise InputError(base_dir, f"tensor {name} has shape {base.shape(name)}, the model has {model.shape(name)}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype called ``name`` ("float32", "bfloat16", ...). Raises MPUError for another name."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise MPUError(f"unknown dtype {name!r}")
    return dtype


def attack_floor(config: ServerConfig) -> float:
    """The closest a client holding all m copies of a round can get to θ, as a fraction of the RMS
    that σ is taken from (``sigma_from``: the task vector's RMS per block with a base, else the weights'): κ·τ/√m.

    The zero-sum share of the noise cancels for a client that aligns the copies and estimates α
    (docs/privacy.md measures it); each copy's independent share N(0, (τσ)²) does not, and averaging
    the m copies leaves RMS τσ/√m with σ = κ·RMS(that basis). 0 when τ = 0 or κ = 0: no floor.
    """
    return config.kappa * config.independent_noise / math.sqrt(config.copies)


def describe_attack_floor(config: ServerConfig, has_base: bool) -> str:
    """One line for ``mpu server init``: what the copies reveal about θ to a client that holds them all."""
    basis = "task vector" if has_base else "weights (no --base: sigma follows the weights)"
    floor = attack_floor(config)
    if floor == 0:
        return (f"attack floor: none (kappa={config.kappa}, tau={config.independent_noise}): a client holding "
                f"all {config.copies} copies can recover the weights; set --independent-noise > 0")
    return (f"attack floor: a client holding all {config.copies} copies cannot get closer to the weights than "
            f"about kappa*tau/sqrt(m) = {floor:.2e} of the {basis} RMS per block")
