"""Greedy generation is deterministic and left padding is correct: batch size 1 and 8 agree, and
both agree with a plain token-by-token loop on the unpadded prompt."""

from __future__ import annotations

import torch

from mpu.eval import encoding
from mpu.eval.engine import generate, load_model
from mpu.eval.metrics import METRICS


def _prompts(tokenizer, bench):
    from mpu.data.loaders import resolve_source

    rows = resolve_source(bench, "tofu").rows("forget10_perturbed", "train")
    rows += resolve_source(bench, "tofu").rows("real_authors_perturbed", "train")[:6]
    return [encoding.prompt_ids(tokenizer, "qa", row) for row in rows]


def test_batch_size_1_and_8_give_the_same_texts(fast_bench, fast_models):
    model, tokenizer = load_model(fast_models["full"][0], device="cpu")
    prompts = _prompts(tokenizer, fast_bench)
    assert len({len(p) for p in prompts}) > 1  # prompts of different lengths, so padding happens
    one = generate(model, tokenizer, prompts, batch_size=1, max_new_tokens=40)
    eight = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=40)
    again = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=40)
    assert one == eight == again
    assert sum(bool(text) for text in one) == len(one)


def test_left_padded_batch_matches_an_unpadded_greedy_loop(fast_bench, fast_models):
    model, tokenizer = load_model(fast_models["retain90"][0], device="cpu")
    prompts = _prompts(tokenizer, fast_bench)[:8]
    batched = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=24)
    for prompt, text in zip(prompts, batched):
        ids = list(prompt)
        for _ in range(24):
            with torch.no_grad():
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            ids.append(token)
        assert text == tokenizer.decode(ids[len(prompt):], skip_special_tokens=True).strip()


def test_stopwords_cut_the_generation(fast_bench, fast_models):
    from mpu.eval.context import EvalContext, EvalDataset

    model, tokenizer = load_model(fast_models["full"][0], device="cpu")
    rows = [{"question": "Who wrote 'Hamlet'?", "answer": "William Shakespeare"}]
    ctx = EvalContext(model, tokenizer, [EvalDataset("x", "qa", rows)])
    full = ctx.generations("x", 30)[0]
    assert full
    word = full.split()[-1]
    cut = METRICS.get("rouge")(ctx, data="x", max_new_tokens=30, stopwords=[word])
    assert cut["value_by_index"]["0"]["generation"] == full.split(word)[0].strip()
