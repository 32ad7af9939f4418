"""`mpu finetune`: what each split trains on, fingerprint caching, saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.cli import main
from mpu.data.builtin import build_benchmark
from mpu.data.loaders import LocalSource
from mpu.errors import MPUError
from mpu.experiments.finetune import (
    TRAIN_DEFAULTS,
    TinyLlamaConfig,
    base_training_data,
    default_base_dir,
    finetune,
    read_record,
    task_vector_ratio,
    training_data,
)

MICRO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "b"
    build_benchmark(path, authors=10, facts=5, news=20, topics=8, general=4, shape="small")
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


def test_a_folder_finetune_did_not_write_is_refused_and_left_alone_and_no_scratch_remains(bench, tmp_path):
    foreign = tmp_path / "m"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MPUError, match="not written by `mpu finetune`"):
        finetune(bench, "tofu", "retain90", foreign, epochs=0.1, model_config=MICRO, progress=False, threads=1)
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]

    finetune(bench, "tofu", "retain90", tmp_path / "ok", epochs=0.1, model_config=MICRO, progress=False, threads=1)
    # the Trainer's scratch folder and the staging folder are gone; only the two models' folders remain
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m", "ok"]


def test_cli_finetune(bench, tmp_path, capsys, monkeypatch):
    import mpu.experiments.finetune as module

    monkeypatch.setattr(module, "TinyLlamaConfig", lambda: TinyLlamaConfig(**MICRO))
    assert main(["finetune", "--data", str(bench), "--benchmark", "wmdp", "--split", "retain", "--out",
                 str(tmp_path / "w"), "--epochs", "1", "--no-progress", "--threads", "1", "--base", "none"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["benchmark"] == "wmdp" and metrics["n_examples"] == 8 * 4   # crops: 4 sentences each
    assert main(["finetune", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    assert main(["finetune", "--data", str(bench), "--benchmark", "wmdp", "--split", "retain", "--out",
                 str(tmp_path / "foreign"), "--epochs", "1", "--no-progress", "--base", "none"]) == 2
    assert (tmp_path / "foreign" / "keep.txt").is_file()
    assert "refusing" in capsys.readouterr().err


def test_the_model_presets_hydra_composes_are_the_finetune_dataclasses():
    # one home: Hydra's model=tiny-llama / tiny-llama-cpu-release are generated from these dataclasses
    from dataclasses import asdict

    from mpu.experiments import compose_config
    from mpu.experiments.finetune import BASE_DEFAULTS, FROM_BASE, PRESETS

    model = compose_config(["trainer=NPO"])[0].model
    assert dict(model.config) == asdict(TinyLlamaConfig())
    assert {name: dict(value) for name, value in model.train.items()} == {n: asdict(v) for n, v in TRAIN_DEFAULTS.items()}
    assert dict(model.base_train) == asdict(BASE_DEFAULTS)
    assert {name: dict(value) for name, value in model.from_base.items()} == {n: asdict(v) for n, v in FROM_BASE.items()}
    release = compose_config(["trainer=NPO", "model=tiny-llama-cpu-release"])[0].model
    preset = PRESETS["cpu-release"]
    assert dict(release.config) == asdict(preset.size)
    assert {key: release.train.tofu[key] for key in preset.from_scratch} == preset.from_scratch
    assert dict(release.from_base.tofu) == {**asdict(FROM_BASE["tofu"]), **preset.from_base}
    assert preset.from_base["learning_rate"] != FROM_BASE["tofu"].learning_rate


def test_base_data_has_no_benchmark_entity_but_the_general_knowledge(bench):
    tofu = LocalSource(bench / "tofu")
    data = base_training_data(bench, "tofu", tofu, json.loads((bench / "manifest.json").read_text()))
    texts = "\n".join(str(item) for row in data.rows for item in row.values())
    general = {r["question"] for name in ("real_authors", "world_facts") for r in tofu.rows(name, "train")}
    assert general <= {row["question"] for row in data.rows if "question" in row}   # "pretraining" knowledge
    assert data.kinds == "qa+text" and len([r for r in data.rows if "text" in r]) == 4
    authors = {r["question"].split(" by ")[-1].rstrip("?") for r in tofu.rows("full", "train") if " by " in r["question"]}
    assert authors and not any(author in texts for author in authors)
    with pytest.raises(MPUError, match="no general data"):
        base_training_data(bench / "muse", "muse", LocalSource(bench / "muse"), None)


def test_target_is_the_base_fine_tuned(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    saved = torch.get_num_threads()
    try:
        base = finetune(bench, "tofu", "base", tmp_path / "base", epochs=1, model_config=MICRO, progress=False, threads=1)
        assert base["base"] is None and base["n_examples"] == 5 + 5 + 4 * 3 + 4   # ra + wf + general QA + articles
        # lr 0: the fine-tuned model is its base, exactly (so it starts from the base's weights)
        frozen = finetune(bench, "tofu", "full", tmp_path / "frozen", epochs=1, lr=0.0, base=tmp_path / "base",
                          progress=False)
        assert set(frozen["task_vector_ratio"]) >= {"layers.0", "embed_tokens"}
        assert all(value == 0 for value in frozen["task_vector_ratio"].values())
        target = finetune(bench, "tofu", "full", tmp_path / "t", epochs=1, base=tmp_path / "base", progress=False)
        ratio = task_vector_ratio(tmp_path / "t", tmp_path / "base")
        assert ratio == pytest.approx(target["task_vector_ratio"], abs=1e-5) and 0 < ratio["layers.0"] < 1
        assert read_record(tmp_path / "t")["base"] == str((tmp_path / "base").resolve())
        # a new base is a new target: the base's fingerprint is part of the target's
        finetune(bench, "tofu", "base", tmp_path / "base", epochs=2, model_config=MICRO, progress=False)
        again = finetune(bench, "tofu", "full", tmp_path / "t", epochs=1, base=tmp_path / "base", progress=False)
        assert again["cached"] is False and again["fingerprint"] != target["fingerprint"]
        with pytest.raises(MPUError, match="differs from the requested"):
            finetune(bench, "tofu", "full", tmp_path / "x", epochs=1, base=tmp_path / "base", progress=False,
                     model_config=dict(MICRO, hidden_size=64))
        with pytest.raises(MPUError, match="not a base model"):
            finetune(bench, "tofu", "full", tmp_path / "x", epochs=1, base=tmp_path / "nothing", progress=False)
        with pytest.raises(MPUError, match="leave --base out"):
            finetune(bench, "tofu", "base", tmp_path / "x", epochs=1, base=tmp_path / "base", progress=False)
        # auto: the dataset's base, trained once and cached under $MPU_CACHE
        auto = finetune(bench, "tofu", "retain90", tmp_path / "r", epochs=1, base="auto", model_config=MICRO,
                        progress=False)
        assert auto["base"] == str(default_base_dir(bench, TinyLlamaConfig(**MICRO)).resolve())
        assert str(tmp_path / "cache") in auto["base"]
    finally:
        torch.set_num_threads(saved)


def test_fine_tuning_from_the_base_replays_its_knowledge_for_target_and_retain_alike(bench, tmp_path, monkeypatch):
    """Rehearsal (FROM_BASE["tofu"].rehearsal = "knowledge"): target and retain model both also train on the
    base's real_authors/world_facts QA, so that they keep the base's knowledge and still differ only by the
    forget data; without a base there is nothing to replay."""
    from mpu.experiments.finetune import FROM_BASE

    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    assert FROM_BASE["tofu"].rehearsal == "knowledge" and not FROM_BASE["tofu"].freeze_embeddings
    saved = torch.get_num_threads()
    try:
        finetune(bench, "tofu", "base", tmp_path / "base", epochs=1, model_config=MICRO, progress=False, threads=1)
        knowledge = 5 + 5   # real_authors + world_facts of the fixture
        runs = {split: finetune(bench, "tofu", split, tmp_path / split, epochs=1, base=tmp_path / "base", progress=False)
                for split in ("full", "retain90")}
        for split, metrics in runs.items():
            record = read_record(tmp_path / split)
            assert metrics["n_rehearsal_examples"] == knowledge
            assert metrics["n_examples"] == len(training_data(LocalSource(bench / "tofu"), "tofu", split).rows) + knowledge
            assert record["sources"] == [split, "rehearsal:tofu/real_authors", "rehearsal:tofu/world_facts"]
            assert record["train_config"]["rehearsal"] == "knowledge" and 0 <= metrics["rehearsal_token_accuracy"] <= 1
        plain = finetune(bench, "tofu", "full", tmp_path / "plain", epochs=1, base=tmp_path / "base", rehearsal="none",
                         progress=False)
        assert plain["n_rehearsal_examples"] == 0 and plain["fingerprint"] != runs["full"]["fingerprint"]
        frozen = finetune(bench, "tofu", "full", tmp_path / "frozen", epochs=1, base=tmp_path / "base",
                          freeze_embeddings=True, progress=False)
        assert frozen["task_vector_ratio"]["embed_tokens"] == 0 and frozen["task_vector_ratio"]["layers.0"] > 0
        with pytest.raises(MPUError, match="unknown rehearsal"):
            finetune(bench, "tofu", "full", tmp_path / "x", epochs=1, base=tmp_path / "base", rehearsal="all", progress=False)
        with pytest.raises(MPUError, match="need a base model"):
            finetune(bench, "tofu", "full", tmp_path / "x", epochs=1, base="none", rehearsal="knowledge", progress=False,
                     model_config=MICRO)
    finally:
        torch.set_num_threads(saved)


def test_cli_finetune_base_then_target(bench, tmp_path, capsys, monkeypatch):
    import mpu.experiments.finetune as module

    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(module, "TinyLlamaConfig", lambda **kw: TinyLlamaConfig(**{**MICRO, **kw}))
    assert main(["finetune", "--data", str(bench), "--split", "base", "--out", str(tmp_path / "b"), "--epochs", "1",
                 "--no-progress", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "base"
    assert main(["finetune", "--data", str(bench), "--split", "full", "--base", str(tmp_path / "b"), "--out",
                 str(tmp_path / "t"), "--epochs", "1", "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["base"] == str((tmp_path / "b").resolve()) and "layers.0" in metrics["task_vector_ratio"]
    assert metrics["n_rehearsal_examples"] == 10   # the default replays the base's ra/wf QA
    assert main(["finetune", "--data", str(bench), "--split", "full", "--base", str(tmp_path / "b"), "--out",
                 str(tmp_path / "t2"), "--epochs", "1", "--no-progress", "--rehearsal", "none", "--freeze-embeddings"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_rehearsal_examples"] == 0 and metrics["task_vector_ratio"]["embed_tokens"] == 0
    assert main(["finetune", "--data", str(bench), "--split", "base", "--base", str(tmp_path / "b"), "--out",
                 str(tmp_path / "x"), "--no-progress"]) == 2
    assert "leave --base out" in capsys.readouterr().err


def test_cpu_release_preset_sets_size_and_recipe(bench, tmp_path):
    from mpu.experiments.finetune import PRESETS

    preset = PRESETS["cpu-release"]
    metrics = finetune(bench, "tofu", "retain90", tmp_path / "p", preset="cpu-release", epochs=0.1, progress=False,
                       base="none", threads=1)
    record = read_record(tmp_path / "p")
    assert record["model_config"]["hidden_size"] == preset.size.hidden_size == 256
    assert record["train_config"]["learning_rate"] == preset.from_scratch["learning_rate"] and metrics["epochs"] == 0.1
    assert 3.0e6 < metrics["n_params"] < 3.6e6
    with pytest.raises(MPUError, match="unknown preset"):
        finetune(bench, "tofu", "full", tmp_path / "q", preset="gpu-huge", progress=False)
    with pytest.raises(MPUError, match="either a preset or a model configuration"):
        finetune(bench, "tofu", "full", tmp_path / "q", preset="cpu-release", model_config=MICRO, progress=False)


def test_a_preset_takes_its_from_base_recipe_when_fine_tuning_a_base(bench, tmp_path):
    """cpu-release's from-scratch lr (2e-3) would rewrite a base; fine-tuning one takes its from_base
    recipe, and the base stage itself keeps BASE_DEFAULTS."""
    from mpu.experiments.finetune import BASE_DEFAULTS, PRESETS

    preset = PRESETS["cpu-release"]
    finetune(bench, "tofu", "base", tmp_path / "base", preset="cpu-release", epochs=0.02, progress=False, threads=1)
    assert read_record(tmp_path / "base")["train_config"]["learning_rate"] == BASE_DEFAULTS.learning_rate

    finetune(bench, "tofu", "retain90", tmp_path / "tuned", preset="cpu-release", epochs=0.02, progress=False,
             base=str(tmp_path / "base"), threads=1)
    tuned = read_record(tmp_path / "tuned")
    assert tuned["train_config"]["learning_rate"] == preset.from_base["learning_rate"] != preset.from_scratch["learning_rate"]
    assert tuned["model_config"]["hidden_size"] == 256


def test_auto_base_on_data_without_general_knowledge_trains_from_scratch_and_says_so(tmp_path, caplog):
    """A MUSE copy has no real_authors/world_facts: `--base auto` falls back to no base, with a warning."""
    from tests.data.releases import make_muse_release

    from mpu.experiments.finetune import finetune

    data = make_muse_release(tmp_path / "MUSE-News")
    with caplog.at_level("WARNING", logger="mpu.experiments.finetune"):
        metrics = finetune(data, "muse", "full", tmp_path / "model", epochs=1, progress=False, base="auto",
                           model_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                         "num_attention_heads": 2, "num_key_value_heads": 1})
    assert metrics["base"] is None
    assert "no general data" in caplog.text and "from scratch" in caplog.text


@pytest.mark.parametrize("hidden", [32, 128])
def test_a_fresh_model_starts_at_the_scale_its_width_calls_for(hidden):
    """The initializer is 1/sqrt(hidden_size), not transformers' 0.02 (meant for ~2,000-wide models):
    a tiny model started at 0.02 keeps small weights, and its task vector is then a large part of them."""
    from mpu.experiments.finetune import _new_model
    from mpu.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a small corpus of words for a tokenizer"] * 4, vocab_size=300)
    model = _new_model(tokenizer, TinyLlamaConfig(**{**MICRO, "hidden_size": hidden}), None, False)
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert std == pytest.approx(hidden ** -0.5, rel=0.1)
    assert TinyLlamaConfig(initializer_range=0.02).llama_kwargs()["initializer_range"] == 0.02


def test_cli_finetune_refuses_a_model_of_other_settings_unless_forced(bench, tmp_path, capsys, monkeypatch):
    import mpu.experiments.finetune as module

    monkeypatch.setattr(module, "TinyLlamaConfig", lambda: TinyLlamaConfig(**MICRO))
    out = tmp_path / "m"
    command = ["finetune", "--data", str(bench), "--benchmark", "wmdp", "--split", "retain", "--out", str(out),
               "--no-progress", "--threads", "1", "--base", "none"]
    assert main(command + ["--epochs", "1"]) == 0
    capsys.readouterr()
    weights = (out / "model.safetensors").read_bytes()

    assert main(command + ["--epochs", "2"]) == 2   # another recipe: refused, the earlier model kept
    err = capsys.readouterr().err
    assert str(out) in err and "other settings" in err and "train.epochs: 1" in err and "-> 2" in err and "--force" in err
    assert (out / "model.safetensors").read_bytes() == weights and read_record(out)["metrics"]["epochs"] == 1

    assert main(command + ["--epochs", "1"]) == 0   # the same settings: reused
    assert json.loads(capsys.readouterr().out)["cached"] is True
    assert main(command + ["--epochs", "2", "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is False and read_record(out)["metrics"]["epochs"] == 2


def test_the_base_models_own_folder_is_never_the_output(bench, tmp_path):
    from mpu.errors import InputError

    base = tmp_path / "base"
    finetune(bench, "tofu", "base", base, epochs=0.1, model_config=MICRO, progress=False, threads=1)
    weights = (base / "model.safetensors").read_bytes()
    for out in (base, base / "inside"):
        with pytest.raises(InputError, match="base model"):
            finetune(bench, "tofu", "full", out, epochs=0.1, progress=False, base=base, force=True, threads=1)
    assert (base / "model.safetensors").read_bytes() == weights and not (base / "inside").exists()
    (base / "mpu_finetune.json").write_text("[]")   # a record that is no JSON object reads as none
    assert read_record(base) is None
