"""TOFU and MUSE as released, end to end (issue 18, done-when): small directories with the releases'
file names, layouts and column names (tests/data/releases.py, invented content) go through
``mpu finetune`` (target and retain model) -> ``mpu unlearn`` (noise-free) and MPU (the two-party
server/client commands for TOFU, ``mpu run`` for MUSE) -> ``mpu eval``, all through the CLI, with
tiny models and a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mpu.cli import main
from mpu.checkpoint.files import is_model_file
from tests.data.releases import make_muse_release, make_tofu_release

EPOCHS = "3"  # enough for every command to run; nothing here measures how well a model forgets


def _vocab(model: Path) -> dict:
    return json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]


def _eval(capsys, *args: str) -> tuple[dict, dict, str]:
    capsys.readouterr()
    out = Path(args[args.index("--out") + 1])
    assert main(["eval", "--no-progress", *args]) == 0
    err = capsys.readouterr().err
    bench = args[args.index("--benchmark") + 1].upper() if "--benchmark" in args else "TOFU"
    summary = json.loads((out / f"{bench}_SUMMARY.json").read_text())
    config = json.loads((out / f"{bench}_EVAL_CONFIG.json").read_text())
    return summary, config, err


def _finetune(data: Path, benchmark: str, split: str, out: Path) -> None:
    assert main(["finetune", "--data", str(data), "--benchmark", benchmark, "--split", split, "--out", str(out),
                 "--epochs", EPOCHS, "--no-progress"]) == 0
    assert (out / "mpu_finetune.json").is_file()


def test_tofu_release_finetune_unlearn_mpu_eval(tmp_path, capsys):
    data = make_tofu_release(tmp_path / "TOFU", authors=20)
    target, retain = tmp_path / "target", tmp_path / "retain90"
    _finetune(data, "tofu", "full", target)
    _finetune(data, "tofu", "retain90", retain)
    # one tokenizer per dataset, cached beside the data, shared by target and retain model
    assert (data / "mpu_tokenizer" / "tofu" / "tokenizer.json").is_file()
    assert _vocab(target) == _vocab(retain)

    forget, retain_rows = data / "forget10.json", data / "retain90.json"   # TOFU's own names: an array, JSON lines
    baseline = tmp_path / "baseline"
    assert main(["unlearn", "--model", str(target), "--forget", str(forget), "--retain", str(retain_rows),
                 "--method", "GradDiff", "--epochs", "1", "--learning-rate", "1e-3", "--no-progress-bar",
                 "--out", str(baseline)]) == 0

    work, outbox, returns, mpu_model = (tmp_path / name for name in ("server", "outbox", "returns", "mpu"))
    assert main(["server", "init", "--model", str(target), "--workdir", str(work), "--copies", "2"]) == 0
    assert main(["server", "publish", "--workdir", str(work), "--out", str(outbox)]) == 0
    assert main(["client", "unlearn", "--inbox", str(outbox), "--forget", str(forget), "--retain", str(retain_rows),
                 "--method", "GradDiff", "--epochs", "1", "--learning-rate", "1e-3", "--no-progress-bar",
                 "--out", str(returns)]) == 0
    assert main(["server", "aggregate", "--workdir", str(work), "--returns", str(returns)]) == 0
    assert main(["server", "export", "--workdir", str(work), "--out", str(mpu_model)]) == 0
    assert all(is_model_file(path.name) for path in mpu_model.iterdir())

    # the target records its data: eval uses it without --data and says so
    summary, config, err = _eval(capsys, "--model", str(target), "--retain-model", str(retain),
                                 "--forget-split", "forget10", "--out", str(tmp_path / "eval-target"))
    assert f"recorded in {target / 'mpu_finetune.json'}" in err
    assert str(data) in config["data"]
    for name, model in (("baseline", baseline), ("mpu", mpu_model)):
        summary, config, _ = _eval(capsys, "--model", str(model), "--data", str(data), "--retain-model", str(retain),
                                   "--forget-split", "forget10", "--out", str(tmp_path / f"eval-{name}"))
        assert {"forget_quality", "model_utility", "forget_Q_A_ROUGE", "privleak"} <= set(summary), (name, summary)
        assert 0.0 <= summary["forget_quality"] <= 1.0 and 0.0 <= summary["model_utility"] <= 1.0
        # the shared tokenizer: mia_reference has its reference model, nothing is skipped for want of data
        assert "mia_reference" not in config["skipped_metrics"], config["skipped_metrics"]
        assert config["missing_data"] == {}


def test_muse_release_finetune_unlearn_mpu_eval(tmp_path, capsys):
    data = make_muse_release(tmp_path / "MUSE-News", stories=4)
    target, retain = tmp_path / "target", tmp_path / "retain"
    _finetune(data, "muse", "full", target)
    _finetune(data, "muse", "retain", retain)
    assert _vocab(target) == _vocab(retain)

    forget, retain_texts = data / "raw" / "forget.txt", data / "raw" / "retain1.json"   # raw text and an array of strings
    baseline, mpu_model = tmp_path / "baseline", tmp_path / "mpu"
    assert main(["unlearn", "--model", str(target), "--forget", str(forget), "--retain", str(retain_texts),
                 "--method", "NPO", "--epochs", "1", "--learning-rate", "1e-3", "--no-progress-bar",
                 "--out", str(baseline)]) == 0
    assert main(["run", "--model", str(target), "--forget", str(forget), "--retain", str(retain_texts), "--method", "NPO",
                 "--epochs", "1", "--learning-rate", "1e-3", "--no-progress-bar", "--copies", "2",
                 "--out", str(mpu_model)]) == 0

    for name, model in (("baseline", baseline), ("mpu", mpu_model)):
        summary, config, _ = _eval(capsys, "--model", str(model), "--benchmark", "muse", "--data", str(data),
                                   "--retain-model", str(retain), "--out", str(tmp_path / f"eval-{name}"))
        assert {"forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE", "privleak"} <= set(summary), summary
        assert config["missing_data"] == {}

    # a copy without the knowmem files (as MUSE-Books has none): the suite runs on what exists and says why
    partial = tmp_path / "MUSE-partial"
    shutil.copytree(data, partial)
    for path in [*partial.glob("forget_qa*.json"), partial / "knowmem"]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    summary, config, _ = _eval(capsys, "--model", str(mpu_model), "--benchmark", "muse", "--data", str(partial),
                               "--retain-model", str(retain), "--out", str(tmp_path / "eval-partial"))
    assert "forget_verbmem_ROUGE" in summary and "forget_knowmem_ROUGE" not in summary
    assert set(config["missing_data"]) == {"forget_knowmem", "retain_knowmem"}
    assert any("knowmem" in key for key in config["skipped_metrics"]), config["skipped_metrics"]


@pytest.mark.parametrize("missing", ["recorded", "none"])
def test_eval_says_which_data_it_used(tmp_path, capsys, missing, monkeypatch):
    """A model without a record is evaluated on the default data, and the line says so; a record whose
    data is gone is an error naming the record (exit code 2)."""
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    from mpu.eval.evaluator import model_data

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")   # a model folder by its look; the data record fails first
    if missing == "recorded":
        (model / "mpu_finetune.json").write_text(json.dumps({"data": str(tmp_path / "gone"), "metrics": {"benchmark": "tofu"}}))
        assert main(["eval", "--model", str(model), "--out", str(tmp_path / "e")]) == 2
        err = capsys.readouterr().err
        assert "mpu_finetune.json" in err and "does not exist" in err and "--data" in err
    else:
        data, note = model_data(model, "tofu")
        assert data is None and "default built-in" in note and "--data" in note
        assert model_data(model, "tofu", "D")[0] == "D"
