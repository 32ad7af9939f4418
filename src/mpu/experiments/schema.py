"""The typed schema of ``src/train.py``'s and ``src/eval.py``'s Hydra configs, read from the dataclasses
that hold each setting's one default, and registered in Hydra's ConfigStore.

- ``mpu_run`` (the root): ``seed``, ``data``, ``evaluation``, the ``mpu`` and ``trainer`` groups, ...
  ``configs/train.yaml`` lists it first in its defaults, so OmegaConf types every value and refuses an
  unknown key when the config is composed (``mpu.kapa=0.1`` is an error, not a new key).
- ``mpu`` group: :class:`MpuConfig`, whose defaults are ``ServerConfig``'s and ``ReparamConfig``'s
  (``mpu.m`` is ``ServerConfig.copies``, ``mpu.seed`` its ``fixed_seed``); the options ``default``,
  ``paper`` and ``hardened`` are ``mpu.server.config.PRESETS`` (the presets of ``mpu server init
  --privacy``), ``baseline`` is ``configs/mpu/baseline.yaml``.
- ``benchmark`` group: ``builtin`` extends ``benchmark/builtin_schema``, the fields and defaults of the
  built-in benchmark's ``BuildConfig`` (``benchmark.autors=5`` is refused).
- ``trainer`` group: one option per registered method, ``trainer=NPO``: the method's hyperparameter
  dataclass with its defaults (``trainer.hparams``, typed: a misspelt hyperparameter is refused), the
  ``TrainingConfig`` it changes (``trainer.training``, over the method's ``training_defaults``) and its
  schedule for MPU (``trainer.schedule.R``/``E``, from ``paper_schedule``).

So a YAML file holds only choices: a value that differs from these defaults, or a group selection.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING

from mpu.methods.options import TrainingConfig
from mpu.reparam.options import ReparamConfig
from mpu.server.config import PRESETS, ServerConfig

ROOT = "mpu_run"
# ``mpu`` keys that are ServerConfig fields under another name; the others keep theirs.
SERVER_FIELDS = {"m": "copies", "seed": "fixed_seed", "R": "rounds"}


def _from(cls, name: str, **metadata: Any):
    """A field with the default and help of ``cls``'s field ``name`` (the one place they are written)."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = {**source.metadata, **metadata}
    if source.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field(default_factory=source.default_factory, metadata=meta)  # type: ignore[misc]
    return field(default=source.default, metadata=meta)


def _thawed(cls, *extra: tuple):
    """A mutable twin of frozen dataclass ``cls`` (same fields, types, defaults and help; ``extra`` fields
    first): Hydra merges presets and command-line overrides into it, and OmegaConf makes a frozen
    dataclass's node read-only."""
    hints = typing.get_type_hints(cls)
    return dataclasses.make_dataclass(cls.__name__, [*extra, *((f.name, hints[f.name], _from(cls, f.name)) for f in dataclasses.fields(cls))])


def _unset(cls):
    """A twin of dataclass ``cls`` whose every field is optional and defaults to None ("not set"): a node
    that takes any of ``cls``'s fields, typed, while a value left unset keeps the default chosen later
    (the method's ``training_defaults``, then TrainingConfig')."""
    hints = typing.get_type_hints(cls)
    return dataclasses.make_dataclass(f"{cls.__name__}Given", [
        (f.name, Optional[hints[f.name]], field(default=None, metadata=f.metadata)) for f in dataclasses.fields(cls)])


Reparam = _thawed(ReparamConfig)
TrainingGiven = _unset(TrainingConfig)


