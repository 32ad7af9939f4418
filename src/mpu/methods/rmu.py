"""RMU (Li et al. 2024, WMDP): steer layer-L activations on forget inputs to c·u (u a fixed random unit
vector) and keep retain activations at the reference model's. Only ``trainable_params`` are trained."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from mpu.errors import MPUError
from mpu.methods import losses
from mpu.methods.base import METHODS, RetainHparams, UnlearnTrainer, positive
from mpu.methods.lora import base_param_name


@dataclass
class RMUHparams(RetainHparams):
    RETAIN_LOSSES: ClassVar[tuple[str, ...]] = ("EMBED_DIFF", "NLL", "KL")
    alpha: float = field(default=1000.0, metadata={"help": "weight α of the retain term"})
    retain_loss: str = field(default="EMBED_DIFF", metadata={"help": "EMBED_DIFF (layer-L activations vs the reference's), NLL or KL"})
    rmu_layer: Optional[int] = field(default=None, metadata={"help": "decoder layer L whose output is steered (negative counts from the end; none: 7, or the last layer of a smaller model)"})
    steering_coeff: float = field(default=300.0, metadata={"help": "norm c of the target activation vector"})
    trainable_params: Optional[str] = field(default=None, metadata={"help": r"regex (full match) of the trained parameter names (none: model\.layers\.(L-2|L-1|L)\.mlp\.down_proj\.weight)"})

    def __post_init__(self):
        super().__post_init__()
        positive(steering_coeff=self.steering_coeff)


def decoder_layers(model: torch.nn.Module, with_name: bool = False):
    """The model's one ModuleList of decoder layers (``model.layers``, ``transformer.h``, ...)."""
    found = [(n, m) for n, m in model.named_modules() if re.fullmatch(r"(?:.*\.)?(?:layers|h|blocks)", n) and isinstance(m, torch.nn.ModuleList)]
    if len(found) != 1:
        raise MPUError(f"RMU: expected one list of decoder layers, found {[n for n, _ in found]}")
    name, layers = found[0]
    return (name.removeprefix("base_model.model."), layers) if with_name else layers


def layer_index(model: torch.nn.Module, hp) -> int:
    count = len(decoder_layers(model))
    index = min(7, count - 1) if hp.rmu_layer is None else hp.rmu_layer
    if not -count <= index < count:
        raise MPUError(f"RMU: rmu_layer={index} but the model has {count} layers")
    return index % count


def _activations(model, module, batch) -> torch.Tensor:
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        handle.remove()
    return captured[0]


@METHODS.register("RMU")
class RMU(UnlearnTrainer):
    Hparams = RMUHparams
    retain_use = "required"
    paper_schedule = (1, 10)

    @classmethod
    def needs_reference(cls, hp, with_retain):
        return with_retain and hp.retain_loss in ("EMBED_DIFF", "KL")

    @classmethod
    def prepare_model(cls, model, hp):
        layer, (prefix, _) = layer_index(model, hp), decoder_layers(model, with_name=True)
        chosen = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
        pattern = hp.trainable_params or rf"{re.escape(prefix)}\.({chosen})\.mlp\.down_proj\.weight"
        matched = 0
        for name, param in model.named_parameters():
            keep = param.requires_grad and re.fullmatch(pattern, base_param_name(name)) is not None
            param.requires_grad_(keep)
            matched += keep
        if not matched:
            raise MPUError(f"RMU: no trainable parameter matches trainable_params={pattern!r}")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer = layer_index(self.model, self.hp)
        self.module = decoder_layers(self.model)[self.layer]
        self.ref_module = decoder_layers(self.ref_model)[self.layer] if self.ref_model is not None else None
        self.control_vector = None

    def target(self, dim: int) -> torch.Tensor:
        """c·u with u uniform in [0, 1)^dim, normalised, drawn from ``seed``: the same on every process."""
        if self.control_vector is None:
            u = torch.rand(dim, generator=torch.Generator().manual_seed(self.args.seed))
            self.control_vector = (u / u.norm() * self.hp.steering_coeff).to(self.args.device)
        return self.control_vector

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        acts = _activations(model, self.module, forget)
        terms = losses.activation_mse_terms(acts, self.target(acts.shape[-1]), forget["labels"])
        forget_loss = self.per_item(terms.sum(), "forget.sequences")
        retain, retain_loss = inputs.get("retain"), None
        if retain is not None and self.hp.retain_loss == "EMBED_DIFF":
            with torch.no_grad():
                ref_acts = _activations(self.ref_model, self.ref_module, retain)
            terms = losses.activation_mse_terms(_activations(model, self.module, retain), ref_acts, retain["labels"])
            retain_loss = self.per_item(terms.sum(), "retain.sequences")
        elif retain is not None:
            retain_loss = self.retain_term(model, inputs)
        return self.combine(forget_loss, retain_loss)
