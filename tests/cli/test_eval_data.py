"""Which built-in data a command uses (issue 19.4): the sizes live in one preset table, and
``mpu eval`` evaluates a model on its own data (recorded, or found by its tokenizer), saying which."""

from __future__ import annotations

import json

import pytest

from mpu.checkpoint import save_model
from mpu.cli import build_parser, main
from mpu.data.builtin import SIZE_PRESETS, BuildConfig, ensure_builtin, preset_config
from mpu.experiments.demo import DemoConfig
from mpu.errors import MPUError
from mpu.eval.evaluator import model_data

SMALL = dict(facts=5, news=20, topics=8)


def test_every_entry_point_takes_its_sizes_from_the_preset_table():
    from mpu.experiments import compose_config

    assert preset_config("full") == BuildConfig()
    assert DemoConfig().authors == SIZE_PRESETS["demo"]["authors"]
    assert build_parser().parse_args(["demo"]).authors == SIZE_PRESETS["demo"]["authors"]
    assert build_parser().parse_args(["data", "build", "--out", "D"]).authors == preset_config("full").authors
    for experiment in ("unlearn/tofu/default", "unlearn/muse/builtin"):
        cfg, _ = compose_config([f"experiment={experiment}", "trainer=NPO"])
        assert cfg.benchmark.authors == SIZE_PRESETS["experiment"]["authors"], experiment
    with pytest.raises(MPUError, match="unknown size preset"):
        preset_config("huge")


@pytest.fixture
def two_cached_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    small = ensure_builtin(BuildConfig(authors=20, **SMALL))
    other = ensure_builtin(BuildConfig(authors=30, **SMALL))
    return small, other


def test_eval_finds_an_exported_models_dataset_by_its_tokenizer_and_says_so(tmp_path, two_cached_datasets, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.experiments.finetune import finetune

    small, other = two_cached_datasets
    target = tmp_path / "target"
    finetune(small, "tofu", "full", target, epochs=1, progress=False)
    assert model_data(target, "tofu")[0] == str(small.resolve())          # recorded
    exported = tmp_path / "exported"   # what `server export` / `mpu run` write: no record, the same tokenizer
    exported.mkdir()
    save_model(AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32), AutoTokenizer.from_pretrained(target), exported)
    assert not (exported / "mpu_finetune.json").exists()
    data, note = model_data(exported, "tofu")
    assert data == str(small) and "tokenizer" in note
    capsys.readouterr()
    assert main(["eval", "--model", str(exported), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"data: {small}" in err
    assert "Loading weights" not in err   # transformers' own bar: the evaluation reports the model itself
    config = json.loads((tmp_path / "eval" / "TOFU_EVAL_CONFIG.json").read_text())
    assert str(small) in config["data"] and str(other) not in config["data"]

    # a second evaluation into the same folder would lose the first: refused before any work, unless --overwrite
    earlier = {path.name: path.read_bytes() for path in (tmp_path / "eval").iterdir()}
    assert main(["eval", "--model", str(target), "--out", str(tmp_path / "eval"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "eval") in err and "TOFU_SUMMARY.json" in err and "--overwrite" in err and "data:" not in err
    assert {path.name: path.read_bytes() for path in (tmp_path / "eval").iterdir()} == earlier
    assert main(["eval", "--model", str(target), "--out", str(tmp_path / "eval"), "--no-progress", "--overwrite"]) == 0
    assert str(target) in (tmp_path / "eval" / "TOFU_EVAL_CONFIG.json").read_text()


def test_a_record_for_another_benchmark_is_not_used(tmp_path, two_cached_datasets):
    model = tmp_path / "m"
    model.mkdir()
    (model / "mpu_finetune.json").write_text(json.dumps({"data": str(two_cached_datasets[0]), "metrics": {"benchmark": "muse"}}))
    assert model_data(model, "tofu")[0] is None
    assert model_data(model, "muse")[0] == str(two_cached_datasets[0])


def test_readme_says_where_the_demo_keeps_its_files(tmp_path, monkeypatch):
    from pathlib import Path

    from mpu.data.builtin import cache_root

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    first = readme.split("\n## ")[1]
    assert first.startswith("Quick start") and ".venv/bin/mpu demo" in first and "pytest" in first
    config = DemoConfig()
    retain_split = "retain" + str(100 - int(config.forget_split[-2:])).zfill(2)
    for name in (f"tofu/{config.forget_split}.json", f"tofu/{retain_split}.json", "$MPU_CACHE", "~/.cache/mpu",
                 f"-seed0-a{config.authors}-", "runs/demo/mpu"):
        assert name in readme, name
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