@dataclass
class MpuConfig:
    """The ``mpu`` node: ServerConfig under the experiment's key names, and how the run uses it."""

    enabled: bool = field(default=True, metadata={"help": "false: the noise-free baseline, the method once on the model for R*E epochs"})
    m: int = _from(ServerConfig, "copies")
    kappa: float = _from(ServerConfig, "kappa")
    sigma_from: str = field(default="task-vector", metadata={
        "help": "task-vector: sigma from theta - theta_base (the paper; needs model.base) | weights: sigma from theta, "
                "no base (a harsher control, labelled in run.json)"})
    sigma_reference: Optional[str] = field(default=None, metadata={"help": "sigma_from's old name: still read, and wins when set"})
    R: int = field(default="${trainer.schedule.R}", metadata={"help": "rounds (default: the method's paper schedule, trainer.schedule)"})  # type: ignore[assignment]
    E: float = field(default="${trainer.schedule.E}", metadata={"help": "client epochs per round (default: the method's)"})  # type: ignore[assignment]
    eta: float = _from(ServerConfig, "eta")
    alphas: Any = field(default=ServerConfig.__dataclass_fields__["alpha_mode"].default, metadata={
        "help": "secret (CSPRNG, fresh each round) | public (evenly on [1, 2], the paper's) | a list, one per copy"})
    alpha_max: float = _from(ServerConfig, "alpha_max")
    independent_noise: float = _from(ServerConfig, "independent_noise")
    noise_scope: str = _from(ServerConfig, "noise_scope")
    publish_dtype: str = _from(ServerConfig, "publish_dtype")
    max_update_ratio: float = _from(ServerConfig, "max_update_ratio")
    seed: Optional[int] = _from(ServerConfig, "fixed_seed")
    reparam: Reparam = field(default_factory=Reparam)  # type: ignore[valid-type]
    reference_model_round: str = field(default="first", metadata={
        "help": "reference-model methods (NPO, DPO, UNDIAL) compare with round 1's copy K in every round (first: a fixed "
                "reference model, as noise-free) or with each round's own copy (round)"})
    client_reference: Optional[str] = field(default=None, metadata={"help": "reference_model_round's old name: still read, and wins when set"})
    keep_exchange: bool = field(default=False, metadata={"help": "keep each round's outbox and returns in the run dir"})
    keep_server: bool = field(default=False, metadata={"help": "keep the server work directory (state, secrets) in the run dir"})


@dataclass
class Schedule:
    """The paper's MPU schedule of a method: R rounds of E client epochs (R*E for the baseline)."""

    R: int = MISSING
    E: float = MISSING


@dataclass
class TrainerConfig:
    """The ``trainer`` node: a method, its hyperparameters, the TrainingConfig it changes, its schedule.
    ``training.epochs`` and ``training.seed`` belong to the schedule and to ``seed``."""

    method: str = MISSING
    hparams: Any = field(default_factory=dict)
    training: TrainingGiven = field(default_factory=TrainingGiven)  # type: ignore[valid-type]
    schedule: Schedule = field(default_factory=Schedule)


@dataclass
class DataConfig:
    """What to unlearn: the built-in benchmark, a local directory in the hub layout, a hub dataset, or files."""

    source: Optional[str] = field(default="builtin", metadata={"help": "builtin | a local directory | a hub dataset name"})
    forget_split: Optional[str] = "forget10"
    retain_split: Optional[str] = "retain90"
    forget_file: Optional[str] = field(default=None, metadata={"help": "explicit QA files ({question, answer} JSONL) replace the splits"})
    retain_file: Optional[str] = None
    text_chunk_words: int = field(default=200, metadata={"help": "raw-text corpora (MUSE): words per training chunk"})
    text_prompt_words: int = field(default=16, metadata={"help": "... of which the first ones are the prompt (no loss)"})


@dataclass
class EvaluationConfig:
    """Evaluating the unlearned model with the eval suite."""

    enabled: bool = True
    batch_size: Optional[int] = field(default=None, metadata={"help": "null: the suite's"})
    device: Optional[str] = field(default=None, metadata={"help": "null: cuda when available"})
    dtype: str = "auto"
    target_and_retain: bool = field(default=True, metadata={"help": "also evaluate (once, cached) the target and retain models"})
    reference_models: Optional[bool] = field(default=None, metadata={"help": "target_and_retain's old name: still read, and wins when set"})


