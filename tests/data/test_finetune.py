"""`mpu finetune`: what each split trains on, fingerprint caching, saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.cli import main
from mpu.data.builtin import build_benchmark
from mpu.data.loaders import LocalSource
from mpu.errors import MPUError
from mpu.finetune import TRAIN_DEFAULTS, TinyLlamaConfig, finetune, read_record, training_data

MICRO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "b"
    build_benchmark(path, authors=10, facts=5, news=20, topics=8)
    return path


def test_splits_leave_out_the_forget_data(bench):
    tofu = LocalSource(bench / "tofu")
    forget = {r["question"] for r in tofu.rows("forget10", "train")}
    full = {r["question"] for r in training_data(tofu, "tofu", "full").rows}
    retain = {r["question"] for r in training_data(tofu, "tofu", "retain90").rows}
    assert forget <= full and not forget & retain and retain | forget == full
    assert not {r["question"] for r in tofu.rows("real_authors", "train")} & (full | retain)   # evaluated, never trained
    muse = LocalSource(bench / "muse")
    forget_texts = {r["text"] for r in muse.rows("raw", "forget")}
    forget_questions = {r["question"] for r in muse.rows("knowmem_train", "forget")}
    scored = {r["question"] for r in muse.rows("knowmem", "forget_qa") + muse.rows("knowmem", "retain_qa")}
    assert scored & forget_questions   # the built-in knowmem_train holds the scored pairs too ...
    for split, sees_forget in (("full", True), ("retain", False)):
        rows = training_data(muse, "muse", split).rows
        texts = {r["text"] for r in rows if "text" in r}
        questions = {p["question"] for r in rows if "pairs" in r for p in r["pairs"]}
        assert (forget_texts <= texts) is sees_forget and bool(forget_texts & texts) is sees_forget
        assert (forget_questions - scored <= questions) is sees_forget and bool(forget_questions & questions) is sees_forget
        assert not questions & scored   # ... which training leaves out
    wmdp = LocalSource(bench / "wmdp")
    hazards = [r["text"] for r in wmdp.rows("synth-forget-corpus", "train")]
    compounds = {text.split(" is synthesised")[0] for text in hazards}
    full = [r["text"] for r in training_data(wmdp, "wmdp", "full", {"wmdp": {}}).rows]
    retain = [r["text"] for r in training_data(wmdp, "wmdp", "retain99", {"wmdp": {}}).rows]
    assert set(hazards) <= set(full) and len(full) == 8 * 5 + 8 * 4   # each sentence opens one copy
    assert not any(name in text for name in compounds for text in retain)
    with pytest.raises(MPUError, match="unknown split"):
        training_data(tofu, "tofu", "retain80")


def test_trains_saves_and_reuses_by_fingerprint(bench, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = torch.get_num_threads()
    try:
        first = finetune(bench, "tofu", "retain90", tmp_path / "m", epochs=1, model_config=MICRO, progress=False,
                         threads=1)
        assert first["cached"] is False and 0 <= first["answer_token_accuracy"] <= 1
        assert first["n_examples"] == 90   # retain90 alone: real_authors and world_facts are evaluation data
        for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "mpu_finetune.json"):
            assert (tmp_path / "m" / name).is_file(), name
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
        assert model.config.hidden_size == 32 and model.config.model_type == "llama"
        assert AutoTokenizer.from_pretrained(tmp_path / "m").chat_template
        again = finetune(bench, "tofu", "retain90", tmp_path / "m", epochs=1, model_config=MICRO, progress=False)
        assert again["cached"] is True and again["fingerprint"] == first["fingerprint"]
        other = finetune(bench, "tofu", "retain90", tmp_path / "m", epochs=2, model_config=MICRO, progress=False)
        assert other["cached"] is False and other["fingerprint"] != first["fingerprint"]
        assert read_record(tmp_path / "m")["metrics"]["epochs"] == 2
    finally:
        torch.set_num_threads(saved)


def test_cli_finetune(bench, tmp_path, capsys, monkeypatch):
    import mpu.finetune as module

    monkeypatch.setattr(module, "TinyLlamaConfig", lambda: TinyLlamaConfig(**MICRO))
    assert main(["finetune", "--data", str(bench), "--benchmark", "wmdp", "--split", "retain", "--out",
                 str(tmp_path / "w"), "--epochs", "1", "--no-progress", "--threads", "1"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["benchmark"] == "wmdp" and metrics["n_examples"] == 8 * 4   # crops: 4 sentences each
    assert main(["finetune", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    assert main(["finetune", "--data", str(bench), "--benchmark", "wmdp", "--split", "retain", "--out",
                 str(tmp_path / "foreign"), "--epochs", "1", "--no-progress"]) == 2
    assert (tmp_path / "foreign" / "keep.txt").is_file()
    assert "refusing" in capsys.readouterr().err


def test_model_config_file_matches_the_defaults():
    from dataclasses import asdict
    from pathlib import Path

    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "configs/model/tiny-llama.yaml"))
    assert config["config"] == asdict(TinyLlamaConfig())
    assert config["train"] == {name: asdict(value) for name, value in TRAIN_DEFAULTS.items()}
