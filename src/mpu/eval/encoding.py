"""How each kind of evaluation row becomes token ids, under the run's one encoder and length policy.

- ``qa``: the run's prompt format (chat template with pinned arguments, or the plain tags) renders the
  conversation; scored on the tokens after the prompt, as rendered (:class:`mpu.data.qa.Encoder`, the
  same encoding the models are trained with);
- ``icl_qa``: few-shot ``Question: q\\nAnswer: a`` blocks, then the question; scored on `` answer``
  (MUSE knowmem's own prompt);
- ``completion``: BOS + prompt, then `` gt`` + EOS, scored on the continuation (MUSE verbmem);
- ``text``: BOS + text + EOS, scored on every token after BOS (MUSE privleak, corpora).

Every kind follows the encoder's :class:`~mpu.data.qa.LengthPolicy`: a row longer than ``max_length``
is an error naming it, or, truncating, loses its oldest context first, then the target's tail, and
is counted in the encoder's ``truncated``.
"""

from __future__ import annotations

from typing import Sequence

from mpu.data.qa import IGNORE_INDEX, Encoder, LengthPolicy, encoder_for
from mpu.errors import MPUError

MAX_LENGTH = 2048   # only for callers that give neither an encoder nor a max_length


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def icl_prefix(examples: Sequence[dict]) -> str:
    return "".join(f"Question: {row['question']}\nAnswer: {row['answer']}\n\n" for row in examples)


def _encoder(tokenizer, encoder: Encoder | None, max_length: int | None) -> Encoder:
    if encoder is not None:
        return encoder
    return encoder_for(tokenizer, None, LengthPolicy(max_length or MAX_LENGTH))


def _pair(prompt_ids: list[int], target_ids: list[int], encoder: Encoder, where: str, key: tuple,
          tail: int = -1) -> dict[str, list[int]]:
    limit = encoder.policy.max_length
    total = len(prompt_ids) + len(target_ids)
    if total > limit:
        if not encoder.policy.truncate:
            raise MPUError(f"{where}: {total} tokens (context {len(prompt_ids)}, target {len(target_ids)}) exceed "
                           f"max_length={limit}; raise --max-length, or pass --truncate (counted in the output)")
        encoder.truncated.setdefault(key, total - limit)
        # keep the target, drop the oldest context; then cut the target's tail
        prompt_ids = prompt_ids[-max(1, limit - len(target_ids)):]
        cut = max(0, len(prompt_ids) + len(target_ids) - limit)
        target_ids = target_ids[:len(target_ids) - cut] if cut else target_ids
        if tail > 0:
            tail = max(0, tail - cut)
    input_ids = prompt_ids + target_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    example = {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}
    if tail >= 0:
        example["tail"] = tail
    return example


def truncation_key(kind: str, row: dict, target: str | None = None) -> tuple:
    """The key under which the encoder counts a truncated row of ``kind`` (see ``Encoder.truncated``)."""
    if kind == "qa":
        return (row["question"], target if target is not None else row["answer"])
    if kind == "icl_qa":
        return ("icl_qa", row["question"], target if target is not None else row["answer"])
    if kind == "completion":
        return ("completion", row["prompt"], target if target is not None else row["gt"])
    if kind == "text":
        return ("text", target if target is not None else row["text"])
    raise ValueError(f"unknown row kind {kind!r}")


def prompt_ids(tokenizer, kind: str, row: dict, icl: Sequence[dict] = (), encoder: Encoder | None = None) -> list[int]:
    """The tokens a model is given before it generates (no answer)."""
    if kind == "qa":
        return _encoder(tokenizer, encoder, None).prompt_ids(row["question"])
    if kind == "icl_qa":
        return _bos(tokenizer) + _ids(tokenizer, icl_prefix(icl) + f"Question: {row['question']}\nAnswer:")
    if kind == "completion":
        return _bos(tokenizer) + _ids(tokenizer, row["prompt"])
    raise ValueError(f"rows of kind {kind!r} have no prompt")


