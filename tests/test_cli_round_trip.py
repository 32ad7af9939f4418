"""The two parties as separate processes that share nothing but files (issue 2's acceptance test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from mpu.checkpoint import CheckpointReader


def mpu(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "mpu.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)
    assert result.returncode == 0, f"mpu {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_two_rounds_between_separate_processes(tmp_path, tiny_model_dir, forget_file):
    server, final = tmp_path / "server", tmp_path / "final"
    mpu("server", "init", "--model", tiny_model_dir, "--copies", 2, "--kappa", 0.05, "--rounds", 2, "--workdir", server)
    for round_number in (1, 2):
        outbox, returns = tmp_path / f"outbox-{round_number}", tmp_path / f"returns-{round_number}"
        published = mpu("server", "publish", "--workdir", server, "--out", outbox)
        assert f"round {round_number}: published 2 copies" in published.stdout
        # copies trained one at a time, as two clients on two machines would, then gathered
        for copy in (1, 2):
            mpu("client", "unlearn", "--inbox", outbox, "--forget", forget_file, "--method", "GradAscent",
                "--epochs", 1, "--learning-rate", 1e-3, "--copy", copy, "--out", returns)
        update = json.loads((returns / "update-1" / "update.json").read_text())
        assert update["method"] == "GradAscent" and update["steps"] > 0 and update["round"] == round_number
        mpu("server", "aggregate", "--workdir", server, "--returns", returns)
    mpu("server", "export", "--workdir", server, "--out", final)

    status = json.loads(mpu("server", "status", "--workdir", server, "--json").stdout)
    assert status["rounds_done"] == 2
    exported = AutoModelForCausalLM.from_pretrained(final)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [name for name, param in exported.named_parameters() if not torch.equal(param, original.state_dict()[name])]
    assert "model.layers.0.mlp.down_proj.weight" in changed
    assert CheckpointReader(final).dtype("lm_head.weight") == torch.float32


def test_mpu_run_does_all_rounds_in_one_process(tmp_path, tiny_model_dir, forget_file):
    out = tmp_path / "unlearned"
    result = mpu("run", "--model", tiny_model_dir, "--forget", forget_file, "--method", "GradAscent", "--epochs", 1,
                 "--learning-rate", 1e-3, "--copies", 2, "--rounds", 2, "--out", out)
    assert "2 rounds" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(model.lm_head.weight, AutoModelForCausalLM.from_pretrained(tiny_model_dir).lm_head.weight)


def test_a_hub_name_fails_fast_offline_with_a_how_to(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "mpu.cli", "server", "init", "--model", "some-org/some-model", "--workdir", str(tmp_path / "s")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "some-org/some-model" in result.stderr and "--local-dir" in result.stderr
    assert not (tmp_path / "s").exists()
