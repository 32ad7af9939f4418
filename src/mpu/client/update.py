"""Write a copy's update Delta' = theta' - c in float32 safetensors, with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpu.checkpoint import CheckpointReader, ShardedWriter, atomic_write_json, layer_groups, staging_dir
from mpu.checkpoint.files import PARTY_FILE_MODE
from mpu.errors import MPUError

UPDATE_MANIFEST = "update.json"
UPDATE_FORMAT = "mpu-update/1"


def write_dense_update(trained: torch.nn.Module, copy_dir: Path, out_dir: Path, manifest: dict[str, Any]) -> None:
    """Delta' per tensor of the copy's checkpoint, streamed against the copy's own files so the
    client never needs a second model-sized buffer."""
    copy = CheckpointReader(copy_dir)
    params = trained.state_dict()
    missing = [name for name in copy.names() if name not in params]
    if missing:
        raise MPUError(f"trained model lacks tensors of the copy: {missing[:5]}")
    with staging_dir(out_dir, replace=True) as stage:
        writer = ShardedWriter(stage)
        for _, names in layer_groups(copy.names()):
            writer.write_shard({name: params[name].detach().to("cpu", torch.float32) - copy.get(name).to(torch.float32) for name in names})
        writer.finish()
        atomic_write_json(stage / UPDATE_MANIFEST, {**manifest, "format": UPDATE_FORMAT, "kind": "full"}, mode=PARTY_FILE_MODE)


def write_lora_update(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], out_dir: Path, manifest: dict[str, Any]) -> None:
    """The low-rank factors instead: Delta'(W) = B @ A for every adapted weight W."""
    with staging_dir(out_dir, replace=True) as stage:
        writer = ShardedWriter(stage)
        tensors = {}
        for name, (lora_b, lora_a) in sorted(factors.items()):
            tensors[f"{name}.lora_B"] = lora_b.detach().to("cpu", torch.float32).contiguous()
            tensors[f"{name}.lora_A"] = lora_a.detach().to("cpu", torch.float32).contiguous()
        writer.write_shard(tensors)
        writer.finish()
        atomic_write_json(stage / UPDATE_MANIFEST, {**manifest, "format": UPDATE_FORMAT, "kind": "lora"}, mode=PARTY_FILE_MODE)


def loss_summary(losses: list[float]) -> dict[str, float | None]:
    """A summary of the loss curve; per-example losses never leave the client."""
    if not losses:
        return {"first": None, "last": None, "min": None, "mean": None}
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "mean": sum(losses) / len(losses)}
