"""benchmarks/claim_models.py: the claim sweep's models trained up front, and checked against a record."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def claim_models():
    return load_benchmark("claim_models")


def fake_model(folder, weights: bytes, fingerprint: str):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "mpu_finetune.json").write_text(json.dumps({"fingerprint": fingerprint, "metrics": {
        "answer_token_accuracy": 0.97, "train_seconds": 1.0}}))
    return folder


def test_the_overrides_are_the_sweeps(claim_models):
    sweep = load_benchmark("claim_sweep")
    job = next(argv for _, argv in sweep.commands(__import__("pathlib").Path("/o"), "0", "python", ["baseline"],
                                                  shape="release", authors=200))
    chosen = claim_models.overrides("release", 200, "retain90")
    assert {"benchmark.shape=release", "model=tiny-llama-cpu-release", "benchmark.authors=200",
            "data.retain_split=retain90"} <= set(chosen) & set(job)


def test_trains_the_base_then_each_model_and_checks_them_against_a_record(claim_models, tmp_path, monkeypatch, capsys):
    import mpu.experiments.sources as sources

    base = fake_model(tmp_path / "base", b"base", "b")
    trained = {"full": fake_model(tmp_path / "target", b"target", "t"), "retain90": fake_model(tmp_path / "r90", b"r", "r")}
    monkeypatch.setattr(claim_models, "settings", lambda chosen: None)
    monkeypatch.setattr(sources, "builtin_root", lambda config: tmp_path)
    monkeypatch.setattr(sources, "builtin_base", lambda config, root: base)
    launched = []

    class Child:   # one process per fine-tuned model, each told its split
        def __init__(self, argv, **kwargs):
            launched.append(argv)
            self.split, self.returncode = argv[argv.index("--one") + 1], 0

        def communicate(self):
            return f"training...\n{trained[self.split]}\n", None

    monkeypatch.setattr(claim_models.subprocess, "Popen", Child)
    record = tmp_path / "models.json"
    assert claim_models.main(["--shape", "release", "--authors", "200", "--write", str(record)]) == 0
    assert sorted(argv[argv.index("--one") + 1] for argv in launched) == ["full", "retain90"]
    written = json.loads(record.read_text())["models"]
    assert set(written) == {"base", "target", "retain90"} and written["target"]["fingerprint"] == "t"
    assert claim_models.main(["--expect", str(record)]) == 0 and "match" in capsys.readouterr().out

    (trained["full"] / "model.safetensors").write_bytes(b"another target")
    assert claim_models.main(["--expect", str(record)]) == 1
    assert "target differ" in capsys.readouterr().err
