"""Sanity of the whole pipeline on the built-in benchmark: a target that memorised the forget set
against a retain model that never saw it."""

from __future__ import annotations

import pytest

from mpu.eval import evaluate
from tests.eval.conftest import one_thread


def _tofu(model_dir, bench, retain_dir, out):
    with one_thread():
        return evaluate(model_dir, "tofu", data=bench, forget_split="forget10", retain_model=retain_dir,
                        out_dir=out, progress=False, batch_size=16)


def test_fast_target_against_retain_model(fast_bench, fast_models, tmp_path):
    full, full_metrics = fast_models["full"]
    retain, retain_metrics = fast_models["retain90"]
    assert full_metrics["answer_token_accuracy"] > 0.95
    assert retain_metrics["answer_token_accuracy"] > 0.95
    target = _tofu(full, fast_bench, retain, tmp_path / "target")
    reference = _tofu(retain, fast_bench, retain, tmp_path / "retain")
    assert target["forget_Q_A_ROUGE"] > 0.9
    assert reference["forget_Q_A_ROUGE"] < target["forget_Q_A_ROUGE"] - 0.3
    assert target["forget_Q_A_Prob"] > 0.8 > 0.3 > reference["forget_Q_A_Prob"]
    assert reference["forget_quality"] == 1.0
    assert target["forget_quality"] < 0.1
    assert target["mia_min_k"] > 0.9             # members (forget) far more likely than holdout
    assert target["privleak"] < -50
    assert abs(reference["privleak"]) < 1e-6   # the retain model against itself
    assert target["retain_Q_A_ROUGE"] > 0.9 and reference["retain_Q_A_ROUGE"] > 0.9


@pytest.mark.slow
def test_default_size_tofu(slow_bench, slow_models, tmp_path):
    full, full_metrics = slow_models[("tofu", "full")]
    retain, retain_metrics = slow_models[("tofu", "retain90")]
    assert full_metrics["answer_token_accuracy"] > 0.95 and retain_metrics["answer_token_accuracy"] > 0.95
    target = _tofu(full, slow_bench, retain, tmp_path / "target")
    reference = _tofu(retain, slow_bench, retain, tmp_path / "retain")
    assert target["forget_Q_A_ROUGE"] > 0.9
    assert reference["forget_Q_A_ROUGE"] < 0.6
    assert target["forget_truth_ratio"] < reference["forget_truth_ratio"] - 0.05
    assert target["forget_quality"] < 0.01
    assert reference["forget_quality"] == 1.0
    for key in ("mia_loss", "mia_min_k", "mia_min_k_plus_plus", "mia_zlib"):
        assert target[key] > 0.9, key
        assert abs(reference[key] - 0.5) < 0.2, key
    assert target["model_utility"] > 0.5 and reference["model_utility"] > 0.5


@pytest.mark.slow
def test_default_size_muse_and_wmdp(slow_bench, slow_models, tmp_path):
    with one_thread():
        muse = {split: evaluate(slow_models[("muse", split)][0], "muse", data=slow_bench,
                                retain_model=slow_models[("muse", "retain")][0], out_dir=tmp_path / f"muse_{split}",
                                progress=False)
                for split in ("full", "retain")}
        wmdp = {split: evaluate(slow_models[("wmdp", split)][0], "wmdp", data=slow_bench,
                                out_dir=tmp_path / f"wmdp_{split}", progress=False)
                for split in ("full", "retain")}
    full, retain = muse["full"], muse["retain"]
    assert full["forget_verbmem_ROUGE"] > 0.9 and retain["forget_verbmem_ROUGE"] < full["forget_verbmem_ROUGE"] - 0.25
    assert full["forget_knowmem_ROUGE"] > 0.6 and retain["forget_knowmem_ROUGE"] < full["forget_knowmem_ROUGE"] - 0.3
    assert full["retain_knowmem_ROUGE"] > 0.7 and retain["retain_knowmem_ROUGE"] > 0.7
    assert full["extraction_strength"] > 0.9 > 0.5 > retain["extraction_strength"]
    assert muse["full"]["privleak"] < -50 and abs(muse["retain"]["privleak"]) < 1e-6
    assert wmdp["full"]["wmdp_synth"] > 0.9
    assert wmdp["retain"]["wmdp_synth"] < 0.6
    assert wmdp["full"]["mmlu"] > 0.9 and wmdp["retain"]["mmlu"] > 0.9
