"""Each method's loss on a fixed batch equals its paper's formula, computed here independently (float64,
explicit softmax and loops; mpu.methods.losses is not used). The trained model is nudged away from the
reference first, so reference terms are not trivially zero."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mpu.methods import prepare_unlearning
from tests.methods.conftest import options
from tests.methods.helpers import (
    answer_positions, log_probs, log_sigmoid, logits_of, per_sequence_length, per_sequence_nll, token_kl, token_mean_nll,
)


def setup(method, hparams, model, tokenizer, forget, retain, tmp_path, batch=None):
    initial = copy.deepcopy(model)
    trainer = prepare_unlearning(model, tokenizer, forget, retain, method, hparams, options(), str(tmp_path))
    if method == "PDU" and trainer.epsilon is None:
        trainer.epsilon = trainer.measure_epsilon()  # as on_train_begin does, before any update
    if batch is None:
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    loss = trainer.compute_loss(trainer.model, batch)
    return trainer, initial, batch, float(loss.detach())


def nll_r(model, batch):
    return token_mean_nll(logits_of(model, batch["retain"]), batch["retain"]["labels"])


def close(a, b):
    assert math.isclose(a, b, rel_tol=2e-4, abs_tol=1e-5), (a, b)


def test_grad_ascent(model, tokenizer, forget_rows, tmp_path):
    trainer, _, batch, loss = setup("GradAscent", {}, model, tokenizer, forget_rows, None, tmp_path)
    close(loss, -token_mean_nll(logits_of(model, batch["forget"]), batch["forget"]["labels"]))


@pytest.mark.parametrize("gamma,alpha", [(1.0, 1.0), (2.0, 0.5), (0.5, 3.0)])
def test_grad_diff_gamma_alpha_reach_the_loss(gamma, alpha, model, tokenizer, forget_rows, retain_rows, tmp_path):
    trainer, _, batch, loss = setup("GradDiff", {"gamma": gamma, "alpha": alpha}, model, tokenizer, forget_rows, retain_rows, tmp_path)
    nll_f = token_mean_nll(logits_of(model, batch["forget"]), batch["forget"]["labels"])
    close(loss, -gamma * nll_f + alpha * nll_r(model, batch))


def test_grad_diff_kl_retain(model, tokenizer, forget_rows, retain_rows, tmp_path):
    trainer, initial, batch, loss = setup("GradDiff", {"retain_loss": "KL"}, model, tokenizer, forget_rows, retain_rows, tmp_path)
    r = batch["retain"]
    kl = token_kl(logits_of(model, r), logits_of(initial, r), r["labels"])
    assert kl > 1e-4
    close(loss, -token_mean_nll(logits_of(model, batch["forget"]), batch["forget"]["labels"]) + kl)


def npo_formula(model, initial, batch, beta, alpha=1.0):
    f = batch["forget"]
    diff = per_sequence_nll(logits_of(model, f), f["labels"]) - per_sequence_nll(logits_of(initial, f), f["labels"])
    forget = -(2 / beta) * sum(log_sigmoid(beta * float(d)) for d in diff) / len(diff)
    return forget + alpha * nll_r(model, batch)


def test_npo_beta_reaches_the_loss(model, tokenizer, forget_rows, retain_rows, tmp_path):
    values = []
    for beta in (0.1, 0.5, 2.0):
        fresh = copy.deepcopy(model)
        _, initial, batch, loss = setup("NPO", {"beta": beta}, fresh, tokenizer, forget_rows, retain_rows, tmp_path)
        close(loss, npo_formula(fresh, initial, batch, beta))
        values.append(loss)
    assert len({round(v, 6) for v in values}) == 3


def test_simnpo(model, tokenizer, forget_rows, retain_rows, tmp_path):
    hp = {"beta": 3.0, "delta": 0.2, "gamma": 0.5, "alpha": 2.0}
    _, _, batch, loss = setup("SimNPO", hp, model, tokenizer, forget_rows, retain_rows, tmp_path)
    f = batch["forget"]
    normalised = per_sequence_nll(logits_of(model, f), f["labels"]) / per_sequence_length(f["labels"])
    forget = -(2 / 3.0) * sum(log_sigmoid(3.0 * (float(x) - 0.2)) for x in normalised) / len(normalised)
    close(loss, 0.5 * forget + 2.0 * nll_r(model, batch))


def test_dpo_prefers_idk(model, tokenizer, forget_rows, retain_rows, tmp_path):
    from mpu.methods.data import idk_answers

    _, initial, batch, loss = setup("DPO", {"beta": 0.3}, model, tokenizer, forget_rows, retain_rows, tmp_path)
    answers = tokenizer.batch_decode(torch.where(batch["alternate"]["labels"] == -100, tokenizer.pad_token_id, batch["alternate"]["labels"]), skip_special_tokens=True)
    assert all(answer.strip() in idk_answers() for answer in answers)
    w, l = batch["alternate"], batch["forget"]
    win = per_sequence_nll(logits_of(initial, w), w["labels"]) - per_sequence_nll(logits_of(model, w), w["labels"])
    lose = per_sequence_nll(logits_of(initial, l), l["labels"]) - per_sequence_nll(logits_of(model, l), l["labels"])
    forget = -(2 / 0.3) * sum(log_sigmoid(0.3 * float(a - b)) for a, b in zip(win, lose)) / len(win)
    close(loss, forget + nll_r(model, batch))


def test_undial(model, tokenizer, forget_rows, tmp_path):
    _, initial, batch, loss = setup("UNDIAL", {"beta": 5.0}, model, tokenizer, forget_rows, None, tmp_path)
    f = batch["forget"]
    lp, ref = log_probs(logits_of(model, f)), logits_of(initial, f).double()
    values = []
    for b, t, token in answer_positions(f["labels"]):
        target = ref[b, t].clone()
        target[token] -= 5.0
        values.append(float(-(torch.softmax(target, -1) * lp[b, t]).sum()))
    close(loss, sum(values) / len(values))


@pytest.mark.parametrize("method,hp", [("SatImp", {"beta1": 2.0, "beta2": 1.5, "gamma": 0.7}), ("WGA", {"beta": 0.5})])
def test_confidence_weighted_ascent(method, hp, model, tokenizer, forget_rows, retain_rows, tmp_path):
    _, _, batch, loss = setup(method, hp, model, tokenizer, forget_rows, retain_rows, tmp_path)
    f = batch["forget"]
    lp = log_probs(logits_of(model, f))
    beta1, beta2 = hp.get("beta1", hp.get("beta")), hp.get("beta2", 0.0)
    values = []
    for b, t, token in answer_positions(f["labels"]):
        p = float(lp[b, t, token].exp())
        values.append(p**beta1 * (1 - p) ** beta2 * -float(lp[b, t, token]))
    close(loss, hp.get("gamma", 1.0) * -(sum(values) / len(values)) + nll_r(model, batch))


@pytest.mark.parametrize("skip", [0, 1, 2])
def test_ceu(skip, model, tokenizer, forget_rows, tmp_path):
    _, _, batch, loss = setup("CEU", {"ignore_first_n_answer_tokens": skip}, model, tokenizer, forget_rows, None, tmp_path)
    f = batch["forget"]
    logits = logits_of(model, f).double()
    values, seen = [], {}
    for b, t, token in answer_positions(f["labels"]):
        seen[b] = seen.get(b, 0) + 1
        if seen[b] <= skip:
            continue
        target = logits[b, t].clone()
        target[token] = float("-inf")
        values.append(float(-(torch.softmax(target, -1) * torch.log_softmax(logits[b, t], -1)).sum()))
    close(loss, sum(values) / len(values))


def test_rmu(model, tokenizer, forget_rows, retain_rows, tmp_path):
    hp = {"rmu_layer": 0, "steering_coeff": 7.0, "alpha": 3.0, "gamma": 2.0}
    trainer, initial, batch, loss = setup("RMU", hp, model, tokenizer, forget_rows, retain_rows, tmp_path)
    u = torch.rand(64, generator=torch.Generator().manual_seed(0))
    target = u / u.norm() * 7.0
    assert torch.allclose(trainer.control_vector, target)

    def layer0(m, batch):
        out = []
        handle = m.model.layers[0].register_forward_hook(lambda _m, _i, o: out.append(o[0] if isinstance(o, tuple) else o))
        logits_of(m, batch)
        handle.remove()
        return out[0].double()

    def distance(acts, goal, labels):
        rows = []
        for b in range(acts.shape[0]):
            tokens = [t for t in range(labels.shape[1]) if labels[b, t] != -100]
            rows.append(sum(float(((acts[b, t] - (goal if goal.dim() == 1 else goal[b, t])) ** 2).mean()) for t in tokens) / len(tokens))
        return sum(rows) / len(rows)

    forget = distance(layer0(model, batch["forget"]), target.double(), batch["forget"]["labels"])
    retain = distance(layer0(model, batch["retain"]), layer0(initial, batch["retain"]), batch["retain"]["labels"])
    assert retain > 0
    close(loss, 2.0 * forget + 3.0 * retain)


def test_pdu(model, tokenizer, forget_rows, retain_rows, tmp_path):
    from mpu.data.qa import QACollator, encode_qa

    initial = copy.deepcopy(model)
    trainer, _, batch, loss = setup("PDU", {"alpha": 2.5, "gamma": 0.5}, model, tokenizer, forget_rows, retain_rows, tmp_path)
    # ε defaults to the retain loss of the model as received, over the whole retain set.
    everything = QACollator(tokenizer.pad_token_id)([encode_qa(tokenizer, r["question"], r["answer"], 256) for r in retain_rows])
    close(trainer.epsilon, token_mean_nll(logits_of(initial, everything), everything["labels"]))
    f = batch["forget"]
    logits = logits_of(model, f).double()
    flat = [float((logits[b, t].max() - logits[b, t].mean()) ** 2) for b, t, _ in answer_positions(f["labels"])]
    close(loss, 0.5 * sum(flat) / len(flat) + 2.5 * (nll_r(model, batch) - trainer.epsilon))


def test_pdu_dual_ascent(model, tokenizer, forget_rows, retain_rows, tmp_path):
    trainer, _, _, _ = setup("PDU", {"alpha": 1.0, "dual_step_size": 0.5, "epsilon": 0.25}, model, tokenizer, forget_rows, retain_rows, tmp_path)

    class State:
        epoch = 0.5

    # two optimizer steps; the second had two micro-batches, whose shares of the retain loss add up
    trainer._pending = [(0, torch.tensor(1.0)), (1, torch.tensor(1.5)), (1, torch.tensor(0.5))]
    trainer.dual_step(State)
    assert trainer.dual == pytest.approx(1.0 + 0.5 * (1.5 - 0.25))
    trainer._pending = [(2, torch.tensor(0.0))]
    trainer.dual = 0.05
    trainer.dual_step(State)
    assert trainer.dual == 0.0  # projected onto λ >= 0
