"""Hydra entry point for evaluating one checkpoint with an experiment's data, retain model and suite.

    python src/eval.py model_path=runs/unlearn/tofu/default/<run>          # a train.py run dir
    python src/eval.py model_path=target                                   # the experiment's target
    python src/eval.py experiment=unlearn/tofu/llama-3.2-1b model_path=/path/to/checkpoint

Writes <BENCH>_SUMMARY.json, <BENCH>_EVAL.json and eval.json into the Hydra run dir.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mpu.experiments.schema import register_configs

register_configs()   # the schema (mpu_run) and the generated mpu/trainer options, before Hydra composes

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
log = logging.getLogger("eval")


@hydra.main(config_path=CONFIGS, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mpu.errors import MPUError
    from mpu.experiments import evaluate_experiment

    out = HydraConfig.get().runtime.output_dir
    try:
        summary = evaluate_experiment(cfg, out)
    except MPUError as err:
        log.error("%s", err)
        sys.exit(2)
    print(json.dumps(summary, indent=2))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
