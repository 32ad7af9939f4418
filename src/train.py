"""Hydra entry point for unlearning runs: the noise-free baseline or MPU, then evaluation.

    python src/train.py experiment=unlearn/tofu/default trainer=NPO mpu.m=3 mpu.kappa=0.01
    python src/train.py trainer=GradDiff mpu.enabled=false                  # noise-free baseline
    python src/train.py -m trainer=GradAscent,NPO mpu.kappa=0.01,0.1 mpu.m=2,3

Configs live in configs/ (train.yaml and its groups). Each run dir gets run.json, model/,
<BENCH>_SUMMARY.json and <BENCH>_EVAL.json. All logic is in mpu.experiments.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mpu.experiments.schema import register_configs

register_configs()   # the schema (mpu_run) and the generated mpu/trainer options, before Hydra composes

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
log = logging.getLogger("train")


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mpu.errors import MPUError
    from mpu.experiments import run_experiment

    runtime = HydraConfig.get()
    try:
        record = run_experiment(cfg, runtime.runtime.output_dir, experiment=runtime.runtime.choices.get("experiment"),
                                overrides=list(runtime.overrides.task))
    except MPUError as err:
        log.error("%s", err)
        sys.exit(2)
    summary = record.get("summary") or {}
    shown = ", ".join(f"{key} {summary[key]:.4g}" for key in ("forget_quality", "model_utility", "forget_Q_A_ROUGE")
                      if isinstance(summary.get(key), (int, float)))
    what = "noise-free baseline" if record["mode"] == "baseline" else f"MPU m={record['m']} kappa={record['kappa']}"
    log.info("%s %s done in %.0fs%s; wrote %s", record["method"], what, record["seconds"]["total"],
             f" ({shown})" if shown else "", runtime.runtime.output_dir)


if __name__ == "__main__":
    main()
