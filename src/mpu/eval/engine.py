"""Batched forward passes, greedy generation and per-sample gradients, with float32 maths.

Teacher-forced scoring pads on the RIGHT (positions stay 0..n-1 for every row, so padding cannot
change a row's logits); generation pads on the LEFT and passes the attention mask, so that
``generate`` derives each row's positions from it. Rows are sorted by length to waste little
padding and put back in their original order, so results do not depend on the batch size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mpu.data.qa import IGNORE_INDEX
from mpu.errors import MPUError
from mpu.quiet import quiet_transformers

log = logging.getLogger(__name__)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model_dir: str | Path, device: str | torch.device | None = None, dtype: str = "auto"):
    """A causal LM and its tokenizer, in eval mode. ``dtype``: auto (checkpoint dtype on GPU, float32
    on CPU), float32, bfloat16 or float16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.data.loaders import hub_offline_reason

    device = pick_device(str(device) if device else None)
    path = Path(model_dir)
    if not path.exists():
        name = str(model_dir)
        if name.count("/") != 1 or name.startswith((".", "/", "~")):
            raise MPUError(f"{model_dir}: no such model directory")
        reason = hub_offline_reason()
        if reason and not _cached_model(name):
            raise MPUError(f"{model_dir}: not a local directory, and the Hugging Face hub cannot be used ({reason}); "
                           f"download it elsewhere with `huggingface-cli download {name} --local-dir DIR` "
                           "and pass --model DIR")
    if dtype == "auto":
        torch_dtype = "auto" if device.type == "cuda" else torch.float32
    else:
        try:
            torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise MPUError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None
    # Eager attention is 2-3x faster than SDPA for small models on CPU; on GPU keep the default.
    extra = {"attn_implementation": "eager"} if device.type == "cpu" else {}
    try:
        with quiet_transformers():   # no "Loading weights" bar: the evaluation reports each model itself
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype, **extra)
    except (OSError, ValueError) as err:
        if not (Path(model_dir) / "config.json").is_file():
            raise MPUError(f"{model_dir}: not a model directory (no config.json)") from None
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise MPUError(f"cannot load a causal LM from {model_dir}: {reason[:500]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def _cached_model(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


@dataclass
class TokenStats:
    """Per labelled token of one example (float64 numpy arrays computed in float32 on the device)."""

    logprobs: np.ndarray   # log p(label)
    correct: np.ndarray    # argmax == label
    mu: np.ndarray         # E_{v~p}[log p(v)]   (for Min-K%++)
    var: np.ndarray        # Var_{v~p}[log p(v)]
    labels: np.ndarray     # label token ids
    tail: int = -1         # how many of the last labels end the turn (EOS, end-of-turn marker); -1: unknown

    @property
    def avg_loss(self) -> float:
        return float(-self.logprobs.mean()) if len(self.logprobs) else float("nan")

    def body(self, eos_ids: Sequence[int]) -> "TokenStats":
        """Without the end of the turn (the encoder's ``tail``: a final EOS, or a template's end-of-turn
        marker and what follows it), as OpenUnlearning's token-wise metrics (EM, ES, MIA) count; when
        the tail is unknown, without a final EOS label."""
        n = self.tail if self.tail >= 0 else int(bool(len(self.labels)) and int(self.labels[-1]) in set(eos_ids))
        n = min(n, len(self.labels))
        if n:
            return TokenStats(self.logprobs[:-n], self.correct[:-n], self.mu[:-n], self.var[:-n], self.labels[:-n], 0)
        return self


def _order(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def _batches(order: list[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def token_stats(model, examples: Sequence[dict], batch_size: int, pad_id: int, progress=None) -> list[TokenStats]:
    """Teacher-forced statistics on the labelled tokens of each encoded example
    (``input_ids``/``labels`` lists, labels -100 where not scored)."""
    device = next(model.parameters()).device
    results: list[TokenStats | None] = [None] * len(examples)
    order = _order([len(example["input_ids"]) for example in examples])
    for chunk in _batches(order, batch_size):
        width = max(len(examples[i]["input_ids"]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(examples[i]["input_ids"])
            ids[row, :n] = torch.tensor(examples[i]["input_ids"])
            labels[row, :n] = torch.tensor(examples[i]["labels"])
            mask[row, :n] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        selected = logits[:, :-1][scored].float()            # (N, V) only where a label exists
        logp = torch.log_softmax(selected, dim=-1)
        target_ids = targets[scored]
        token_logp = logp.gather(-1, target_ids[:, None]).squeeze(-1)
        correct = logp.argmax(-1) == target_ids
        prob = logp.exp()
        mu = (prob * logp).sum(-1)
        var = (prob * logp.square()).sum(-1) - mu.square()
        counts = scored.sum(-1).tolist()
        pieces = [t.double().cpu().numpy() for t in (token_logp, mu, var)]
        correct_np = correct.cpu().numpy()
        target_np = target_ids.cpu().numpy()
        offset = 0
        for row, i in enumerate(chunk):
            n = counts[row]
            sl = slice(offset, offset + n)
            results[i] = TokenStats(pieces[0][sl], correct_np[sl], pieces[1][sl], pieces[2][sl], target_np[sl],
                                    int(examples[i].get("tail", -1)))
            offset += n
        if progress is not None:
            progress.update(len(chunk))
        del logits, selected, logp, prob
    return results  # type: ignore[return-value]


def eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    batch_size: int,
    max_new_tokens: int,
    stopwords: Sequence[str] = (),
    progress=None,
    stop_ids: Sequence[int] | None = None,
    max_length: int | None = None,
) -> list[str]:
    """Greedy continuations of token-id prompts, batched with LEFT padding; cut at EOS and stopwords.
    ``stop_ids``: the tokens that end a turn (default: the model's and the tokenizer's EOS).
    ``max_length``: prompt + new tokens of each row stay within it (a row generates at most
    ``min(max_new_tokens, max_length - len(prompt))`` tokens; a model with learned positions would
    index past its table otherwise). Rows are batched with the rows of the same budget, so a row's
    text does not depend on the others' lengths. Raises ValueError for a prompt of max_length or more
    tokens (the caller's length policy refuses or cuts those first)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = list(stop_ids) if stop_ids is not None else eos_ids(model, tokenizer)
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
        eos_token_id=stop_ids or None, bos_token_id=tokenizer.bos_token_id,
    )
    texts: list[str | None] = [None] * len(prompts)
    budgets = [max_new_tokens if max_length is None else min(max_new_tokens, max_length - len(prompt)) for prompt in prompts]
    if any(budget < 1 for budget in budgets):
        raise ValueError(f"a prompt leaves no room to generate within max_length={max_length}")
    # rows of one budget together (longest first within it), so that a prompt near the limit splits no
    # batch of full-budget rows
    order = sorted(range(len(prompts)), key=lambda i: (-budgets[i], -len(prompts[i]), i))
    chunks = [chunk for budget in sorted(set(budgets), reverse=True)
              for chunk in _batches([i for i in order if budgets[i] == budget], batch_size)]
    for chunk in chunks:
        config.max_new_tokens = budgets[chunk[0]]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(prompts[i])
            ids[row, width - n:] = torch.tensor(prompts[i])
            mask[row, width - n:] = 1
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row, i in enumerate(chunk):
            new = output[row, width:].tolist()
            cut = next((k for k, token in enumerate(new) if token in stop_ids), len(new))
            text = tokenizer.decode(new[:cut], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for word in stopwords:
                if word and word in text:
                    text = text.split(word)[0]
            texts[i] = text.strip()
        if progress is not None:
            progress.update(len(chunk))
    return texts  # type: ignore[return-value]


def gradient_norms(model, examples: Sequence[dict], eos: Sequence[int], p: float = 2, progress=None) -> list[float]:
    """Per example: the mean over parameter tensors of ||d NLL / d param||_p, where NLL is the mean
    over labelled tokens without the end of the turn (the example's ``tail``; else without a final
    EOS), OpenUnlearning's GradNorm attack statistic."""
    device = next(model.parameters()).device
    params = [param for param in model.parameters()]
    saved = [param.requires_grad for param in params]
    for param in params:
        param.requires_grad_(True)
    norms = []
    eos = set(eos)
    try:
        for example in examples:
            ids = torch.tensor([example["input_ids"]], device=device)
            labels = torch.tensor(example["labels"], device=device)
            positions = (labels[1:] != IGNORE_INDEX).nonzero().squeeze(-1)
            tail = int(example.get("tail", -1))
            if tail < 0:
                tail = int(bool(len(positions)) and int(labels[1:][positions[-1]]) in eos)
            if tail:
                positions = positions[:-tail]
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
                logp = torch.log_softmax(logits[positions], dim=-1)
                nll = -logp.gather(-1, labels[1:][positions][:, None]).mean()
                nll.backward()
            per_param = [param.grad.detach().float().norm(p=p) for param in params if param.grad is not None]
            norms.append(float(torch.stack(per_param).mean()))
            if progress is not None:
                progress.update(1)
    finally:
        model.zero_grad(set_to_none=True)
        for param, flag in zip(params, saved):
            param.requires_grad_(flag)
    return norms
