"""Choosing a method and its settings: YAML config files and command-line flags.

Precedence, lowest first: TrainingConfig defaults < the method's ``training_defaults`` < the config file
< the command line. A config file is plain YAML (loaded with OmegaConf, so ``${...}`` interpolation
works), with only these top-level keys::

    method: NPO            # optional; --method overrides it
    hparams: {beta: 0.1}   # the method's hyperparameters
    training: {learning_rate: 1.0e-5, epochs: 5}

Every key is checked: an unknown or misspelled one is an error naming it and the valid keys.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from mpu.errors import InputError, MPUError
from mpu.flags import add_dataclass_arguments, flag_name, given_values
from mpu.methods.base import METHODS
from mpu.methods.options import TrainingConfig, describe_defaults, training_options
from mpu.methods.training import method_hparams

_HP = "mpu_hp__"  # argparse dest prefixes, so that a caller's own arguments never collide
_TR = "mpu_train__"


@dataclass
class MethodConfigFile:
    """The schema of a method config file: the method (optional: ``--method`` may name it), and the
    hyperparameters and training options it changes (checked against the method's dataclasses later)."""

    method: Optional[str] = None
    hparams: Optional[Dict[str, Any]] = None
    training: Optional[Dict[str, Any]] = None


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(MethodConfigFile))


def load_method_config(path: str | Path) -> dict[str, Any]:
    """Read a method config file: ``{"method": str|None, "hparams": dict, "training": dict}``, typed
    against :class:`MethodConfigFile`; an unknown top-level key or a value of the wrong kind is an
    ``InputError`` naming the file and the key."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML errors
        raise InputError(path, f"not a valid YAML config ({err})") from None
    if not isinstance(loaded, DictConfig):
        raise InputError(path, "expected a mapping at the top level")
    try:
        data = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(MethodConfigFile), loaded), resolve=True)
    except ConfigKeyError as err:
        raise InputError(path, f"unknown key {err.key!r}; valid top-level keys: {', '.join(CONFIG_KEYS)}") from None
    except OmegaConfBaseException as err:  # a value of the wrong kind, or an interpolation that fails
        raise InputError(path, f"not a valid method config ({str(err).splitlines()[0]}; key {err.full_key})") from None
    return {"method": data["method"], "hparams": data["hparams"] or {}, "training": data["training"] or {}}


def _hparam_fields() -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Every hyperparameter name, with the methods that take it."""
    by_name: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for method in METHODS.names():
        for f in dataclasses.fields(METHODS.get(method).Hparams):
            by_name.setdefault(f.name, []).append((method, f))
    return by_name


def methods_table() -> str:
    lines = ["methods, their hyperparameters and defaults (set with the flags above, --hp KEY=VALUE or --config):"]
    for method in METHODS.names():
        cls = METHODS.get(method)
        extra = "".join(f" [training: {k}={v}]" for k, v in cls.training_defaults.items())
        lines.append(f"  {method:<11}{describe_defaults(cls.Hparams)}{extra}")
    return "\n".join(lines)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --method, --config, --hp, one flag per hyperparameter and one per TrainingConfig field."""
    group = parser.add_argument_group("unlearning method")
    group.add_argument("--method", dest=_HP + "method", metavar="NAME",
                       help=f"one of: {', '.join(METHODS.names())}, in any case, '_'/'-' ignored "
                            "(required, unless --config gives 'method:')")
    group.add_argument("--config", dest=_HP + "config", metavar="YAML",
                       help="method config file (keys: method, hparams, training); flags override it")
    group.add_argument("--hp", dest=_HP + "pairs", metavar="KEY=VALUE", action="append", default=[],
                       help="set any hyperparameter of the method (repeatable)")

    group = parser.add_argument_group("method hyperparameters (each method accepts only its own; defaults per method)")
    for name, owners in sorted(_hparam_fields().items()):
        by_help: dict[str, list[str]] = {}  # one text per meaning, with its methods and their defaults
        for method, f in owners:
            default = getattr(METHODS.get(method).Hparams(), name)
            by_help.setdefault(f.metadata.get("help", name), []).append(f"{method}={default}")
        text = "; ".join(f"{help_text} [{', '.join(defaults)}]" for help_text, defaults in by_help.items())
        group.add_argument(flag_name(name), dest=_HP + name, metavar="V", default=argparse.SUPPRESS, help=text.replace("%", "%%"))

    add_dataclass_arguments(parser, parser.add_argument_group("training"), TrainingConfig, _TR)

    table = methods_table()
    parser.epilog = f"{parser.epilog}\n\n{table}" if parser.epilog else table
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def options_from_args(args: argparse.Namespace) -> tuple[str, Any, TrainingConfig]:
    """(method name, its validated hyperparameters, TrainingConfig) from parsed arguments."""
    values = vars(args)
    config_path = values.get(_HP + "config")
    config = load_method_config(config_path) if config_path else {"method": None, "hparams": {}, "training": {}}
    method = values.get(_HP + "method") or config["method"]
    if not method:
        raise MPUError("choose a method with --method NAME (or 'method:' in --config)")
    method = METHODS.canonical(method)  # as users type it: npo, grad_ascent -> NPO, GradAscent
    cls = METHODS.get(method)
    source = f"--config {config_path}"

    hparams = dict(config["hparams"])
    sources = {key: source for key in hparams}
    cli: dict[str, Any] = {}
    for pair in values.get(_HP + "pairs") or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MPUError(f"--hp expects KEY=VALUE, got {pair!r}")
        cli[key.strip()] = value
    for key, value in values.items():
        if key.startswith(_HP) and key[len(_HP):] not in ("method", "config", "pairs"):
            name = key[len(_HP):]
            if name in cli and cli[name] != value:
                raise MPUError(f"hyperparameter {name!r} given twice ({flag_name(name)} {value} and --hp {name}={cli[name]})")
            cli[name] = value
    hparams.update(cli)
    sources.update({key: "the command line" for key in cli})

    training = dict(cls.training_defaults)
    tsources = {key: f"{method}'s defaults" for key in training}
    training.update(config["training"])
    tsources.update({key: source for key in config["training"]})
    given = given_values(args, _TR)
    training.update(given)
    tsources.update({key: "the command line" for key in given})
    _check_hparams_belong(method, hparams, sources)
    return method, method_hparams(method, hparams, sources), training_options(training, tsources)


def _check_hparams_belong(method: str, hparams: dict[str, Any], sources: dict[str, str]) -> None:
    """Refuse a hyperparameter that ``method`` does not take but other methods do (``--steering-coeff``
    with NPO), naming those methods; a key no method takes is left to ``method_hparams``'s message."""
    own = [f.name for f in dataclasses.fields(METHODS.get(method).Hparams)]
    takers = _hparam_fields()
    for key in hparams:
        if key in own or key not in takers:
            continue
        methods = [name for name, _ in takers[key]]
        where = f" (from {sources[key]})" if key in sources else ""
        valid = ", ".join(own) if own else "(none: it takes no hyperparameters)"
        raise MPUError(f"unknown {method} hyperparameter {key!r}{where}: only {', '.join(methods)} "
                       f"{'takes' if len(methods) == 1 else 'take'} it (--method {methods[0]}); {method}'s valid keys: {valid}")
