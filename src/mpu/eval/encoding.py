"""How each kind of evaluation row becomes token ids.

- ``qa``: the chat prompt (or ``Question: ...\\nAnswer:``) + answer + EOS, scored on the answer
  (:func:`mpu.data.qa.encode_qa`, the same encoding the models are trained with);
- ``icl_qa``: few-shot ``Question: q\\nAnswer: a`` blocks, then the question; scored on `` answer``
  (MUSE knowmem);
- ``completion``: BOS + prompt, then `` gt`` + EOS, scored on the continuation (MUSE verbmem);
- ``text``: BOS + text + EOS, scored on every token after BOS (MUSE privleak, corpora).
"""

from __future__ import annotations

from typing import Sequence

from mpu.data.qa import IGNORE_INDEX, encode_qa, format_prompt

MAX_LENGTH = 2048


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def icl_prefix(examples: Sequence[dict]) -> str:
    return "".join(f"Question: {row['question']}\nAnswer: {row['answer']}\n\n" for row in examples)


def _pair(prompt_ids: list[int], target_ids: list[int], max_length: int) -> dict[str, list[int]]:
    if len(prompt_ids) + len(target_ids) > max_length:  # keep the target, drop the oldest context
        prompt_ids = prompt_ids[-max(1, max_length - len(target_ids)):]
    input_ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def prompt_ids(tokenizer, kind: str, row: dict, icl: Sequence[dict] = ()) -> list[int]:
    """The tokens a model is given before it generates (no answer)."""
    if kind == "qa":
        return _ids(tokenizer, format_prompt(tokenizer, row["question"]))
    if kind == "icl_qa":
        return _bos(tokenizer) + _ids(tokenizer, icl_prefix(icl) + f"Question: {row['question']}\nAnswer:")
    if kind == "completion":
        return _bos(tokenizer) + _ids(tokenizer, row["prompt"])
    raise ValueError(f"rows of kind {kind!r} have no prompt")


def encode(tokenizer, kind: str, row: dict, target: str | None = None, icl: Sequence[dict] = (),
           max_length: int = MAX_LENGTH) -> dict[str, list[int]]:
    """Token ids and labels of one row; ``target`` replaces the row's answer (paraphrased, perturbed)."""
    if kind == "qa":
        return encode_qa(tokenizer, row["question"], target if target is not None else row["answer"], max_length)
    if kind == "icl_qa":
        answer = target if target is not None else row["answer"]
        return _pair(prompt_ids(tokenizer, kind, row, icl), _ids(tokenizer, " " + answer.strip()) + _eos(tokenizer),
                     max_length)
    if kind == "completion":
        gt = target if target is not None else row["gt"]
        return _pair(prompt_ids(tokenizer, kind, row), _ids(tokenizer, " " + gt.strip()) + _eos(tokenizer), max_length)
    if kind == "text":
        text = target if target is not None else row["text"]
        return _pair(_bos(tokenizer), _ids(tokenizer, text) + _eos(tokenizer), max_length)
    raise ValueError(f"unknown row kind {kind!r}")


def encode_qa_doc(tokenizer, pairs: Sequence[dict], max_length: int = MAX_LENGTH) -> dict[str, list[int]]:
    """Few-shot-style training text ``Question: q\nAnswer: a\n\n...`` scored on the answers only
    (each `` a`` with the separator after it, or EOS after the last): how built-in MUSE models learn
    the knowmem QA in the format they are asked in."""
    input_ids, labels = list(_bos(tokenizer)), [IGNORE_INDEX] * len(_bos(tokenizer))
    for number, pair in enumerate(pairs):
        question = _ids(tokenizer, f"Question: {pair['question']}\nAnswer:")
        end = _eos(tokenizer) if number == len(pairs) - 1 else _ids(tokenizer, "\n\n")
        answer = _ids(tokenizer, " " + pair["answer"].strip()) + end
        input_ids += question + answer
        labels += [IGNORE_INDEX] * len(question) + answer
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


GROUND_TRUTH_KEY = {"qa": "answer", "icl_qa": "answer", "completion": "gt", "text": "text"}


def ground_truth(kind: str, row: dict, key: str | None = None) -> str:
    return row[key or GROUND_TRUTH_KEY[kind]]


def encode_choice(tokenizer, context: str, choice: str, bos: bool = True) -> dict[str, list[int]]:
    """Context then `` choice`` (no EOS), scored on the choice: multiple-choice log-likelihoods."""
    prefix = (_bos(tokenizer) if bos else []) + _ids(tokenizer, context)
    return _pair(prefix, _ids(tokenizer, " " + choice.strip()), MAX_LENGTH)
