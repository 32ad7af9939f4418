"""One schema per setting: the Hydra configs read their keys, types and defaults from the dataclasses
(mpu.experiments.schema), and no YAML file stores a default a second time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mpu.errors import MPUError
from mpu.experiments import compose_config, settings_from_config
from mpu.experiments.config import server_config, typed_config
from mpu.experiments.schema import (DataConfig, EvaluationConfig, MpuConfig, RunConfig, TrainerConfig, builtin_benchmark,
                                    mpu_preset)
from mpu.methods import METHODS, TrainingConfig
from mpu.server.config import PRESETS, ServerConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NOT_DEFAULTS = ("defaults", "hydra")   # Hydra's own keys


def as_dict(obj) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(obj))


def run_defaults(mpu: str | None = None, benchmark: str = "builtin") -> dict:
    """The schema's value of every key an experiment (a ``_global_`` file) can set."""
    tree = as_dict(RunConfig)
    tree["mpu"] = as_dict(mpu_preset(mpu)) if mpu in PRESETS else as_dict(MpuConfig)
    tree["trainer"] = {"training": as_dict(TrainingConfig)}
    if benchmark == "builtin":
        tree["benchmark"] = as_dict(builtin_benchmark())
    return tree


def defaults_for(path: Path, data: dict) -> dict:
    """What each key of config file ``path`` would be without it."""
    group = path.relative_to(CONFIGS).parts[0]
    if group == "method":
        cls = METHODS.get(data["method"])
        return {"method": None, "hparams": dataclasses.asdict(cls.Hparams()),
                "training": dataclasses.asdict(dataclasses.replace(TrainingConfig(), **cls.training_defaults))}
    if group == "mpu":
        return as_dict(MpuConfig)
    if group == "benchmark":
        return as_dict(builtin_benchmark())
    picked = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, dict):
            picked.update({key.replace("override /", ""): value for key, value in entry.items()})
    return run_defaults(picked.get("mpu"), picked.get("benchmark", "builtin"))


def restated_defaults(values: dict, defaults: dict, prefix: str = "") -> list[str]:
    """The keys of ``values`` whose value equals ``defaults``' (interpolations and mandatory ??? aside)."""
    found = []
    for key, value in values.items():
        if key in NOT_DEFAULTS and not prefix or not isinstance(defaults, dict) or key not in defaults:
            continue
        if isinstance(value, dict):
            found += restated_defaults(value, defaults[key], f"{prefix}{key}.")
        elif not (isinstance(value, str) and ("${" in value or value == "???")) and value == defaults[key] \
                and type(value) is type(defaults[key]):
            found.append(prefix + key)
    return found


YAMLS = sorted(p for group in ("method", "mpu", "experiment", "benchmark") for p in (CONFIGS / group).rglob("*.yaml")) + \
    [CONFIGS / "train.yaml", CONFIGS / "eval.yaml"]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_no_config_file_restates_a_dataclass_default(path):
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    defaults = defaults_for(path, data) if path.parent != CONFIGS else run_defaults()

    assert restated_defaults(data, defaults) == []


def test_a_restated_default_is_found():
    # the check itself: a value equal to its default is reported, a different one or an interpolation is not
    defaults = run_defaults("paper")

    found = restated_defaults({"mpu": {"m": 3, "kappa": 0.1, "alphas": "public", "seed": "${seed}"},
                               "data": {"text_chunk_words": 200}, "trainer": {"training": {"batch_size": 8}},
                               "benchmark": {"authors": 200, "shape": "small"}}, defaults)

    assert found == ["mpu.m", "mpu.alphas", "data.text_chunk_words", "trainer.training.batch_size", "benchmark.authors"]


