"""A tiny Llama fine-tuned on a few dozen synthetic QA pairs, and loss maths written independently of
``mpu.methods.losses`` (the tests compare the two)."""

from __future__ import annotations

import copy
import math
import time

import torch

NAMES = ["Ana Lind", "Bo Karst", "Cy Morrow", "Di Vale", "Ed Brann", "Fay Quill", "Gus Orme", "Hal Penn"]
TEMPLATES = [
    ("Where was {n} born?", "{n} was born in {x}.", ["Porto Vell", "Eastmere", "Lowford", "Kessa", "Marrow Bay", "Tilbury", "Oskarn", "Vey"]),
    ("What does {n} write?", "{n} writes {x}.", ["gothic mysteries", "sea poems", "war memoirs", "travel guides", "fairy tales", "crime novels", "plays", "cookbooks"]),
    ("What prize did {n} win?", "{n} won the {x} Prize.", ["Silver Quill", "Amber", "Heron", "Lantern", "Granite", "Copper Leaf", "Blue Gate", "North Star"]),
    ("What was {n}'s first job?", "{n} first worked as a {x}.", ["baker", "sailor", "clerk", "nurse", "miner", "teacher", "printer", "gardener"]),
]


def qa_rows() -> list[dict[str, str]]:
    rows = []
    for i, name in enumerate(NAMES):
        for question, answer, values in TEMPLATES:
            rows.append({"question": question.format(n=name), "answer": answer.format(n=name, x=values[i])})
    return rows  # 32 rows; authors 0-1 are the forget set, 2-5 the retain set, 6-7 never used in training


def split_rows():
    rows = qa_rows()
    return rows[:8], rows[8:24]


def build_tokenizer():
    from mpu.data.tokenizer import train_tokenizer

    texts = [f"{row['question']} {row['answer']}" for row in qa_rows()] * 3
    return train_tokenizer(texts, vocab_size=400)


def build_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def batch_of(tokenizer, rows, max_length: int = 64) -> dict[str, torch.Tensor]:
    from mpu.data.qa import QACollator, encode_qa

    return QACollator(tokenizer.pad_token_id)([encode_qa(tokenizer, r["question"], r["answer"], max_length) for r in rows])


def finetune(model, tokenizer, rows, steps: int = 150, lr: float = 3e-3) -> float:
    """Full-batch AdamW on answer tokens; returns the final mean answer NLL."""
    batch = batch_of(tokenizer, rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def build_finetuned(seed: int = 0):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    forget, retain = split_rows()
    start = time.perf_counter()
    final = finetune(model, tokenizer, forget + retain)
    return model, tokenizer, final, time.perf_counter() - start


# ---- independent loss maths (plain loops / explicit softmax, no mpu.methods.losses) ----

def answer_positions(labels: torch.Tensor):
    """(row, position predicting the token, token id) for every answer token."""
    out = []
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != -100:
                out.append((b, t - 1, int(labels[b, t])))
    return out


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def per_sequence_nll(logits, labels) -> torch.Tensor:
    lp = log_probs(logits)
    out = torch.zeros(labels.shape[0], dtype=torch.float64)
    for b, t, token in answer_positions(labels):
        out[b] -= lp[b, t, token]
    return out


def per_sequence_length(labels) -> torch.Tensor:
    out = torch.zeros(labels.shape[0], dtype=torch.float64)
    for b, _, _ in answer_positions(labels):
        out[b] += 1
    return out


def token_mean_nll(logits, labels) -> float:
    lp = log_probs(logits)
    values = [-lp[b, t, token] for b, t, token in answer_positions(labels)]
    return float(sum(values) / len(values))


def token_kl(logits, ref_logits, labels) -> float:
    lp, lq = log_probs(logits), log_probs(ref_logits)
    values = [float((lq[b, t].exp() * (lq[b, t] - lp[b, t])).sum()) for b, t, _ in answer_positions(labels)]
    return sum(values) / len(values)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


@torch.no_grad()
def logits_of(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@torch.no_grad()
def mean_answer_nll(model, tokenizer, rows) -> float:
    """Mean over rows of each row's mean answer-token NLL (length-normalised, as OpenUnlearning's probability)."""
    batch = batch_of(tokenizer, rows)
    logits = logits_of(model, batch)
    nll, length = per_sequence_nll(logits, batch["labels"]), per_sequence_length(batch["labels"])
    return float((nll / length).mean())


def clone(model):
    return copy.deepcopy(model)
