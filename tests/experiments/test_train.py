"""Hydra experiments (issue 5, part 2): overrides reach the code, and every shipped experiment composes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpu.errors import MPUError
from mpu.experiments import compose_config, read_run, run_experiment, settings_from_config
from mpu.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(str(p.relative_to(ROOT / "configs" / "experiment").with_suffix(""))
                     for p in (ROOT / "configs" / "experiment").rglob("*.yaml"))
REAL = ["unlearn/tofu/llama-3.2-1b", "unlearn/tofu/llama-3.2-1b_forget01", "unlearn/tofu/llama-3.2-1b_forget05",
        "unlearn/muse/news", "unlearn/muse/books"]
PAPER_METHODS = ["GradAscent", "GradDiff", "NPO", "SimNPO", "DPO", "UNDIAL", "SatImp", "WGA"]
PAPER_SCHEDULE = {"SimNPO": (10, 1), "DPO": (10, 1), "SatImp": (10, 1), "GradAscent": (1, 10), "GradDiff": (1, 10),
             "UNDIAL": (1, 10), "NPO": (2, 5), "WGA": (2, 5)}


def local_overrides(model: Path, forget: Path, retain: Path, *extra: str) -> list[str]:
    return ["experiment=unlearn/local", f"model.target={model}", f"data.forget_file={forget}",
            f"data.retain_file={retain}", "trainer=GradDiff", "trainer.training.learning_rate=1e-3",
            "trainer.training.batch_size=4", "mpu.E=1", "mpu.kappa=0.05", "mpu.seed=3", "mpu.sigma_from=weights", *extra]


def test_override_mpu_m_reaches_the_server_and_the_outbox(tmp_path, tiny_model_dir, forget_file, retain_file):
    cfg, choices = compose_config(local_overrides(tiny_model_dir, forget_file, retain_file, "mpu.m=2", "mpu.R=2",
                                                  "mpu.keep_exchange=true"))
    run_dir = tmp_path / "run"
    record = run_experiment(cfg, run_dir, experiment=choices["experiment"])

    assert record["mode"] == "mpu" and record["m"] == 2 and record["kappa"] == 0.05 and record["R"] == 2
    assert record["unlearning"]["copies_per_round"] == [2, 2]
    for round_number in (1, 2):  # the published outbox holds exactly m copies
        outbox = run_dir / "server-exchange" / f"round-{round_number}" / "outbox"
        assert sorted(p.name for p in outbox.glob("copy-*")) == ["copy-1", "copy-2"]
        manifest = json.loads((outbox / "manifest.json").read_text())
        assert len(manifest["copies"]) == 2
    assert not (run_dir / "server").exists()  # the server's secrets are not left in the run dir
    assert (run_dir / "model" / "config.json").is_file()
    on_disk = read_run(run_dir)
    assert on_disk["status"] == "done" and on_disk["experiment"] == "unlearn/local"
    assert on_disk["server"]["copies"] == 2 and on_disk["server"]["fixed_seed"] == 3
    assert on_disk["training"]["epochs"] == 1.0 and on_disk["training"]["learning_rate"] == 1e-3
    assert on_disk["hparams"]["retain_loss"] == "NLL"
    assert on_disk["sigma_from"].startswith("weights") and "CONTROL" in on_disk["sigma_from"]


def test_sigma_follows_the_task_vector_by_default(tmp_path, tiny_model_dir, forget_file, retain_file, monkeypatch):
    """Without mpu.sigma_from the noise is a fraction of theta - theta_base: the base reaches the
    server, and run.json says so; without a base that is an error naming both ways out."""
    import mpu.experiments.two_party

    overrides = [o for o in local_overrides(tiny_model_dir, forget_file, retain_file) if "sigma_from" not in o]
    with pytest.raises(MPUError, match="model.base.*mpu.sigma_from=weights"):
        settings_from_config(compose_config(overrides)[0])
    seen = []
    real_init = mpu.experiments.two_party.init_server
    monkeypatch.setattr(mpu.experiments.two_party, "init_server", lambda work, model, base, config, **kw: seen.append(base) or real_init(work, model, base, config, **kw))
    cfg, _ = compose_config(overrides + [f"model.base={tiny_model_dir}"])
    record = run_experiment(cfg, tmp_path / "tv")
    assert seen == [str(tiny_model_dir)] and record["sigma_from"].startswith("task-vector")
    assert settings_from_config(compose_config([])[0]).model["base"] == "builtin"   # the default experiment has one
    cfg, _ = compose_config(overrides + [f"model.base={tiny_model_dir}", "mpu.sigma_reference=weights"])
    run_experiment(cfg, tmp_path / "w")   # sigma_reference: sigma_from's old name, still read
    assert seen[-1] is None   # the control: no base for the server even when one is configured
    with pytest.raises(MPUError, match="mpu.sigma_from must be"):
        settings_from_config(compose_config(overrides + ["mpu.sigma_from=theta"])[0])


def test_baseline_trains_r_times_e_epochs_once(tmp_path, tiny_model_dir, forget_file, retain_file):
    cfg, _ = compose_config(local_overrides(tiny_model_dir, forget_file, retain_file, "mpu.enabled=false", "mpu.R=2"))
    record = run_experiment(cfg, tmp_path / "base")
    assert record["mode"] == "baseline" and record["m"] is None and record["kappa"] is None
    assert record["training"]["epochs"] == 2.0 and record["epochs_total"] == 2.0
    assert record["unlearning"]["steps"] == 2  # 3 forget rows, batch 4: one step per epoch


def test_train_py_multirun_sweeps_m(tmp_path, tiny_model_dir, forget_file, retain_file):
    """The real entry point: `python src/train.py -m mpu.m=2,3` gives one run dir per value."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPU_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, str(ROOT / "src" / "train.py"), "-m",
               *local_overrides(tiny_model_dir, forget_file, retain_file, "mpu.m=2,3", "save_model=false"),
               f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(sweep.glob("*/run.json"))
    assert len(runs) == 2
    records = [json.loads(path.read_text()) for path in runs]
    assert sorted(r["m"] for r in records) == [2, 3]
    assert sorted(r["unlearning"]["copies_per_round"][0] for r in records) == [2, 3]
    for record in records:
        assert record["experiment"] == "unlearn/local" and f"mpu.m={record['m']}" in record["overrides"]
    assert all(not (path.parent / "model").exists() for path in runs)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    overrides = [f"experiment={experiment}"]
    if experiment == "unlearn/local":
        overrides += ["model.target=some/model", "model.base=some/base", "data.forget_file=forget.jsonl"]
    cfg, choices = compose_config(overrides)
    settings = settings_from_config(cfg)
    assert choices["experiment"] == experiment
    assert settings.mode == "mpu" and settings.server.copies >= 2
    if experiment in REAL:
        check_real(experiment, "SimNPO", settings_from_config(compose_config([f"experiment={experiment}", "trainer=SimNPO", "mpu.kappa=0.1"])[0]))


