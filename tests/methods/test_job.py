"""UnlearnJob (one run's inputs) and unlearn_model (the noise-free baseline: load, unlearn, save)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from mpu.checkpoint import CheckpointReader
from mpu.errors import MPUError
from mpu.methods import TrainingConfig, UnlearnJob, method_hparams, run_unlearning, unlearn_model
from mpu.methods.job import SUMMARY
from tests.methods.conftest import options


def test_a_job_runs_exactly_what_the_positional_form_runs(model, tokenizer, forget_rows, retain_rows, tmp_path):
    twin = copy.deepcopy(model)
    job = UnlearnJob("GradDiff", {"alpha": 0.5}, options(max_steps=3), forget_rows, retain_rows)

    result = job.run(model, tokenizer, tmp_path / "a")
    legacy = run_unlearning(twin, tokenizer, forget_rows, retain_rows, "GradDiff", {"alpha": 0.5}, options(max_steps=3), str(tmp_path / "b"))

    assert result.steps == legacy.steps == 3 and result.losses == legacy.losses
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_a_job_uses_the_given_reference_only_for_reference_methods(model, tokenizer, forget_rows, tmp_path):
    loaded = []
    job = UnlearnJob("NPO", None, options(max_steps=1), forget_rows, reference=lambda: loaded.append(1) or copy.deepcopy(model))
    trainer = job.prepare(model, tokenizer, tmp_path)
    assert loaded == [1] and trainer.ref_model is not None and trainer.ref_model is not model
    ascent = UnlearnJob("GradAscent", None, options(max_steps=1), forget_rows, reference=lambda: loaded.append(2))
    assert ascent.prepare(model, tokenizer, tmp_path).ref_model is None and loaded == [1]


def test_a_job_is_checked_when_made():
    with pytest.raises(MPUError, match="unknown unlearning method 'NPOO'"):
        UnlearnJob("NPOO")
    with pytest.raises(TypeError, match="TrainingConfig"):
        UnlearnJob("NPO", training={"epochs": 1})
    with pytest.raises(ValueError, match="dp_runs"):
        UnlearnJob("NPO", dp_runs=0)
    with pytest.raises(MPUError, match="do not belong to method NPO"):
        UnlearnJob("NPO", method_hparams("GradDiff")).settings()


def test_settings_resolve_the_hyperparameters(forget_rows):
    settings = UnlearnJob("NPO", {"beta": 0.3}, TrainingConfig(epochs=2), forget_rows).settings()
    assert settings["method"] == "NPO" and settings["hparams"]["beta"] == 0.3 and settings["training"]["epochs"] == 2
    assert json.loads(json.dumps(settings)) == settings


def test_unlearn_model_loads_unlearns_and_saves(tiny_dir, tokenizer, forget_rows, tmp_path):
    source = tiny_dir / "model"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("replaced")
    job = UnlearnJob("GradAscent", None, options(max_steps=2), forget_rows)

    result = unlearn_model(source, job, tmp_path / "out", summary={"base_model": "tiny"})

    # the same job on the model loaded by hand gives the same weights
    expected = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    job.run(expected, tokenizer, tmp_path / "scratch")
    saved, original = CheckpointReader(tmp_path / "out"), CheckpointReader(source)
    state = expected.state_dict()
    assert all(torch.equal(saved.get(name), state[name]) for name in saved.names())
    assert any(not torch.equal(saved.get(name), original.get(name)) for name in saved.names())  # it did unlearn
    assert not (tmp_path / "out" / "stale.txt").exists()
    summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
    assert summary["method"] == "GradAscent" and summary["base_model"] == "tiny"
    assert summary["steps"] == result.steps == 2 and summary["forget_rows"] == len(forget_rows) and summary["retain_rows"] == 0
    assert summary["losses"] == result.losses


def test_unlearn_model_without_a_summary_writes_only_the_model(tiny_dir, forget_rows, tmp_path):
    unlearn_model(tiny_dir / "model", UnlearnJob("GradAscent", None, options(max_steps=1), forget_rows), tmp_path / "out")
    assert not (tmp_path / "out" / SUMMARY).exists()
    assert (tmp_path / "out" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left beside it


def test_unlearn_model_refuses_a_folder_that_is_not_a_model(tmp_path, forget_rows):
    from mpu.errors import InputError

    with pytest.raises(InputError, match="no config.json"):
        unlearn_model(tmp_path, UnlearnJob("GradAscent", None, options(), forget_rows), tmp_path / "out")
    assert not (tmp_path / "out").exists()
