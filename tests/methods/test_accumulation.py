"""One plain-SGD optimizer step over the same four forget rows (answers of unequal length) gives the same
update however the rows are split into micro-batches: one batch of 4, 2×2, 1×4, and a ragged 3 + 1.
Every method's loss is a sum of per-token or per-sequence terms divided by the count of those items in
the whole optimizer step, so the splits agree to float32 rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from mpu.methods import METHODS, finish_unlearning, prepare_unlearning
from tests.methods.conftest import options

# (per-device batch size, accumulation steps); 4 rows -> one optimizer step each
SPLITS = [(2, 2), (1, 4), (3, 2)]
HPARAMS = {"RMU": {"steering_coeff": 20.0, "alpha": 1.0, "rmu_layer": 1}, "CEU": {"ignore_first_n_answer_tokens": 2}}


def one_step(method, model, tokenizer, forget, retain, batch_size, accumulation, tmp_path):
    model = copy.deepcopy(model)
    before = [param.detach().clone() for param in model.parameters()]
    training = options(epochs=1, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                       optim="sgd", learning_rate=0.5, max_grad_norm=0.0)
    trainer = prepare_unlearning(model, tokenizer, forget, retain, method, HPARAMS.get(method, {}), training, str(tmp_path))
    result = finish_unlearning(trainer)
    assert result.steps == 1
    return torch.cat([(param.detach() - start).flatten() for param, start in zip(model.parameters(), before)])


@pytest.mark.parametrize("method", METHODS.names())
def test_micro_batch_splits_give_the_full_batch_update(method, model, tokenizer, forget_rows, retain_rows, tmp_path):
    from mpu.data.qa import encode_qa

    forget = forget_rows[:4]
    lengths = {sum(label != -100 for label in encode_qa(tokenizer, r["question"], r["answer"])["labels"]) for r in forget}
    assert len(lengths) >= 3, "the test needs answers of unequal length"
    full = one_step(method, model, tokenizer, forget, retain_rows, 4, 1, tmp_path)
    assert full.norm() > 0
    for batch_size, accumulation in SPLITS:
        split = one_step(method, model, tokenizer, forget, retain_rows, batch_size, accumulation, tmp_path)
        relative = float((split - full).norm() / full.norm())
        assert relative < 1e-5, f"{method} {batch_size}x{accumulation}: relative difference {relative:.2e}"


@pytest.mark.slow
def test_two_processes_give_the_full_batch_update(tiny_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo), 1 row × 2 accumulation steps and 2 rows × 1 per process:
    every method's update equals the single-process full-batch update."""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.data.qa import load_qa_rows
    from tests.methods.test_cli import ROOT, free_port

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.float32)
    forget, retain = load_qa_rows(tiny_dir / "forget.jsonl")[:4], load_qa_rows(tiny_dir / "retain.jsonl")
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(script), str(tiny_dir), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    updates = torch.load(tmp_path / "updates.pt")
    assert sorted({method for method, _, _ in updates}) == METHODS.names()
    for (method, batch_size, accumulation), update in updates.items():
        full = one_step(method, model, tokenizer, forget, retain, 4, 1, tmp_path / "single")
        relative = float((update - full).norm() / full.norm())
        assert relative < 1e-5, f"{method} 2 processes x {batch_size}x{accumulation}: relative difference {relative:.2e}"


DDP_SCRIPT = r'''
import os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from mpu.data.qa import load_qa_rows
from mpu.methods import METHODS
from tests.methods.test_accumulation import one_step
root, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
tokenizer = AutoTokenizer.from_pretrained(root + "/model")
model = AutoModelForCausalLM.from_pretrained(root + "/model", dtype=torch.float32)
forget, retain = load_qa_rows(root + "/forget.jsonl")[:4], load_qa_rows(root + "/retain.jsonl")
updates = {}
for method in METHODS.names():
    for batch_size, accumulation in ((1, 2), (2, 1)):
        updates[(method, batch_size, accumulation)] = one_step(method, model, tokenizer, forget, retain, batch_size, accumulation, out + "/trainer")
if os.environ["RANK"] == "0":
    torch.save(updates, out + "/updates.pt")
'''
