"""Training options shared by every method, and the typed parsing that config files and flags go through.

Every value from a YAML file or the command line is converted to the field's declared type here, and a
value that does not fit is an error that names the field; nothing is dropped or guessed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from mpu.errors import MPUError
from mpu.flags import coerce, field_default as _default  # noqa: F401  (coerce: used here and re-exported)

SCHEDULERS = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)


def _help(text: str, *flags: str) -> dict:
    return {"help": text, "flags": flags}


@dataclass
class TrainingOptions:
    """How a method trains: the Hugging Face Trainer settings that an unlearning run uses.

    The defaults are OpenUnlearning's for billion-parameter models (learning rate 1e-5); tiny models
    need a much larger learning rate (about 1e-3 for the built-in ~1M-parameter models). A method may change a default through its
    ``training_defaults`` (UNDIAL: learning rate 1e-4), which :func:`mpu.methods.options_from_args` applies
    below the config file and the command line.
    """

    epochs: float = field(default=5.0, metadata=_help("passes over the forget set"))
    max_steps: int = field(default=-1, metadata=_help("stop after this many optimizer steps (-1: run all epochs)"))
    learning_rate: float = field(default=1e-5, metadata=_help("peak learning rate of AdamW", "--lr"))
    batch_size: int = field(default=8, metadata=_help("forget examples per device per micro-batch (each with one retain example)"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-batches per optimizer step", "--grad-accum"))
    warmup_ratio: float = field(default=0.0, metadata=_help("fraction of the steps spent warming the learning rate up, in [0, 1)"))
    lr_scheduler_type: str = field(default="constant", metadata=_help(f"learning-rate schedule: {', '.join(SCHEDULERS)}", "--lr-scheduler"))
    max_grad_norm: float = field(default=1.0, metadata=_help("clip the gradient norm to this (0: no clipping)"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    optim: str = field(default="adamw_torch", metadata=_help("optimizer name as the HF Trainer spells it"))
    seed: int = field(default=0, metadata={
        "help": "seeds data order, forget/retain pairing, IdK choice, LoRA init, RMU's direction "
                "(the client trains copy k of round r with seed + 1000*(r-1) + k)",
        "flag": "--train-seed", "flags": ("--seed",)})
    max_length: Optional[int] = field(default=None, metadata=_help(
        "the run's length limit on prompt + answer tokens, for every loss and alternate answer (default: the "
        "model's context length); a longer row is an error naming its file and line unless --truncate"))
    truncate: bool = field(default=False, metadata=_help(
        "cut rows longer than max_length (the answer's tail) instead of refusing them; counted in the manifest"))
    prompt_format: str = field(default="auto", metadata=_help(
        "how rows are rendered: auto (the shipped settings of a known model, else its chat template), chat, "
        "plain (Question: ...\\nAnswer: ...), or a shipped model name such as Llama-3.2-1B-Instruct (docs/encoding.md)"))
    system_prompt: Optional[str] = field(default=None, metadata=_help(
        "chat format: a system turn before each question (default: the model's shipped setting, else none; '' for none)"))
    date_string: Optional[str] = field(default=None, metadata=_help(
        "chat format: the date the template prints, pinned (default: the model's shipped setting, else 10 Apr 2025)"))
    logging_steps: int = field(default=1, metadata=_help("record the training loss every this many optimizer steps"))
    bf16: bool = field(default=False, metadata=_help("bf16 mixed precision (the model keeps its own dtype)"))
    gradient_checkpointing: bool = field(default=False, metadata=_help("trade compute for activation memory"))
    lora_rank: int = field(default=0, metadata=_help("train LoRA adapters of this rank and merge them at the end (0: full fine-tuning)"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling numerator (scaling = alpha / rank)"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA branch"))
    lora_target_modules: Union[str, list[str]] = field(
        default="all-linear", metadata=_help("modules that get adapters: 'all-linear' or comma-separated names")
    )
    progress_bar: bool = field(default=True, metadata=_help("show the Trainer's tqdm progress bar (--no-progress-bar: quiet, for logs)", "--progress"))
    dp_epsilon: float = field(default=0.0, metadata=_help(
        "differential privacy for the returned update: DP-SGD with this ε over the whole run (0: off); "
        "the noise multiplier is derived with Opacus's RDP accountant"))
    dp_noise_multiplier: float = field(default=0.0, metadata=_help(
        "DP-SGD noise std / clip norm, instead of --dp-epsilon (ε is then reported, not targeted)"))
    dp_delta: float = field(default=1e-5, metadata=_help("δ of the (ε, δ) guarantee; keep it below 1 / forget-set size"))
    dp_clip_norm: float = field(default=1.0, metadata=_help("DP-SGD: clip each example's gradient to this L2 norm"))

    @property
    def private(self) -> bool:
        """Whether DP-SGD is on (--dp-epsilon or --dp-noise-multiplier given)."""
        return self.dp_epsilon > 0 or self.dp_noise_multiplier > 0

    def __post_init__(self):
        if isinstance(self.lora_target_modules, str) and "," in self.lora_target_modules:
            self.lora_target_modules = [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]
        checks = [
            (self.epochs > 0, "epochs must be > 0"),
            (self.max_steps == -1 or self.max_steps > 0, "max_steps must be -1 or > 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
            (self.lr_scheduler_type in SCHEDULERS, f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.max_length is None or self.max_length >= 4, "max_length must be >= 4"),
            (self.logging_steps >= 1, "logging_steps must be >= 1"),
            (self.lora_rank >= 0, "lora_rank must be >= 0"),
            (self.lora_alpha > 0, "lora_alpha must be > 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (bool(self.lora_target_modules), "lora_target_modules must not be empty"),
            (self.dp_epsilon >= 0 and math.isfinite(self.dp_epsilon), "dp_epsilon must be finite and >= 0 (0: off)"),
            (self.dp_noise_multiplier >= 0 and math.isfinite(self.dp_noise_multiplier), "dp_noise_multiplier must be finite and >= 0"),
            (0 < self.dp_delta < 1, "dp_delta must be in (0, 1)"),
            (self.dp_clip_norm > 0 and math.isfinite(self.dp_clip_norm), "dp_clip_norm must be finite and > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_dataclass(cls, overrides: dict[str, Any], what: str, sources: dict[str, str] | None = None):
    """``cls(**overrides)`` with every value converted to its field's type. Unknown keys, values of the
    wrong type and failed ``__post_init__`` checks become an ``MPUError`` that names the key."""
    sources = sources or {}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in overrides if key not in names]
    if unknown:
        key = unknown[0]
        where = f" (from {sources[key]})" if key in sources else ""
        valid = ", ".join(names) if names else "(none: it takes no hyperparameters)"
        raise MPUError(f"unknown {what} {key!r}{where}; valid keys: {valid}")
    hints = field_types(cls)
    values = {}
    for key, value in overrides.items():
        try:
            values[key] = coerce(value, hints[key])
        except ValueError as err:
            where = f" (from {sources[key]})" if key in sources else ""
            raise MPUError(f"{what} {key!r}{where}: {err}") from None
    try:
        return cls(**values)
    except ValueError as err:
        raise MPUError(f"{what}s: {err}") from None


def training_options(overrides: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> TrainingOptions:
    """A validated :class:`TrainingOptions` from a plain dict (e.g. a config file's ``training:`` section)."""
    return build_dataclass(TrainingOptions, dict(overrides or {}), "training option", sources)


def describe_defaults(obj_or_cls) -> str:
    parts = []
    for f in dataclasses.fields(obj_or_cls):
        value = getattr(obj_or_cls, f.name) if not isinstance(obj_or_cls, type) else _default(f)
        parts.append(f"{f.name}={value}")
    return " ".join(parts) if parts else "(no hyperparameters)"
