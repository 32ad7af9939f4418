"""`mpu eval` end to end: output files, OpenUnlearning key names, retain logs, failures."""

from __future__ import annotations

import json
import time

import pytest

from mpu.cli import main
from tests.eval.conftest import one_thread

TOFU_KEYS = {"forget_Q_A_Prob", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_Q_A_ROUGE",
             "forget_truth_ratio", "forget_quality", "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
             "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE",
             "wf_Truth_Ratio", "model_utility", "privleak", "extraction_strength", "exact_memorization",
             "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference"}
MODEL_UTILITY_PARTS = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised",
                       "ra_Q_A_ROUGE", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")


def run(*argv):
    with one_thread():
        return main(list(argv))


def test_tofu_files_and_keys(fast_bench, fast_models, tmp_path, capsys):
    full, retain = fast_models["full"][0], fast_models["retain90"][0]
    out = tmp_path / "tofu"
    assert run("eval", "--model", str(full), "--benchmark", "tofu", "--data", str(fast_bench),
               "--forget-split", "forget10", "--retain-model", str(retain), "--out", str(out), "--no-progress") == 0
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    assert TOFU_KEYS <= set(logs)
    assert summary == json.loads(capsys.readouterr().out)
    for key in ("forget_Q_A_Prob", "forget_truth_ratio", "extraction_strength", "forget_Q_A_ROUGE"):
        assert set(logs[key]) >= {"agg_value", "value_by_index"}
        assert len(logs[key]["value_by_index"]) == 10   # forget10 of 10 authors: one author
        assert summary[key] == logs[key]["agg_value"]
    assert set(logs["mia_min_k"]) >= {"forget", "holdout", "auc", "agg_value"}
    assert set(logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]) >= {"rougeL_recall", "rougeL_f1", "generation",
                                                                   "ground_truth", "input"}
    assert len(logs["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]) == 5
    assert 0 <= summary["forget_quality"] <= 1 and 0 <= summary["model_utility"] <= 1
    # model_utility is the harmonic mean of its nine parts (0 when any part is 0: the fast target has no
    # general-knowledge base stage, so it may score 0 on real authors or world facts).
    parts = [logs[k]["agg_value"] for k in MODEL_UTILITY_PARTS]
    expected = 0.0 if min(parts) <= 0 else len(parts) / sum(1 / v for v in parts)
    assert summary["model_utility"] == pytest.approx(expected)
    config = json.loads((out / "TOFU_EVAL_CONFIG.json").read_text())
    assert config["forget_split"] == "forget10" and config["retain_model"] == str(retain)

    # The retain model's own logs give the same forget_quality and privleak as the retain model.
    retain_out = tmp_path / "retain"
    assert run("eval", "--model", str(retain), "--data", str(fast_bench), "--out", str(retain_out),
               "--no-progress") == 0
    from_logs = tmp_path / "from_logs"
    assert run("eval", "--model", str(full), "--data", str(fast_bench), "--out", str(from_logs), "--no-progress",
               "--retain-logs", str(retain_out / "TOFU_EVAL.json")) == 0
    again = json.loads((from_logs / "TOFU_SUMMARY.json").read_text())
    assert again["forget_quality"] == pytest.approx(summary["forget_quality"])
    assert again["privleak"] == pytest.approx(summary["privleak"])
    assert "mia_reference" not in again    # needs the model itself, not its logs


def test_retain_logs_of_another_forget_split_are_refused(fast_bench, fast_models, tmp_path, capsys):
    full = fast_models["full"][0]
    logs = {"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {str(i): {"score": 1.0} for i in range(3)}}}
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(logs))
    code = run("eval", "--model", str(full), "--data", str(fast_bench), "--out", str(tmp_path / "o"),
               "--no-progress", "--retain-logs", str(tmp_path / "TOFU_EVAL.json"))
    assert code == 2
    assert "another forget split" in capsys.readouterr().err


def test_muse_and_wmdp_files(fast_bench, fast_models, tmp_path):
    full, retain = fast_models["full"][0], fast_models["retain90"][0]
    assert run("eval", "--model", str(full), "--benchmark", "muse", "--data", str(fast_bench), "--retain-model",
               str(retain), "--out", str(tmp_path), "--no-progress") == 0
    muse = json.loads((tmp_path / "MUSE_EVAL.json").read_text())
    assert {"forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE", "privleak",
            "extraction_strength", "mia_min_k", "mia_reference"} <= set(muse)
    generation = muse["forget_knowmem_ROUGE"]["value_by_index"]["0"]
    assert generation["input"].count("Question:") == 4 and "\n\n" not in generation["generation"]
    assert run("eval", "--model", str(full), "--benchmark", "wmdp", "--data", str(fast_bench), "--out",
               str(tmp_path), "--no-progress") == 0
    wmdp = json.loads((tmp_path / "WMDP_SUMMARY.json").read_text())
    assert set(wmdp) == {"wmdp_synth", "mmlu"}
    logs = json.loads((tmp_path / "WMDP_EVAL.json").read_text())
    assert len(logs["wmdp_synth"]["value_by_index"]) == 8 * 5
    assert logs["wmdp_synth"]["value_by_index"]["0"]["mode"] == "cloze"


def test_hub_name_offline_fails_fast_with_how_to(fast_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    code = run("eval", "--model", str(fast_models["full"][0]), "--benchmark", "tofu", "--data", "locuslab/TOFU",
               "--out", str(tmp_path), "--no-progress")
    assert code == 2
    assert time.perf_counter() - started < 15
    err = capsys.readouterr().err
    assert "locuslab/TOFU" in err and "--data DIR" in err and "huggingface-cli download" in err


def test_bad_arguments_are_user_errors(fast_bench, fast_models, tmp_path, capsys):
    full = str(fast_models["full"][0])
    assert run("eval", "--model", str(tmp_path / "nope"), "--data", str(fast_bench), "--out", str(tmp_path)) == 2
    assert run("eval", "--model", full, "--data", str(tmp_path / "missing"), "--out", str(tmp_path)) == 2
    assert run("eval", "--model", full, "--data", str(fast_bench), "--forget-split", "forget33",
               "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "no such" in err and "forget33" in err
