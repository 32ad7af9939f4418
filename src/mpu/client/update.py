"""Write a copy's update Delta' = theta' - c in float32 safetensors, with its manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.core_model_loading import revert_weight_conversion

from mpu.checkpoint import CheckpointReader, ShardedWriter, atomic_write_json, layer_groups, staging_dir
from mpu.checkpoint.files import PARTY_FILE_MODE
from mpu.errors import MPUError
from mpu.protocol import UPDATE_FORMAT, UPDATE_MANIFEST, UpdateManifest, lora_names


def checkpoint_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the names and shapes of its checkpoint on disk.

    transformers renames and fuses some tensors on load (Pythia's ``embed_out`` becomes
    ``lm_head``; MoE experts ``experts.<e>.w1.weight`` are stacked into ``experts.gate_up_proj``) and
    undoes it on ``save_pretrained``; this applies the same reversal
    (``transformers.core_model_loading.revert_weight_conversion``) in memory, without writing the model.
    """
    state = model.state_dict()
    if not isinstance(model, PreTrainedModel):
        return state
    return revert_weight_conversion(model, state)


def write_dense_update(trained: torch.nn.Module, copy_dir: Path, out_dir: Path, manifest: UpdateManifest | dict[str, Any]) -> None:
    """Delta' per tensor of the copy's checkpoint, under the copy's own names and shapes, streamed
    against the copy's files so the client never needs a second model-sized buffer. ``out_dir`` gets
    the float32 safetensors and ``update.json``: ``manifest`` with ``kind: full`` and the format tag.

    Raises MPUError naming the tensors when the trained model, saved as transformers saves it, lacks
    a tensor of the copy or has it in another shape, and naming the first tensor whose update is not
    finite (training diverged: nothing is written for this copy, where an all-NaN update used to be
    returned as a normal run).
    """
    copy = CheckpointReader(copy_dir)
    params = checkpoint_tensors(trained)
    missing = [name for name in copy.names() if name not in params]
    if missing:
        raise MPUError(f"trained model lacks tensors of the copy {copy_dir}: {', '.join(missing[:5])}"
                       f"{' ...' if len(missing) > 5 else ''}")
    reshaped = [f"{name} {tuple(params[name].shape)} vs {copy.shape(name)}" for name in copy.names() if tuple(params[name].shape) != tuple(copy.shape(name))]
    if reshaped:
        raise MPUError(f"trained model's tensors differ in shape from the copy {copy_dir}: {', '.join(reshaped[:5])}")
    with staging_dir(out_dir, replace=True) as stage:
        writer = ShardedWriter(stage)
        for _, names in layer_groups(copy.names()):
            deltas = {name: params[name].detach().to("cpu", torch.float32) - copy.get(name).to(torch.float32) for name in names}
            broken = next((name for name, delta in deltas.items() if not torch.isfinite(delta).all()), None)
            if broken is not None:
                raise MPUError(f"the update of {copy_dir.name} is not finite in {broken} (NaN or Inf): training diverged; "
                               "lower the learning rate, or the copy's config or weights overflow. Nothing written for it")
            writer.write_shard(deltas)
        writer.finish()
        atomic_write_json(stage / UPDATE_MANIFEST, _manifest_json(manifest, "full"), mode=PARTY_FILE_MODE)


def checkpoint_names(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """Loaded name -> on-disk name for tensors transformers only renames on load (Pythia's
    ``lm_head`` is ``embed_out`` on disk). Raises MPUError for a tensor it fuses (MoE experts):
    a low-rank factor of a fused tensor has no single on-disk name."""
    if not isinstance(model, PreTrainedModel):
        return {name: name for name in names}
    state, mapping = model.state_dict(), {}
    for name in names:
        if name not in state:
            raise MPUError(f"LoRA factor of {name}: the trained model has no such tensor")
        try:
            reverted = revert_weight_conversion(model, {name: state[name]})
        except Exception as err:  # a converter that cannot split a placeholder: a fused tensor
            raise MPUError(f"LoRA factor of {name}: transformers fuses this tensor on load ({type(err).__name__}); "
                           f"return the full update instead of --return-lora") from None
        if len(reverted) != 1:
            raise MPUError(f"LoRA factor of {name}: it is {len(reverted)} tensors on disk; return the full update instead")
        mapping[name] = next(iter(reverted))
    return mapping


def write_lora_update(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], out_dir: Path, manifest: UpdateManifest | dict[str, Any],
                      model: torch.nn.Module | None = None) -> None:
    """The low-rank factors instead: Delta'(W) = B @ A for every adapted weight W, named as W is
    on disk when ``model`` (the trained model, to read transformers' renamings from) is given.
    ``factors``: weight name -> (B (out x r), A (r x in)); ``update.json`` gets ``kind: lora``."""
    if model is not None:
        names = checkpoint_names(model, list(factors))
        factors = {names[name]: value for name, value in factors.items()}
    with staging_dir(out_dir, replace=True) as stage:
        writer = ShardedWriter(stage)
        tensors = {}
        for name, (lora_b, lora_a) in sorted(factors.items()):
            if not (torch.isfinite(lora_b).all() and torch.isfinite(lora_a).all()):
                raise MPUError(f"the LoRA factors of {name} are not finite (NaN or Inf): training diverged; lower the "
                               "learning rate, or the copy's config or weights overflow. Nothing written for this copy")
            name_a, name_b = lora_names(name)
            tensors[name_b] = lora_b.detach().to("cpu", torch.float32).contiguous()
            tensors[name_a] = lora_a.detach().to("cpu", torch.float32).contiguous()
        writer.write_shard(tensors)
        writer.finish()
        atomic_write_json(stage / UPDATE_MANIFEST, _manifest_json(manifest, "lora"), mode=PARTY_FILE_MODE)


def _manifest_json(manifest: UpdateManifest | dict[str, Any], kind: str) -> dict[str, Any]:
    """``update.json``'s content: the manifest with this ``kind`` and the format tag."""
    if isinstance(manifest, UpdateManifest):
        return dataclasses.replace(manifest, kind=kind).to_json()
    return {**manifest, "format": UPDATE_FORMAT, "kind": kind}


def loss_summary(losses: list[float]) -> dict[str, float | None]:
    """A summary of the loss curve; per-example losses never leave the client."""
    if not losses:
        return {"first": None, "last": None, "min": None, "mean": None}
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "mean": sum(losses) / len(losses)}
