"""Training options shared by every method, and the typed parsing that config files and flags go through.

Every value from a YAML file or the command line is typed against the field's declaration by OmegaConf
(``mpu.flags.build_dataclass``), and a value that does not fit is an error that names the field;
nothing is dropped or guessed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from mpu.errors import MPUError
from mpu.flags import FieldError, build_dataclass as _typed, field_default as _default

SCHEDULERS = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)


def _help(text: str, *flags: str, hf: str | None = None) -> dict:
    """A field's metadata: help text, flag aliases and, where the field is one of ``transformers.TrainingArguments``
    under another name (or the same), that name."""
    return {"help": text, "flags": flags, **({"hf": hf} if hf else {})}


@dataclass
class TrainingConfig:
    """How a method trains: the Hugging Face Trainer settings that an unlearning run uses.

    A thin view over ``transformers.TrainingArguments`` rather than a subclass (TRL's configs subclass
    it): a field that is a TrainingArguments setting names it in its metadata (``hf``), and
    :meth:`hf_arguments` gives those keywords, so the mapping is the field declarations themselves. A
    subclass would bring TrainingArguments' ~120 fields into every flag list, YAML key set and update
    manifest (which records these fields), rename the keys users write (``epochs`` ->
    ``num_train_epochs``), and run TrainingArguments' device set-up whenever options are validated.

    The defaults are OpenUnlearning's for billion-parameter models (learning rate 1e-5); tiny models
    need a much larger learning rate (about 1e-3 for the built-in ~1M-parameter models). A method may change a default through its
    ``training_defaults`` (UNDIAL: learning rate 1e-4), which :func:`mpu.methods.options_from_args` applies
    below the config file and the command line.
    """

    epochs: float = field(default=5.0, metadata=_help("passes over the forget set", hf="num_train_epochs"))
    max_steps: int = field(default=-1, metadata=_help("stop after this many optimizer steps (-1: run all epochs)", hf="max_steps"))
    learning_rate: float = field(default=1e-5, metadata=_help("peak learning rate of AdamW", "--lr", hf="learning_rate"))
    batch_size: int = field(default=8, metadata=_help("forget examples per device per micro-batch (each with one retain example)", hf="per_device_train_batch_size"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-batches per optimizer step", "--grad-accum", hf="gradient_accumulation_steps"))
    warmup_ratio: float = field(default=0.0, metadata=_help("fraction of the steps spent warming the learning rate up, in [0, 1)", hf="warmup_steps"))
    lr_scheduler_type: str = field(default="constant", metadata=_help(f"learning-rate schedule: {', '.join(SCHEDULERS)}", "--lr-scheduler", hf="lr_scheduler_type"))
    max_grad_norm: float = field(default=1.0, metadata=_help("clip the gradient norm to this (0: no clipping)", hf="max_grad_norm"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay", hf="weight_decay"))
    optim: str = field(default="adamw_torch", metadata=_help("optimizer name as the HF Trainer spells it", hf="optim"))
    seed: int = field(default=0, metadata={
        "help": "seeds data order, forget/retain pairing, IdK choice, LoRA init, RMU's direction "
                "(the client trains copy k of round r with seed + 1000*(r-1) + k)",
        "flag": "--train-seed", "flags": ("--seed",), "hf": "seed"})
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
    logging_steps: int = field(default=1, metadata=_help("record the training loss every this many optimizer steps", hf="logging_steps"))
    bf16: bool = field(default=False, metadata=_help("bf16 mixed precision (the model keeps its own dtype)", hf="bf16"))
    gradient_checkpointing: bool = field(default=False, metadata=_help("trade compute for activation memory", hf="gradient_checkpointing"))
    lora_rank: int = field(default=0, metadata=_help("train LoRA adapters of this rank and merge them at the end (0: full fine-tuning)"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling numerator (scaling = alpha / rank)"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA branch"))
    # str or list[str] ("all-linear", "q_proj,v_proj" or a YAML list): Any, because OmegaConf types no
    # union of a string and a list; __post_init__ checks it.
    lora_target_modules: Any = field(
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

    def hf_arguments(self) -> dict[str, Any]:
        """The ``transformers.TrainingArguments`` keywords this view stands for: every field with an
        ``hf`` name, under it, then what follows from several fields together: warmup on a constant
        schedule is ``constant_with_warmup`` ("constant" alone ignores warmup); under DP-SGD the
        Trainer does not clip (DP-SGD clips each example; clipping the noised sum again would rescale
        the noise); the data order is seeded with ``seed``; ``progress_bar`` is ``disable_tqdm``'s negation."""
        arguments = {f.metadata["hf"]: getattr(self, f.name) for f in dataclasses.fields(self) if "hf" in f.metadata}
        if self.warmup_ratio > 0 and self.lr_scheduler_type == "constant":
            arguments["lr_scheduler_type"] = "constant_with_warmup"
        if self.private:
            arguments["max_grad_norm"] = 0.0
        arguments.update(data_seed=self.seed, disable_tqdm=not self.progress_bar)
        return arguments

    @property
    def private(self) -> bool:
        """Whether DP-SGD is on (--dp-epsilon or --dp-noise-multiplier given)."""
        return self.dp_epsilon > 0 or self.dp_noise_multiplier > 0

    def __post_init__(self):
        if isinstance(self.lora_target_modules, str) and "," in self.lora_target_modules:
            self.lora_target_modules = [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]
        elif isinstance(self.lora_target_modules, (list, tuple)):
            self.lora_target_modules = list(self.lora_target_modules)
        modules = self.lora_target_modules
        if not (isinstance(modules, str) or (isinstance(modules, list) and all(isinstance(m, str) for m in modules))):
            raise ValueError(f"lora_target_modules must be a string or a list of module names, got {modules!r}")
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


def build_dataclass(cls, overrides: dict[str, Any], what: str, sources: dict[str, str] | None = None):
    """``cls`` with ``overrides`` over its defaults, each value typed by its field. Unknown keys, values
    of the wrong type and failed ``__post_init__`` checks become an ``MPUError`` that names the key and,
    from ``sources``, where it came from."""
    sources = sources or {}
    try:
        return _typed(cls, overrides)
    except FieldError as err:
        where = f" (from {sources[err.key]})" if err.key in sources else ""
        if err.unknown:
            names = [f.name for f in dataclasses.fields(cls)]
            valid = ", ".join(names) if names else "(none: it takes no hyperparameters)"
            raise MPUError(f"unknown {what} {err.key!r}{where}; valid keys: {valid}") from None
        if err.key is not None:
            raise MPUError(f"{what} {err.key!r}{where}: {err}") from None
        raise MPUError(f"{what}s: {err}") from None


def training_options(overrides: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> TrainingConfig:
    """A validated :class:`TrainingConfig` from a plain dict (e.g. a config file's ``training:`` section)."""
    return build_dataclass(TrainingConfig, dict(overrides or {}), "training option", sources)


def describe_defaults(obj_or_cls) -> str:
    parts = []
    for f in dataclasses.fields(obj_or_cls):
        value = getattr(obj_or_cls, f.name) if not isinstance(obj_or_cls, type) else _default(f)
        parts.append(f"{f.name}={value}")
    return " ".join(parts) if parts else "(no hyperparameters)"


# The name before settings dataclasses were all called *Config (one suffix for one concept).
TrainingOptions = TrainingConfig
