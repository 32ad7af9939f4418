"""From a composed Hydra config to the typed settings of one run.

Every value is checked here, with a message naming the config key: a misspelt key, a value of the
wrong type or a setting that contradicts another is an ``MPUError``, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mpu.client import REFERENCE_MODEL_ROUNDS
from mpu.errors import MPUError

CONFIG_DIR = Path(os.environ.get("MPU_CONFIGS") or Path(__file__).resolve().parents[3] / "configs")

SIGMA_FROM = ("task-vector", "weights")
MODEL_KEYS = ("target", "retain", "base")
BUILTIN = "builtin"


def compose_config(overrides: Sequence[str] = (), config_name: str = "train", config_dir: str | Path | None = None):
    """The config ``src/train.py`` (or ``src/eval.py``) would run with these command-line overrides,
    without Hydra's own ``hydra`` node. Returns ``(cfg, choices)``: ``choices`` maps each config group
    to the option picked (``choices["experiment"] == "unlearn/tofu/default"``)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mpu.experiments.schema import register_configs

    register_configs()
    directory = Path(config_dir or CONFIG_DIR).resolve()
    if not directory.is_dir():
        raise MPUError(f"{directory}: no configs directory (set MPU_CONFIGS to the repository's configs/)")
    with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    choices = {key: value for key, value in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not key.startswith("hydra/")}
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    OmegaConf.set_struct(cfg, True)
    return cfg, choices


def to_plain(node) -> Any:
    """A DictConfig/ListConfig (or plain value) as plain Python, interpolations resolved."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    return node


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise MPUError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass
class ExperimentConfig:
    """Everything one run needs, validated. Its values come from the composed config, whose defaults are
    the schema's (:mod:`mpu.experiments.schema`): none are written here."""

    mode: str                      # "mpu" or "baseline"
    method: str
    hparams: Any                   # the method's Hparams dataclass
    training: Any                  # TrainingConfig; epochs = E (MPU, per round) or R*E (baseline)
    rounds: int                    # R
    epochs_per_round: float        # E
    seed: int
    server: Any | None             # ServerConfig (MPU only)
    benchmark: str                 # the eval suite's benchmark: tofu, muse
    data: dict[str, Any]
    model: dict[str, Any]
    builtin: dict[str, Any] | None  # BuildConfig fields when data.source is builtin
    finetune: dict[str, Any] | None  # how the tiny target/retain models are trained (model.train.<bench>)
    model_config: dict[str, Any] | None
    suite: dict[str, Any] | None    # the eval suite (configs/eval/<bench>.yaml), None: the package's
    evaluation: dict[str, Any]
    save_model: bool
    progress: bool
    threads: int | None
    keep_exchange: bool
    keep_server: bool
    reference_model_round: str     # whose copy is the reference model: round 1's, or each round's own
    finetune_from_base: dict[str, Any] | None  # ... when fine-tuned from the base (model.from_base.<bench>)
    sigma_from: str                # noise scale: kappa * RMS of the task vector (needs model.base) or of the weights
    method_config: dict[str, Any]

    @property
    def epochs_total(self) -> float:
        return self.rounds * self.epochs_per_round

    @property
    def kappa(self) -> float | None:
        return self.server.kappa if self.server is not None else None

    @property
    def copies(self) -> int | None:
        return self.server.copies if self.server is not None else None


def training_settings(trainer: dict, epochs: float, seed: int):
    """(method, hparams, TrainingConfig) of a ``trainer`` section, with ``epochs`` and ``seed`` set.

    Precedence, lowest first: TrainingConfig defaults < the method's ``training_defaults`` <
    ``trainer.training``. The schedule owns ``epochs`` and the run owns ``seed``: setting them under
    ``trainer.training`` is an error rather than a value that would silently lose.
    """
    from mpu.methods import METHODS, method_hparams, training_options

    method = trainer.get("method")
    if not method or not isinstance(method, str):
        raise MPUError(f"trainer.method must be one of {', '.join(METHODS.names())}, got {method!r}")
    try:
        method = METHODS.canonical(method)  # npo, grad_ascent -> NPO, GradAscent; a typo gets a suggestion
    except MPUError as err:
        raise MPUError(f"trainer.method: {err}") from None
    hparams = method_hparams(method, trainer.get("hparams") or {}, {key: "trainer.hparams" for key in trainer.get("hparams") or {}})
    given = {key: value for key, value in (trainer.get("training") or {}).items() if value is not None}  # None: not set
    if given.pop("epochs", None) is not None:
        raise MPUError("trainer.training.epochs is set by the schedule: use mpu.E (epochs per MPU round; "
                       "the noise-free baseline trains mpu.R * mpu.E epochs) and mpu.R")
    if given.get("seed") is not None and given["seed"] != seed:
        raise MPUError(f"trainer.training.seed ({given['seed']}) differs from seed ({seed}); set only seed")
    given.pop("seed", None)
    training = dict(METHODS.get(method).training_defaults)
    training.update(given)
    training.update(epochs=epochs, seed=seed)
    sources = {key: "trainer.training" for key in given}
    return method, hparams, training_options(training, sources)