def check_real(experiment, method, settings):
    assert (settings.rounds, settings.epochs_per_round) == PAPER_SCHEDULE[method] == METHODS.get(method).paper_schedule
    assert settings.training.epochs == PAPER_SCHEDULE[method][1]
    assert settings.server.copies == 3 and settings.server.kappa == 0.1 and settings.server.alpha_mode == "public"
    assert settings.training.learning_rate == (1e-4 if method == "UNDIAL" else 1e-5)
    if "tofu" in experiment:
        split = settings.data["forget_split"]
        assert settings.model["target"] == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
        assert settings.model["base"] == "meta-llama/Llama-3.2-1B-Instruct"
        assert settings.model["retain"] == f"open-unlearning/tofu_Llama-3.2-1B-Instruct_retain{100 - int(split[-2:])}"
        assert split == {"unlearn/tofu/llama-3.2-1b": "forget10"}.get(experiment, experiment[-8:])
        assert settings.data["source"] == "locuslab/TOFU"
    else:
        assert settings.benchmark == "muse" and settings.data["forget_split"] == "raw/forget"


@pytest.mark.parametrize("method", PAPER_METHODS)
def test_real_tofu_experiment_uses_the_paper_schedule(method):
    experiment = "unlearn/tofu/llama-3.2-1b"
    check_real(experiment, method, settings_from_config(compose_config([f"experiment={experiment}", f"trainer={method}", "mpu.kappa=0.1"])[0]))


def test_default_experiment_is_the_builtin_one_and_baseline_switch():
    cfg, choices = compose_config(["trainer=SimNPO", "mpu.enabled=false"])
    settings = settings_from_config(cfg)
    assert choices["experiment"] == "unlearn/tofu/default"
    assert settings.mode == "baseline" and settings.server is None and settings.training.epochs == 10
    assert settings.model["target"] == "builtin" and settings.builtin["authors"] == 100
    assert settings_from_config(compose_config([])[0]).reference_model_round == "first"
    assert settings.training.learning_rate == 1e-3 and settings.training.batch_size == 32  # SimNPO's calibrated rate
    lr = lambda *overrides: settings_from_config(compose_config(list(overrides))[0]).training.learning_rate
    assert lr("trainer=GradAscent") == 1e-4 and lr("trainer=GradDiff") == 3e-4
    assert lr("trainer=CEU") == 3e-4  # not calibrated: the default
    assert lr("trainer=GradAscent", "trainer.training.learning_rate=5e-4") == 5e-4


