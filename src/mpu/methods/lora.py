"""LoRA through PEFT: wrap a model, read back each adapter as an exact low-rank update, merge it.

``lora_factors`` maps the base parameter name as the *un-wrapped* model's ``state_dict`` spells it
(``model.layers.0.self_attn.q_proj.weight``) to ``(B·scaling, A)`` in float32, so that the merged weight is
``W + (B·scaling) @ A``.
"""

from __future__ import annotations

import re

import torch

from mpu.errors import MPUError

_PEFT_PREFIX = "base_model.model."


def base_param_name(name: str) -> str:
    """The un-wrapped model's name of a PEFT-wrapped parameter (adapters map to the weight they update)."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX):]
    name = re.sub(r"\.lora_(?:A|B)\.[^.]+\.weight$", ".weight", name)
    return name.replace(".base_layer.", ".")


def add_lora(model: torch.nn.Module, training) -> torch.nn.Module:
    """Wrap ``model`` (in place) with LoRA adapters; only the adapters are trainable afterwards."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=training.lora_rank,
        lora_alpha=training.lora_alpha,
        lora_dropout=training.lora_dropout,
        target_modules=training.lora_target_modules,
        bias="none",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules not found
        raise MPUError(f"LoRA: {err}") from None


@torch.no_grad()
def lora_factors(peft_model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{base weight name: (B·scaling, A)}`` of every trained adapter, float32 on the CPU."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Linear as LoraLinear

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, LoraLinear) or module.lora_embedding_A or getattr(module, "use_dora", {}).get(
            module.active_adapters[0], False
        ):
            raise MPUError(f"LoRA factors are exact only for plain Linear adapters; {module_name} is {type(module).__name__}")
        for adapter in module.active_adapters:
            lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            if not (lora_a.requires_grad or lora_b.requires_grad):
                continue  # frozen adapter (e.g. outside RMU's trainable pattern): its update is zero
            b = lora_b.detach().float().cpu() * module.scaling[adapter]
            a = lora_a.detach().float().cpu()
            if getattr(module, "fan_in_fan_out", False):  # weight stored transposed (GPT-2 Conv1D)
                a, b = b.T.contiguous(), a.T.contiguous()
            name = base_param_name(f"{module_name}.weight")
            if name in factors:
                raise MPUError(f"LoRA: several active adapters on {name}")
            factors[name] = (b, a)
    return factors


def merge_lora(peft_model: torch.nn.Module) -> torch.nn.Module:
    """Merge the adapters into the base weights and remove them; the original model object is returned."""
    return peft_model.merge_and_unload()