def server_config(mpu: dict, rounds: int):
    """The ServerConfig of an ``mpu`` section (``m`` copies, ``kappa``, ``alphas``, ``reparam``, ...).

    A key that is absent (or null) keeps ServerConfig's default: the dataclass is the one place a
    default is written. Every value is typed by its field; a value of the wrong type or one that
    ServerConfig refuses is an ``MPUError`` naming the ``mpu.<key>``."""
    from mpu.experiments.schema import SERVER_FIELDS   # the schema imports the methods (torch): not at startup
    from mpu.flags import FieldError, build_dataclass
    from mpu.server.config import ServerConfig

    key_of = {name: key for key, name in SERVER_FIELDS.items()}   # copies -> m, fixed_seed -> seed
    settings: dict[str, Any] = {"rounds": rounds}
    for f in dataclasses.fields(ServerConfig):
        key = key_of.get(f.name, f.name)
        if f.name not in ("rounds", "alpha_mode", "alphas", "reparam") and mpu.get(key) is not None:
            settings[f.name] = mpu[key]
    alphas = mpu.get("alphas")
    if isinstance(alphas, str) and alphas in ("secret", "public", "reference"):  # reference: public's old name
        settings["alpha_mode"] = "public" if alphas == "reference" else alphas
    elif alphas is not None:
        if isinstance(alphas, str):
            try:
                alphas = [float(value) for value in alphas.split(",") if value.strip()]
            except ValueError:
                raise MPUError(f"mpu.alphas must be secret, public or a list of numbers, got {alphas!r}") from None
        if not isinstance(alphas, (list, tuple)) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas):
            raise MPUError(f"mpu.alphas must be secret, public or a list of numbers, got {alphas!r}")
        settings.update(alpha_mode="list", alphas=[float(a) for a in alphas])
    reparam = mpu.get("reparam") or {}
    if reparam is False:
        reparam = {"enabled": False}
    if not isinstance(reparam, dict):
        raise MPUError(f"mpu.reparam must be a mapping of ReparamConfig fields, got {reparam!r}")
    settings["reparam"] = {key: value for key, value in reparam.items() if value is not None}
    try:
        return build_dataclass(ServerConfig, settings)
    except FieldError as err:
        if err.key is None:  # ServerConfig's messages start with the field's name: name the config key instead
            field_name = str(err).split(" ", 1)[0]
            key = key_of.get(field_name, field_name)
            raise MPUError(f"mpu.{key}: {err}" if field_name in settings else f"mpu: {err}") from None
        top, _, rest = err.key.partition(".")
        key = key_of.get(top, top) + (f".{rest}" if rest else "")
        raise MPUError(f"unknown config key mpu.{key}" if err.unknown else f"mpu.{key}: {err}") from None


