"""The Hydra-style YAML groups mirror the Python defaults, and a suite can be overridden from one."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mpu.eval.metrics import METRICS
from mpu.eval.suites import SUITES

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", sorted(SUITES))
def test_eval_yaml_equals_the_suite(name):
    assert OmegaConf.to_container(OmegaConf.load(CONFIGS / "eval" / f"{name}.yaml")) == SUITES[name]


@pytest.mark.parametrize("name", ["tofu", "muse"])
def test_suites_reference_known_handlers_and_keys(name):
    suite = SUITES[name]
    for key, spec in suite["metrics"].items():
        assert spec["handler"] in METRICS, key
        for pre in spec.get("pre_compute", {}):
            assert pre in suite["metrics"], (key, pre)
        data = spec.get("data")
        for dataset in (data.values() if isinstance(data, dict) else [data] if data else []):
            assert dataset in suite["datasets"], (key, dataset)
    assert set(suite["summary"]) <= set(suite["metrics"])


def test_a_suite_can_be_overridden_from_yaml(tmp_path):
    from mpu.eval.evaluator import load_suite

    path = tmp_path / "small.yaml"
    path.write_text("benchmark: tofu\nforget_split: forget05\nmetrics:\n  forget_Q_A_Prob:\n"
                    "    handler: probability\n    data: forget\nsummary: [forget_Q_A_Prob]\n")
    suite = load_suite("tofu", path)
    assert suite["forget_split"] == "forget05" and list(suite["metrics"]) == ["forget_Q_A_Prob"]
    assert suite["datasets"] == SUITES["tofu"]["datasets"]
    with pytest.raises(Exception, match="muse"):
        load_suite("muse", path)