@dataclass
class RunConfig:
    """The root of ``src/train.py``'s (and ``src/eval.py``'s) config."""

    seed: int = field(default=0, metadata={"help": "unlearning seed: copy k of round r trains with seed + 1000(r-1) + k"})
    save_model: bool = True
    progress: bool = field(default=True, metadata={"help": "tqdm bars of the server steps and the evaluation"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads (null: $MPU_THREADS or 1; 0: torch's)"})
    model: Any = None
    benchmark: Any = None
    eval: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mpu: MpuConfig = field(default_factory=MpuConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tiny_learning_rates: Dict[str, float] = field(default_factory=dict, metadata={"help": "per-method learning rates an experiment picks from"})
    model_path: Optional[str] = field(default=None, metadata={"help": "src/eval.py: the checkpoint to evaluate"})


def mpu_preset(name: str) -> MpuConfig:
    """The ``mpu`` node of privacy preset ``name`` (``mpu.server.config.PRESETS``)."""
    settings = dict(PRESETS[name])
    reparam = Reparam(**settings.pop("reparam", {}))
    if "alpha_mode" in settings:
        settings["alphas"] = settings.pop("alpha_mode")
    names = {server: key for key, server in SERVER_FIELDS.items()}
    return MpuConfig(**{names.get(key, key): value for key, value in settings.items()}, reparam=reparam)


def trainer_node(method: str) -> TrainerConfig:
    """The ``trainer`` option of a registered method: its hyperparameters' defaults and paper schedule."""
    from mpu.methods import METHODS

    cls = METHODS.get(method)
    rounds, epochs = cls.paper_schedule
    return TrainerConfig(method=method, hparams=cls.Hparams(), schedule=Schedule(R=rounds, E=float(epochs)))


def builtin_benchmark():
    """The ``benchmark`` node of the built-in benchmark: ``name: builtin`` and BuildConfig's fields."""
    from mpu.data.builtin import BuildConfig

    return _thawed(BuildConfig, ("name", str, field(default="builtin")))


def tiny_model_node(preset: str = "tiny") -> dict:
    """The ``model`` option of a built-in tiny Llama preset (``mpu finetune --preset``), generated from
    ``mpu.experiments.finetune``'s dataclasses, the one home of its size and recipes: ``config`` (the
    architecture), ``train.<bench>`` (from scratch), ``base_train`` (the base stage) and
    ``from_base.<bench>`` (target and retain model fine-tuned from the base)."""
    from dataclasses import asdict

    from mpu.experiments.finetune import BASE_DEFAULTS, FROM_BASE, PRESETS, TRAIN_DEFAULTS

    chosen = PRESETS[preset]
    train = {name: asdict(value) for name, value in TRAIN_DEFAULTS.items()}
    from_base = {name: asdict(value) for name, value in FROM_BASE.items()}
    # a preset's schedules are for the built-in TOFU-format data (its release shape)
    train["tofu"].update(chosen.from_scratch)
    from_base["tofu"].update(chosen.from_base)
    return {
        "name": MODEL_PRESETS[preset],
        "architecture": "LlamaForCausalLM",
        "config": asdict(chosen.size),
        "train": train,
        "base_train": asdict(BASE_DEFAULTS),
        "from_base": from_base,
    }


# Hydra option name of each tiny-model preset (``model=tiny-llama``, ``model=tiny-llama-cpu-release``).
MODEL_PRESETS = {"tiny": "tiny-llama", "cpu-release": "tiny-llama-cpu-release"}

_registered = False


def register_configs() -> None:
    """Put the schema and the generated group options into Hydra's ConfigStore (once per process)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from mpu.methods import METHODS

    store = ConfigStore.instance()
    store.store(name=ROOT, node=RunConfig)
    for name in PRESETS:
        store.store(group="mpu", name=name, node=mpu_preset(name))
    for method in METHODS.names():
        store.store(group="trainer", name=method, node=trainer_node(method))
    store.store(group="benchmark", name="builtin_schema", node=builtin_benchmark())
    for preset, option in MODEL_PRESETS.items():
        store.store(group="model", name=option, node=tiny_model_node(preset))
    _registered = True