def typed_config(cfg) -> dict[str, Any]:
    """A composed config (DictConfig or plain dict) over the schema's defaults (:class:`RunConfig`),
    typed, interpolations resolved, as plain Python. A missing required value, a value of the wrong type
    or an unknown key is an ``MPUError`` naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from mpu.experiments.schema import RunConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        return OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        raise MPUError(f"config value {key} is required (set it on the command line, e.g. {key}=...)") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise MPUError(f"config {key}: {str(err).splitlines()[0]}" if key else f"config: {err}") from None


def settings_from_config(cfg) -> ExperimentConfig:
    """Validate a composed config (DictConfig or plain dict) into :class:`ExperimentConfig`."""
    plain = typed_config(cfg)
    seed, mpu, enabled = plain["seed"], plain["mpu"], plain["mpu"]["enabled"]
    rounds = _positive_int(mpu["R"], "mpu.R")
    epochs_per_round = mpu["E"]
    if epochs_per_round <= 0:
        raise MPUError(f"mpu.E must be a number > 0, got {epochs_per_round!r}")
    epochs = float(epochs_per_round) if enabled else float(rounds * epochs_per_round)
    method, hparams, training = training_settings(plain["trainer"], epochs, seed)
    server = server_config(mpu, rounds) if enabled else None

    data = plain["data"]
    model_section = plain.get("model") or {}
    if not isinstance(model_section, dict):
        raise MPUError(f"config 'model' must be a mapping, got {model_section!r}")
    model = {key: None if model_section.get(key) is None else str(model_section[key]) for key in MODEL_KEYS}
    if not model["target"]:
        raise MPUError("model.target is not set: a model directory, a hub id, or builtin (the built-in tiny target)")

    suite = plain.get("eval")
    if suite is not None and not isinstance(suite, dict):
        raise MPUError(f"config 'eval' must be a mapping (an eval suite), got {suite!r}")
    benchmark = (suite or {}).get("benchmark", "tofu")
    if benchmark not in ("tofu", "muse"):
        raise MPUError(f"eval.benchmark must be tofu or muse for unlearning runs, got {benchmark!r}")

    bench_section = plain.get("benchmark") or {}
    builtin = finetune = finetune_from_base = model_config = None
    uses_builtin = str(data["source"]) == BUILTIN or BUILTIN in model.values()
    if uses_builtin:
        if str(data["source"]) != BUILTIN:
            raise MPUError("model.target/retain/base 'builtin' needs data.source: builtin (the models are trained on it)")
        if bench_section.get("name") != BUILTIN:
            raise MPUError(f"data.source builtin needs benchmark=builtin, got benchmark {bench_section.get('name')!r}")
        from mpu.data.builtin import BuildConfig

        fields = {f.name for f in dataclasses.fields(BuildConfig)}
        builtin = {key: value for key, value in bench_section.items() if key != "name"}
        unknown = sorted(set(builtin) - fields)
        if unknown:
            raise MPUError(f"unknown config key benchmark.{unknown[0]}; valid keys: {', '.join(sorted(fields))}")
        train = (model_section.get("train") or {}).get(benchmark) if isinstance(model_section.get("train"), dict) else None
        finetune = dict(train) if train else None
        tuned = (model_section.get("from_base") or {}).get(benchmark) if isinstance(model_section.get("from_base"), dict) else None
        finetune_from_base = dict(tuned) if tuned else None
        model_config = model_section.get("config") if isinstance(model_section.get("config"), dict) else None

    evaluation = dict(plain["evaluation"])
    old_name = evaluation.pop("reference_models")
    if old_name is not None:   # target_and_retain's old name: still read, and wins when set
        evaluation["target_and_retain"] = old_name
    threads = plain["threads"]
    if threads is not None:
        threads = _positive_int(threads, "threads")
    method_config = {"method": method, "hparams": dataclasses.asdict(hparams), "training": dataclasses.asdict(training)}
    return ExperimentConfig(
        mode="mpu" if enabled else "baseline",
        method=method,
        hparams=hparams,
        training=training,
        rounds=rounds,
        epochs_per_round=float(epochs_per_round),
        seed=seed,
        server=server,
        benchmark=benchmark,
        data=data,
        model=model,
        builtin=builtin,
        finetune=finetune,
        finetune_from_base=finetune_from_base,
        model_config=model_config,
        suite=suite,
        evaluation=evaluation,
        save_model=plain["save_model"],
        progress=plain["progress"],
        threads=threads,
        keep_exchange=mpu["keep_exchange"],
        keep_server=mpu["keep_server"],
        reference_model_round=_reference_model_round(mpu["client_reference"] or mpu["reference_model_round"]),
        sigma_from=_sigma_from(mpu["sigma_reference"] or mpu["sigma_from"], enabled, model["base"]),
        method_config=method_config,
    )


def _sigma_from(value, enabled: bool, base: str | None) -> str:
    """mpu.sigma_from (or its old name mpu.sigma_reference, which wins when set), checked: the task vector
    (the paper's scale) needs model.base. Raises MPUError for another value or a missing base."""
    if value not in SIGMA_FROM:
        raise MPUError(f"mpu.sigma_from must be task-vector (sigma from theta - theta_base) or weights "
                       f"(sigma from theta, a harsher control), got {value!r}")
    if enabled and value == "task-vector" and not base:
        raise MPUError("mpu.sigma_from=task-vector scales the noise by the task vector theta - theta_base and needs "
                       "model.base (a directory or hub id; builtin for the built-in models); set model.base=..., or "
                       "mpu.sigma_from=weights for sigma from the whole weights (a harsher control)")
    return value


def _reference_model_round(value) -> str:
    """mpu.reference_model_round (or its old name mpu.client_reference, which wins when set), checked.
    Raises MPUError for a value other than first or round."""
    if value not in REFERENCE_MODEL_ROUNDS:
        raise MPUError(f"mpu.reference_model_round must be first (round 1's copies) or round (each round's copy), got {value!r}")
    return value


# The name before settings dataclasses were all called *Config (one suffix for one concept).
ExperimentSettings = ExperimentConfig
