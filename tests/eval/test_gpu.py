"""On a CUDA device: the same numbers as on CPU in float32, batch-size-independent greedy generation,
and bfloat16 weights scored with float32 maths. Off by default (``-m gpu``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpu.eval import EvalContext, EvalDataset, METRICS
from mpu.eval.engine import generate, load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _rows(bench):
    from mpu.data.loaders import resolve_source

    source = resolve_source(bench, "tofu")
    return source.rows("forget10_perturbed", "train") + source.rows("retain_perturbed", "train")[:10]


def _probs(model, tokenizer, rows, batch_size):
    ctx = EvalContext(model, tokenizer, [EvalDataset("d", "qa", rows)], batch_size=batch_size)
    result = METRICS.get("probability")(ctx, data="d", answer_key="perturbed_answer")
    return np.array([v["avg_loss"] for v in result["value_by_index"].values()])


def test_cuda_float32_matches_cpu(fast_bench, fast_models):
    rows = _rows(fast_bench)
    cpu_model, tokenizer = load_model(fast_models["full"][0], device="cpu")
    gpu_model, _ = load_model(fast_models["full"][0], device="cuda", dtype="float32")
    np.testing.assert_allclose(_probs(gpu_model, tokenizer, rows, 8), _probs(cpu_model, tokenizer, rows, 8),
                               rtol=1e-3, atol=1e-4)
    from mpu.eval import encoding

    prompts = [encoding.prompt_ids(tokenizer, "qa", row) for row in rows]
    on_gpu = generate(gpu_model, tokenizer, prompts, batch_size=8, max_new_tokens=40)
    assert on_gpu == generate(gpu_model, tokenizer, prompts, batch_size=1, max_new_tokens=40)
    assert on_gpu == generate(cpu_model, tokenizer, prompts, batch_size=8, max_new_tokens=40)


def test_bfloat16_weights_are_scored_in_float32(fast_bench, fast_models):
    rows = _rows(fast_bench)
    model, tokenizer = load_model(fast_models["full"][0], device="cuda", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    reference, _ = load_model(fast_models["full"][0], device="cuda", dtype="float32")
    losses = _probs(model, tokenizer, rows, 8)
    assert losses.dtype == np.float64 and np.isfinite(losses).all()
    np.testing.assert_allclose(losses, _probs(reference, tokenizer, rows, 8), atol=0.15)
