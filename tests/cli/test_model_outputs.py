"""Every command that writes a model folder writes only the allow-listed model files: the source
model's own metadata (``mpu_finetune.json`` with its training fingerprint and metrics, notes, custom
config keys) never reaches an unlearned or exported model (issue 18, item 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpu.checkpoint import save_model
from mpu.checkpoint.files import is_model_file
from mpu.cli import main

MARKER = "owner-private-marker-7f3a"


@pytest.fixture
def planted_model(tmp_path, tiny_model_dir) -> Path:
    """The tiny model plus owner metadata: mpu_finetune.json, a notes file, a custom config key."""
    source = tmp_path / "target"
    shutil.copytree(tiny_model_dir, source)
    (source / "mpu_finetune.json").write_text(json.dumps({"fingerprint": MARKER, "metrics": {"train_loss": 0.1}}))
    (source / "NOTES.md").write_text(f"trained on {MARKER}\n")
    config = json.loads((source / "config.json").read_text())
    config["owner_note"] = MARKER
    (source / "config.json").write_text(json.dumps(config))
    return source


def assert_clean(folder: Path, extra: frozenset[str] = frozenset()) -> None:
    names = {path.name for path in folder.iterdir()}
    assert "config.json" in names and any(name.endswith(".safetensors") for name in names)
    assert {name for name in names if not is_model_file(name)} <= extra, names
    for path in folder.iterdir():
        assert MARKER.encode() not in path.read_bytes(), f"{path.name} carries the source model's metadata"


def test_mpu_run_output_holds_only_model_files(tmp_path, planted_model, forget_file, capsys):
    out = tmp_path / "unlearned"
    code = main(["run", "--model", str(planted_model), "--forget", str(forget_file), "--method", "GradAscent", "--epochs", "1",
                 "--learning-rate", "1e-3", "--copies", "2", "--out", str(out)])
    assert code == 0
    assert_clean(out)


def test_mpu_unlearn_output_holds_model_files_and_its_own_summary(tmp_path, planted_model, forget_file):
    out = tmp_path / "baseline"
    code = main(["unlearn", "--model", str(planted_model), "--forget", str(forget_file), "--method", "GradAscent",
                 "--epochs", "1", "--learning-rate", "1e-3", "--out", str(out)])
    assert code == 0
    assert_clean(out, extra=frozenset({"unlearn_summary.json"}))
    summary = json.loads((out / "unlearn_summary.json").read_text())
    assert summary["method"] == "GradAscent" and summary["steps"] > 0


def test_server_export_holds_only_model_files(tmp_path, planted_model, forget_file, capsys):
    work, outbox, returns, final = (tmp_path / name for name in ("server", "outbox", "returns", "final"))
    assert main(["server", "init", "--model", str(planted_model), "--workdir", str(work), "--copies", "2"]) == 0
    assert main(["server", "publish", "--workdir", str(work), "--out", str(outbox)]) == 0
    for copy in sorted(outbox.glob("copy-*")):
        assert_clean(copy)   # what the client sees
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget_file), "--method", "GradAscent",
                 "--epochs", "1", "--learning-rate", "1e-3", "--out", str(returns)]) == 0
    assert main(["server", "aggregate", "--workdir", str(work), "--returns", str(returns)]) == 0
    assert main(["server", "export", "--workdir", str(work), "--out", str(final)]) == 0
    assert_clean(final)


def test_save_model_used_by_the_demo_and_experiment_baselines_drops_the_metadata(tmp_path, planted_model):
    model = AutoModelForCausalLM.from_pretrained(planted_model, dtype=torch.float32)
    assert model.config.owner_note == MARKER   # a loaded config keeps custom keys: save_pretrained would write it
    tokenizer = AutoTokenizer.from_pretrained(planted_model)
    out = tmp_path / "saved"
    out.mkdir()
    written = save_model(model, tokenizer, out)
    assert "config.json" in written and any(name.endswith(".safetensors") for name in written)
    assert_clean(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
