"""Experiments: what the Hydra entry points ``src/train.py`` and ``src/eval.py`` run.

A composed config (``configs/train.yaml`` with its groups model, benchmark, trainer, mpu, eval and
experiment) goes in; a run directory comes out with

    run.json              what ran: baseline or MPU, method, kappa, m, R, E, seed, settings, per-round
                          server record, timings, the summary and the target and retain models' summaries
    model/                the unlearned checkpoint (save_model=true)
    <BENCH>_SUMMARY.json  headline metrics (OpenUnlearning key names)
    <BENCH>_EVAL.json     every metric with value_by_index

API::

    compose_config(overrides, config_name="train")   # Hydra's compose API on configs/ -> (cfg, group choices)
    settings_from_config(cfg)                         # -> ExperimentConfig, every key checked
    run_experiment(cfg, run_dir, experiment=None)     # -> the run record (also written as run.json)
    evaluate_experiment(cfg, out_dir)                 # src/eval.py: evaluate one checkpoint
    read_run(run_dir)                                 # run.json + the summary, for reports

Nothing here knows more of MPU than :func:`mpu.experiments.two_party.run_mpu` and the server's ``ServerConfig``; the
noise-free baseline calls :func:`mpu.methods.run_unlearning` exactly as ``mpu unlearn`` does.
"""

from mpu.experiments.config import (
    CONFIG_DIR,
    ExperimentConfig,
    ExperimentSettings,
    compose_config,
    server_config,
    settings_from_config,
    training_settings,
)
from mpu.experiments.runner import RUN_FILE, RUN_FORMAT, evaluate_experiment, read_run, run_experiment

__all__ = [
    "CONFIG_DIR",
    "ExperimentConfig",
    "ExperimentSettings",
    "RUN_FILE",
    "RUN_FORMAT",
    "compose_config",
    "evaluate_experiment",
    "read_run",
    "run_experiment",
    "server_config",
    "settings_from_config",
    "training_settings",
]
