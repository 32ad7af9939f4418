"""What training holds in memory at least, checked before ``train()`` starts.

A model that loads can still fail to train: the gradients and the optimizer's moments come on top of
the weights, and on a CPU the out-of-memory killer then ends the process minutes into the run with no
word of why. :func:`check_training_memory` counts what training must hold whatever the data (weights,
gradients of the trainable parameters, AdamW's two moments, the reference model) and refuses a run
whose total exceeds the device's memory, before the first step. Activations, the batch and the
allocator's slack come on top, so the count is a lower bound: it never refuses a run that could fit.
"""

from __future__ import annotations

import os

import torch

from mpu.errors import MPUError

# Optimizers that keep two moments per trainable value in the parameter's dtype (torch's AdamW). Others
# keep less or a quantised or offloaded state (8-bit, paged, Adafactor's factored moments, SGD without
# momentum): no state is counted for them, which keeps the count a lower bound.
TWO_MOMENT_OPTIMIZERS = frozenset({"adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused"})
# Optimizers that apply each gradient as it is computed and never hold the full set (LOMO, GaLore's
# per-layer variants): no gradient memory is counted for them.
FUSED_UPDATE_MARKERS = ("lomo", "layerwise")


def physical_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (``sysconf``), None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def processes_sharing_memory() -> int:
    """How many processes of this launch share this machine's memory: torchrun's ``LOCAL_WORLD_SIZE``
    (1 without a launcher)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory one process may count on for ``device``, in bytes: a CUDA device's total memory; for
    the CPU, the machine's physical memory divided among the processes of the launch that share it
    (:func:`processes_sharing_memory`). None for other devices and where the system does not say."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        memory = physical_memory_bytes()
        return None if memory is None else memory // processes_sharing_memory()
    return None


def _bytes(parameters) -> int:
    return sum(p.numel() * p.element_size() for p in parameters)


def training_memory(model: torch.nn.Module, optim: str, ref_model: torch.nn.Module | None = None) -> dict[str, int]:
    """The bytes training ``model`` holds at least, by part: ``weights`` (every parameter, in its
    dtype), ``gradients`` (the trainable ones, in their dtype; 0 for optimizers that fuse the update
    into the backward pass, :data:`FUSED_UPDATE_MARKERS`), ``optimizer`` (two moments per trainable
    value for :data:`TWO_MOMENT_OPTIMIZERS`, else 0) and ``reference`` (the reference model's
    parameters, 0 without one). ``optim`` is the optimizer's name as the HF Trainer spells it."""
    trainable = _bytes(p for p in model.parameters() if p.requires_grad)
    fused = any(marker in optim for marker in FUSED_UPDATE_MARKERS)
    return {
        "weights": _bytes(model.parameters()),
        "gradients": 0 if fused else trainable,
        "optimizer": 2 * trainable if optim in TWO_MOMENT_OPTIMIZERS else 0,
        "reference": _bytes(ref_model.parameters()) if isinstance(ref_model, torch.nn.Module) else 0,
    }


def check_training_memory(model: torch.nn.Module, optim: str, ref_model: torch.nn.Module | None = None,
                          sharded: bool = False) -> None:
    """Raise MPUError when what training ``model`` holds at least (:func:`training_memory`) exceeds
    the memory of the device its parameters are on (:func:`device_memory_bytes`); the message gives
    each part and what to change. Nothing is checked for a model sharded across processes (DeepSpeed
    ZeRO, FSDP: each process holds a share and may offload it) or a device whose memory is unknown."""
    from mpu.checkpoint.received import shown_bytes

    optim = str(getattr(optim, "value", optim))   # TrainingArguments holds an enum, whose hash is its member name's
    first = next(model.parameters(), None)
    if sharded or first is None:
        return
    memory = device_memory_bytes(first.device)
    if memory is None:
        return
    parts = training_memory(model, optim, ref_model)
    needed = sum(parts.values())
    if needed <= memory:
        return
    names = {"weights": "weights", "gradients": "gradients", "optimizer": f"{optim} moments", "reference": "reference model"}
    shown = ", ".join(f"{names[part]} {shown_bytes(size)}" for part, size in parts.items() if size)
    processes = processes_sharing_memory()
    where = (f"each of the {processes} processes on this machine" if processes > 1 else "this machine") \
        if first.device.type == "cpu" else f"{first.device}"
    raise MPUError(f"training needs at least {shown_bytes(needed)} ({shown}; activations come on top) and {where} has "
                   f"{shown_bytes(memory)} of memory: train LoRA adapters (--lora-rank 16), a smaller model, or on a "
                   "larger machine")
