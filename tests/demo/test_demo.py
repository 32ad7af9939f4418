"""The demo pipeline end to end at a reduced size: every summary key is produced, the numbers are the
evaluation's, and two identical invocations print identical tables (the server's randomness follows
the demo's seed)."""

import json

import pytest
from scipy.stats import ks_2samp

from mpu.cli import main
from mpu.experiments.demo import COLUMNS, DemoConfig, format_table, verdict

ARGS = ["--authors", "20", "--base-epochs", "1", "--finetune-epochs", "8", "--epochs", "1", "--copies", "2"]


def forget_truth_ratios(out, name):
    logs = json.loads((out / "eval" / name / "TOFU_EVAL.json").read_text())
    return [entry["score"] for entry in logs["forget_truth_ratio"]["value_by_index"].values()]


def test_demo_runs_end_to_end_and_is_reproducible(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "demo-1", tmp_path / "demo-2"

    codes = [main(["demo", "--out", str(out), *ARGS]) for out in (first, second)]

    assert codes == [0, 0]
    summary = json.loads((first / "summary.json").read_text())
    assert set(summary["models"]) == {"target", "retain", "noise-free", "MPU"}
    for name, values in summary["models"].items():
        assert set(values) == set(COLUMNS)
        assert values["model_utility"] is not None and 0 <= values["model_utility"] <= 1, name
    # forget_quality is the KS p-value of the model's forget truth ratios against the retain model's
    # (read back from the evaluation files), and unlearning moved both unlearned models towards retain.
    retain = forget_truth_ratios(first, "retain")
    for name in ("target", "noise-free", "MPU"):
        expected = ks_2samp(forget_truth_ratios(first, name), retain).pvalue
        assert summary["models"][name]["forget_quality"] == pytest.approx(expected, rel=1e-9), name
    target_quality = summary["models"]["target"]["forget_quality"]
    assert summary["models"]["noise-free"]["forget_quality"] > target_quality
    assert summary["models"]["MPU"]["forget_quality"] > target_quality
    assert summary["seconds"]["total"] > 0
    assert (first / "report.png").stat().st_size > 1000
    # The same invocation again: the same numbers, MPU row included, and the seed is stated.
    again = json.loads((second / "summary.json").read_text())
    assert again["models"] == summary["models"] and again["verdict"] == summary["verdict"]
    printed = capsys.readouterr().out
    assert "MPU model utility" in printed and "forget_quality" in printed
    assert printed.count("MPU randomness: fixed seed 0") == 2
    # sigma is a fraction of the task vector: the base the models were fine-tuned from reached the server
    assert summary["sigma_from"] == "task-vector" and summary["base"]
    assert set(summary["task_vector_ratio"]) >= {"layers.0", "embed_tokens"}
    assert printed.count("MPU noise: sigma = kappa * RMS(theta - theta_base)") == 2
    assert printed.count("[sigma from the task vector theta - theta_base]") == 2


def test_the_weights_control_is_labelled(tmp_path):
    summary = {"models": {"MPU": {}}, "sigma": None}
    with pytest.raises(ValueError, match="sigma_from"):
        DemoConfig(out_dir=tmp_path, sigma_from="theta")
    from mpu.experiments.demo import SIGMA_FROM

    summary["sigma"] = SIGMA_FROM["weights"]
    assert "CONTROL" in format_table(summary).splitlines()[0]
    assert "CONTROL" in verdict({"model_utility": 0.5}, {"model_utility": 0.5}, "weights")
    assert "CONTROL" not in verdict({"model_utility": 0.5}, {"model_utility": 0.5}, "task-vector")