def test_bad_settings_are_errors_naming_the_key():
    with pytest.raises(MPUError, match="trainer.training.epochs"):
        settings_from_config(compose_config(["trainer.training.epochs=3"])[0])
    with pytest.raises(MPUError, match="mpu.m"):
        settings_from_config(compose_config(["mpu.m=1"])[0])
    with pytest.raises(MPUError, match="model.target"):
        settings_from_config(compose_config(["experiment=unlearn/local", "data.forget_file=x"])[0])
    with pytest.raises(MPUError, match="alphas"):
        settings_from_config(compose_config(["mpu.alphas=sometimes"])[0])
    with pytest.raises(MPUError, match="mpu.reference_model_round"):
        settings_from_config(compose_config(["mpu.reference_model_round=clean"])[0])
    # client_reference: the old name, still read
    assert settings_from_config(compose_config(["mpu.client_reference=round"])[0]).reference_model_round == "round"
    with pytest.raises(Exception, match="kapa"):  # Hydra's struct mode refuses misspelt keys
        compose_config(["mpu.kapa=0.1"])


def test_the_target_and_retain_evaluation_reads_its_old_name():
    assert settings_from_config(compose_config([])[0]).evaluation["target_and_retain"] is True
    assert settings_from_config(compose_config(["evaluation.target_and_retain=false"])[0]).evaluation["target_and_retain"] is False
    old = settings_from_config(compose_config(["evaluation.reference_models=false"])[0]).evaluation
    assert old["target_and_retain"] is False and "reference_models" not in old


def test_builtin_muse_experiment_trains_its_own_models_and_unlearns_text_chunks(tmp_path, monkeypatch):
    from mpu.experiments import sources

    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    trained = []
    monkeypatch.setattr(sources, "builtin_model", lambda settings, root, split, name, base=None: trained.append((split, name, base)) or tmp_path / name)
    monkeypatch.setattr(sources, "builtin_base", lambda settings, root: tmp_path / "base")
    cfg, _ = compose_config(["experiment=unlearn/muse/builtin", "trainer=NPO", "benchmark.authors=20", "benchmark.news=20",
                             "benchmark.facts=12", "benchmark.topics=8"])
    settings = settings_from_config(cfg)
    prepared = sources.prepare(settings)

    assert settings.benchmark == "muse"
    base = str(tmp_path / "base")   # both fine-tuned from the built-in base
    assert trained == [("full", "muse-target", base), ("retain", "muse-retain", base)]  # apart from the TOFU models
    assert prepared.base == base
    assert prepared.target == str(tmp_path / "muse-target") and prepared.retain == str(tmp_path / "muse-retain")
    # raw stories became prompt/answer chunks: the first 16 words are the prompt
    assert prepared.forget_rows and all(len(row["question"].split()) == 16 for row in prepared.forget_rows)
    assert prepared.retain_rows and all(row["answer"].strip() for row in prepared.retain_rows)


REAL_MODEL_EXPERIMENTS = ["unlearn/muse/books", "unlearn/muse/news", "unlearn/tofu/llama-3.2-1b",
                          "unlearn/tofu/llama-3.2-1b_forget01", "unlearn/tofu/llama-3.2-1b_forget05"]


def test_the_real_model_experiments_are_the_files_that_train_in_bf16():
    root = Path(__file__).resolve().parents[2] / "configs" / "experiment"
    experiments = sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))
    in_bf16 = [name for name in experiments if compose_config([f"experiment={name}"])[0].trainer.training.bf16]

    assert in_bf16 == REAL_MODEL_EXPERIMENTS


@pytest.mark.parametrize("experiment", REAL_MODEL_EXPERIMENTS)
def test_real_model_experiments_fail_on_a_cpu_naming_the_option(experiment, tmp_path, monkeypatch):
    import torch

    from mpu.experiments import sources

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sources, "prepare", lambda settings: pytest.fail("must fail before fetching models"))
    cfg, _ = compose_config([f"experiment={experiment}"])
    with pytest.raises(MPUError, match=r"trainer\.training\.bf16=false"):
        run_experiment(cfg, tmp_path / "run")
    cfg, _ = compose_config([f"experiment={experiment}", "trainer.training.bf16=false", "evaluation.device=cuda"])
    with pytest.raises(MPUError, match="evaluation.device=cpu"):
        run_experiment(cfg, tmp_path / "run2")


def test_cpu_release_model_config_equals_the_finetune_preset():
    from dataclasses import asdict

    from mpu.experiments.finetune import PRESETS

    cfg, _ = compose_config(["model=tiny-llama-cpu-release"])
    settings = settings_from_config(cfg)
    preset = PRESETS["cpu-release"]
    assert {**asdict(preset.size), **settings.model_config} == asdict(preset.size)
    assert {key: settings.finetune[key] for key in preset.from_scratch} == preset.from_scratch
    assert {key: settings.finetune_from_base[key] for key in preset.from_base} == preset.from_base
