"""Device check (not a test; pytest does not collect it): every method, LoRA and bf16 on a CUDA device.

    PYTHONPATH=src:. python3 tests/methods/gpu_check.py

Needs torch, transformers, peft, accelerate, tokenizers (omegaconf and datasets are not used here).
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch

from mpu.data.qa import QACollator, encode_qa
from mpu.methods import METHODS, TrainingConfig, finish_unlearning, prepare_unlearning
from tests.methods import helpers

SETTINGS = {"RMU": {"steering_coeff": 20.0, "alpha": 1.0}}


@torch.no_grad()
def nll(model, tokenizer, rows) -> float:
    batch = QACollator(tokenizer.pad_token_id)([encode_qa(tokenizer, r["question"], r["answer"], 64) for r in rows])
    batch = {k: v.to(model.device) for k, v in batch.items()}
    return float(model(**batch).loss)


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print(torch.__version__, torch.cuda.get_device_name(0))
    tokenizer = helpers.build_tokenizer()
    base = helpers.build_model(tokenizer)
    forget, retain = helpers.split_rows()
    helpers.finetune(base, tokenizer, forget + retain, steps=45, lr=3e-3)
    runs = [(m, SETTINGS.get(m, {}), {}) for m in METHODS.names()]
    runs += [("GradDiff", {}, {"lora_rank": 4}), ("NPO", {}, {"bf16": True}), ("DPO", {}, {"gradient_accumulation_steps": 2})]
    failures = 0
    for method, hp, extra in runs:
        model = copy.deepcopy(base).cuda()
        start_state = {k: v.clone() for k, v in model.state_dict().items()}
        before = nll(model, tokenizer, forget)
        with tempfile.TemporaryDirectory() as scratch:
            trainer = prepare_unlearning(model, tokenizer, forget, retain, method, hp,
                                         TrainingConfig(epochs=2, learning_rate=1e-3, batch_size=4, **extra), scratch)
            assert trainer.args.device.type == "cuda", trainer.args.device
            ref = trainer.ref_model
            if ref is not None:
                assert next(ref.parameters()).is_cuda
                assert all(torch.equal(v, start_state[k]) for k, v in ref.state_dict().items())
            started = time.perf_counter()
            result = finish_unlearning(trainer)
            seconds = time.perf_counter() - started
        after = nll(model, tokenizer, forget)
        ok = result.steps > 0 and all(map(lambda x: x == x, result.losses)) and (after > before or method == "RMU")
        if result.lora_factors:
            worst = max(float((model.state_dict()[k] - start_state[k] - (b @ a).cuda()).abs().max()) for k, (b, a) in result.lora_factors.items())
            ok = ok and worst < 1e-5
            print(f"  LoRA factors: {len(result.lora_factors)}, max |merged - base - B@A| = {worst:.2e}")
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} {method:<10} {extra or ''} steps={result.steps} loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} "
              f"forget NLL {before:.3f} -> {after:.3f} ({seconds:.2f} s)")
    print("FAILURES", failures)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
