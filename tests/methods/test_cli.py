"""`mpu unlearn` end to end on a tiny saved model (through mpu.cli.main), and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpu.cli import main
from tests.methods.helpers import mean_answer_nll

ROOT = Path(__file__).resolve().parents[2]


def unlearn(tiny_dir, out, *extra):
    return main(["unlearn", "--model", str(tiny_dir / "model"), "--forget", str(tiny_dir / "forget.jsonl"),
                 "--out", str(out), "--epochs", "2", "--lr", "1e-3", "--batch-size", "4", *extra])


def test_unlearn_writes_a_loadable_checkpoint(tiny_dir, tmp_path, forget_rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "unlearned"
    assert unlearn(tiny_dir, out, "--retain", str(tiny_dir / "retain.jsonl"), "--method", "NPO", "--beta", "0.2") == 0
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.float32)
    assert mean_answer_nll(model, tokenizer, forget_rows) > mean_answer_nll(original, tokenizer, forget_rows) + 0.05
    summary = json.loads((out / "unlearn_summary.json").read_text())
    assert summary["method"] == "NPO" and summary["hparams"]["beta"] == 0.2 and summary["steps"] == 4
    assert len(summary["losses"]) == 4 and summary["training"]["learning_rate"] == 1e-3
    assert not [p for p in tmp_path.iterdir() if p.name != "unlearned"], "temporary folders left behind"


def test_unlearn_with_lora_and_a_datasets_folder(tiny_dir, tmp_path, forget_rows):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "forget-ds"
    datasets.Dataset.from_list(forget_rows).save_to_disk(str(folder))
    out = tmp_path / "out"
    code = main(["unlearn", "--model", str(tiny_dir / "model"), "--forget", str(folder), "--method", "GradAscent",
                 "--out", str(out), "--epochs", "1", "--lr", "1e-2", "--lora-rank", "2"])
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.float32)
    assert not any("lora" in name for name in model.state_dict())
    # The adapters were merged into the weights, not dropped: every adapted projection changed, the
    # rest did not, and the model forgot (gradient ascent raised the forget answers' NLL).
    before, after = original.state_dict(), model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.endswith("proj.weight")}
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert mean_answer_nll(model, tokenizer, forget_rows) > mean_answer_nll(original, tokenizer, forget_rows) + 0.05


def test_refusals(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert unlearn(tiny_dir, out, "--method", "GradDiff") == 2
    assert "GradDiff needs retain data" in capsys.readouterr().err
    assert unlearn(tiny_dir, out, "--method", "NPO", "--gamma", "x") == 2
    assert "'gamma'" in capsys.readouterr().err
    out.mkdir()
    assert unlearn(tiny_dir, out, "--method", "GradAscent") == 2
    assert "already exists" in capsys.readouterr().err
    # --overwrite never replaces the model it reads, or a folder around it (the input model was deleted)
    assert unlearn(tiny_dir, tiny_dir, "--method", "GradAscent", "--overwrite") == 2
    assert f"holds {(tiny_dir / 'model').resolve()}, which this command reads" in capsys.readouterr().err
    assert (tiny_dir / "model" / "config.json").is_file()
    assert main(["unlearn", "--model", str(tmp_path), "--forget", str(tiny_dir / "forget.jsonl"),
                 "--method", "GradAscent", "--out", str(tmp_path / "o2")]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes(tiny_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m mpu.cli unlearn` on the CPU (gloo): DDP splits the forget set (half
    the steps), every rank ends with the same weights, and only rank 0 writes --out."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "mpu.cli", "unlearn", "--model", str(tiny_dir / "model"), "--forget", str(tiny_dir / "forget.jsonl"),
               "--retain", str(tiny_dir / "retain.jsonl"), "--method", "GradDiff", "--epochs", "2", "--lr", "1e-3",
               "--batch-size", "2", "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "unlearn_summary.json").read_text())["steps"] == 4  # 8 rows / (2 x 2) x 2 epochs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]

    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(script), str(tiny_dir), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checksum"] == ranks[1]["checksum"], ranks  # gradients were averaged across processes
    assert not set(ranks[0]["retain"]) & set(ranks[1]["retain"])  # each rank drew its own retain rows
    assert ranks[0]["dual"] == ranks[1]["dual"]  # PDU's λ is reduced across processes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RANK_SCRIPT = r'''
import json, os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from mpu.data.qa import load_qa_rows
from mpu.methods import TrainingConfig, finish_unlearning, prepare_unlearning
root, out = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(root + "/model")
model = AutoModelForCausalLM.from_pretrained(root + "/model", dtype=torch.float32)
forget, retain = load_qa_rows(root + "/forget.jsonl"), load_qa_rows(root + "/retain.jsonl")
trainer = prepare_unlearning(model, tokenizer, forget, retain, "PDU", {}, TrainingConfig(epochs=1, learning_rate=1e-3, batch_size=2), out + "/trainer")
seen, pick = [], trainer.train_dataset.retain_index
def spy(index, visit):
    seen.append(pick(index, visit))
    return seen[-1]
trainer.train_dataset.retain_index = spy
finish_unlearning(trainer)
checksum = sum(float(p.double().sum()) for p in model.parameters())
json.dump({"checksum": round(checksum, 9), "retain": seen, "dual": trainer.dual}, open(f"{out}/rank{os.environ['RANK']}.json", "w"))
'''


def test_a_retain_set_of_the_forget_rows_is_refused_and_shared_rows_are_warned(tiny_dir, tmp_path, capsys, caplog):
    # arrange: --retain given the forget file (or a copy): the run's update did nothing (loss 4.8e-07), exit 0
    import json
    import logging

    forget = tiny_dir / "forget.jsonl"
    rows = [json.loads(line) for line in forget.read_text().splitlines() if line.strip()]

    # act
    same = unlearn(tiny_dir, tmp_path / "same", "--method", "GradDiff", "--retain", str(forget))
    err = capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="mpu.methods.job"):
        from mpu.methods import UnlearnJob

        UnlearnJob("GradDiff", forget_rows=rows, retain_rows=rows[:1] + [{"question": "Q?", "answer": "A."}])

    # assert
    assert same == 2 and f"every one of the {len(rows)} retain rows is also a forget row" in err
    assert "1 of the 2 retain rows are also forget rows" in caplog.text