def test_composing_without_choices_gives_the_dataclass_defaults():
    cfg, choices = compose_config(["~experiment", "+model.target=some/model", "+model.base=some/base"])
    plain = typed_config(cfg)

    assert choices["mpu"] == "default" and choices["trainer"] == "NPO"
    assert plain["data"] == dataclasses.asdict(DataConfig()) and plain["evaluation"] == dataclasses.asdict(EvaluationConfig())
    assert {key: plain[key] for key in ("seed", "save_model", "progress", "threads")} == \
        {key: getattr(RunConfig(), key) for key in ("seed", "save_model", "progress", "threads")}
    settings = settings_from_config(cfg)
    assert settings.server == ServerConfig(rounds=METHODS.get("NPO").paper_schedule[0])
    assert settings.hparams == METHODS.get("NPO").Hparams()
    assert settings.training == dataclasses.replace(TrainingConfig(), epochs=METHODS.get("NPO").paper_schedule[1])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_mpu_group_options_are_the_server_presets(preset):
    cfg, _ = compose_config(["~experiment", "+model.target=m", "+model.base=b", f"mpu={preset}"])

    server = settings_from_config(cfg).server

    settings = dict(PRESETS[preset])
    assert server == ServerConfig(rounds=server.rounds, **{**settings, "reparam": settings.get("reparam", {})})


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_is_a_trainer_option_with_its_defaults_and_schedule(method):
    cfg, _ = compose_config(["~experiment", "+model.target=m", "+model.base=b", f"trainer={method}"])

    settings = settings_from_config(cfg)

    cls = METHODS.get(method)
    assert (settings.method, settings.hparams) == (method, cls.Hparams())
    assert (settings.rounds, settings.epochs_per_round) == cls.paper_schedule
    assert settings.training == dataclasses.replace(TrainingConfig(), **{**cls.training_defaults, "epochs": cls.paper_schedule[1]})


@pytest.mark.parametrize("override, message", [
    ("mpu.kapa=0.1", "mpu.kapa"),
    ("mpu.m=three", "mpu.m"),
    ("mpu.reparam.vo_mode=haar", "mpu.reparam.vo_mode"),
    ("trainer.hparams.betta=1", "trainer.hparams.betta"),
    ("trainer.training.learning_rat=1", "trainer.training.learning_rat"),
    ("trainer.training.batch_size=two", "trainer.training.batch_size"),
    ("data.sourc=x", "data.sourc"),
    ("evaluation.enabled=maybe", "evaluation.enabled"),
])
def test_hydra_refuses_an_unknown_key_or_a_value_of_the_wrong_type(override, message):
    with pytest.raises(Exception, match=message.replace(".", r"\.")):
        compose_config([override])


def test_a_plain_dict_is_typed_against_the_schema_too():
    cfg, _ = compose_config(["~experiment", "+model.target=m", "+model.base=b"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["mpu"]["kapa"] = 0.1

    with pytest.raises(MPUError, match=r"mpu\.kapa"):
        settings_from_config(plain)


def test_an_mpu_key_left_out_keeps_the_server_configs_default():
    # The config reader has no defaults of its own: ServerConfig's are the only ones (once, the reader's
    # independent_noise default was 0.0 where ServerConfig's is 1.0).
    assert server_config({}, rounds=1) == ServerConfig()
    assert server_config({"m": 4, "seed": 3, "alphas": "public"}, rounds=2) == ServerConfig(
        copies=4, fixed_seed=3, alpha_mode="public", rounds=2)
    assert server_config(as_dict(MpuConfig), rounds=1) == ServerConfig()
    with pytest.raises(MPUError, match="mpu.m: copies must be >= 2"):
        server_config({"m": 1}, rounds=1)


def test_trainer_node_fields_are_the_schema():
    assert {f.name for f in dataclasses.fields(TrainerConfig)} == {"method", "hparams", "training", "schedule"}
    training = {f.name for f in dataclasses.fields(TrainerConfig.__dataclass_fields__["training"].default_factory)}
    assert training == {f.name for f in dataclasses.fields(TrainingConfig)}


def test_the_builtin_benchmark_group_is_build_configs_schema():
    from mpu.data.builtin import BuildConfig

    cfg, _ = compose_config(["~experiment", "+model.target=m", "+model.base=b"])

    assert settings_from_config(cfg).builtin == dataclasses.asdict(BuildConfig())
    with pytest.raises(Exception, match=r"benchmark\.autors"):
        compose_config(["benchmark.autors=5"])