def fit_prompt(prompt: list[int], kind: str, encoder: Encoder, where: str, key: tuple, max_new_tokens: int) -> list[int]:
    """``prompt`` under the run's length policy for generation (prompt + new tokens <= max_length). With
    ``--truncate``, a few-shot or continuation prompt (``kind`` ``icl_qa``, ``completion``) that leaves
    fewer than ``max_new_tokens`` loses its oldest context, down to ``max_length - max_new_tokens``
    tokens, counted under ``key`` (the row's teacher-forced key: a row cut for both counts once), as
    :func:`_pair` keeps a teacher-forced row's answer whole. Otherwise (and always for a question's
    prompt, ``qa``, which is never cut) the prompt stays whole and generates at most
    ``max_length - len(prompt)`` tokens (:func:`mpu.eval.engine.generate`); one that leaves no room for
    a single new token is an MPUError naming ``where``, as is ``max_new_tokens >= max_length`` with
    ``--truncate`` (it would leave no context)."""
    limit = encoder.policy.max_length
    cuts = encoder.policy.truncate and kind != "qa"
    if cuts and len(prompt) + max_new_tokens > limit:
        if max_new_tokens >= limit:
            raise MPUError(f"{where}: max_new_tokens={max_new_tokens} leaves no room for its prompt within "
                           f"max_length={limit}; raise --max-length")
        kept = limit - max_new_tokens
        encoder.truncated.setdefault(key, len(prompt) - kept)
        return prompt[-kept:]
    if len(prompt) >= limit:
        hint = "raise --max-length" + (", or pass --truncate (counted in the output)" if kind != "qa" else
                                       "; the prompt alone does not fit, so --truncate cannot help")
        raise MPUError(f"{where}: its prompt of {len(prompt)} tokens leaves no room to generate within "
                       f"max_length={limit}; {hint}")
    return prompt


def encode(tokenizer, kind: str, row: dict, target: str | None = None, icl: Sequence[dict] = (),
           max_length: int | None = None, *, encoder: Encoder | None = None, where: str = "a row") -> dict[str, list[int]]:
    """Token ids and labels of one row; ``target`` replaces the row's answer (paraphrased, perturbed).
    ``encoder`` (the run's, with its format and length policy) defaults to the chat template with a
    strict ``max_length`` (default 2048)."""
    encoder = _encoder(tokenizer, encoder, max_length)
    if kind == "qa":
        return encoder.encode(row["question"], target if target is not None else row["answer"], where)
    if kind == "icl_qa":
        answer = target if target is not None else row["answer"]
        return _pair(prompt_ids(tokenizer, kind, row, icl), _ids(tokenizer, " " + answer.strip()) + _eos(tokenizer),
                     encoder, where, truncation_key(kind, row, target), tail=len(_eos(tokenizer)))
    if kind == "completion":
        gt = target if target is not None else row["gt"]
        return _pair(prompt_ids(tokenizer, kind, row), _ids(tokenizer, " " + gt.strip()) + _eos(tokenizer),
                     encoder, where, truncation_key(kind, row, target), tail=len(_eos(tokenizer)))
    if kind == "text":
        text = target if target is not None else row["text"]
        return _pair(_bos(tokenizer), _ids(tokenizer, text) + _eos(tokenizer), encoder, where, truncation_key(kind, row, target),
                     tail=len(_eos(tokenizer)))
    raise ValueError(f"unknown row kind {kind!r}")


def encode_qa_doc(tokenizer, pairs: Sequence[dict], max_length: int = MAX_LENGTH, truncate: bool = False,
                  where: str = "a QA document") -> dict[str, list[int]]:
    """Few-shot-style training text ``Question: q\nAnswer: a\n\n...`` scored on the answers only
    (each `` a`` with the separator after it, or EOS after the last): how built-in MUSE models learn
    the knowmem QA in the format they are asked in. Longer than ``max_length``: an error naming
    ``where``, or with ``truncate`` cut."""
    input_ids, labels = list(_bos(tokenizer)), [IGNORE_INDEX] * len(_bos(tokenizer))
    for number, pair in enumerate(pairs):
        question = _ids(tokenizer, f"Question: {pair['question']}\nAnswer:")
        end = _eos(tokenizer) if number == len(pairs) - 1 else _ids(tokenizer, "\n\n")
        answer = _ids(tokenizer, " " + pair["answer"].strip()) + end
        input_ids += question + answer
        labels += [IGNORE_INDEX] * len(question) + answer
    if len(input_ids) > max_length and not truncate:
        raise MPUError(f"{where}: {len(input_ids)} tokens exceed max_length={max_length}; fewer pairs per document, "
                       "or truncate")
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


GROUND_TRUTH_KEY = {"qa": "answer", "icl_qa": "answer", "completion": "gt", "text": "text"}


def ground_truth(kind: str, row: dict, key: str | None = None) -> str:
    return row[key or GROUND_TRUTH_KEY[kind]]


def encode_choice(tokenizer, context: str, choice: str, bos: bool = True, encoder: Encoder | None = None,
                  where: str = "a choice") -> dict[str, list[int]]:
    """Context then `` choice`` (no EOS), scored on the choice: multiple-choice log-likelihoods."""
    prefix = (_bos(tokenizer) if bos else []) + _ids(tokenizer, context)
    return _pair(prefix, _ids(tokenizer, " " + choice.strip()), _encoder(tokenizer, encoder, None), where,
                 ("choice", context, choice))
