"""Question/answer files in TOFU format and their tokenisation for causal-LM training.

A QA file is JSONL with one ``{"question": ..., "answer": ...}`` object per line (extra fields are
kept), or a directory written by ``datasets.Dataset.save_to_disk``. Loss is computed on answer
tokens only, so the prompt part of ``labels`` is -100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mpu.errors import InputError

IGNORE_INDEX = -100


def load_qa_rows(path: str | Path, required: Sequence[str] = ("question", "answer")) -> list[dict[str, Any]]:
    """Read and validate a QA file. Every problem names the file and the line (or row)."""
    path = Path(path)
    if path.is_dir():
        rows = _load_dataset_dir(path)
        numbers = list(range(1, len(rows) + 1))
        where = "row"
    elif path.is_file():
        numbered = _load_jsonl_numbered(path)
        rows, numbers = [row for _, row in numbered], [number for number, _ in numbered]
        where = "line"
    else:
        raise InputError(path, "no such file or directory")
    if not rows:
        raise InputError(path, "contains no rows")
    for number, row in zip(numbers, rows):  # the file's line number, blank lines included
        for field in required:
            if field not in row:
                raise InputError(path, f"{where} {number}: missing field {field!r}")
            value = row[field]
            if not isinstance(value, str):
                raise InputError(path, f"{where} {number}: field {field!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise InputError(path, f"{where} {number}: field {field!r} is empty")
    return rows


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in _load_jsonl_numbered(path)]


def _load_jsonl_numbered(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line."""
    rows = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(path, f"line {number}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(path, f"line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise InputError(path, f"line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append((number, row))
    return rows


def _load_dataset_dir(path: Path) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a bad folder
        raise InputError(path, f"not a `datasets` directory ({err})") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise InputError(path, f"holds several splits ({', '.join(dataset)}); point at one split's folder")
    return [dict(row) for row in dataset]


def format_prompt(tokenizer, question: str) -> str:
    """The text the model sees before the answer: the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    bos = tokenizer.bos_token or ""
    return f"{bos}Question: {question}\nAnswer:"


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 512) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with labels only on the answer (and EOS).

    Prompt and answer are encoded separately so the boundary is exact whatever the tokenizer merges.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    answer_text = answer if answer.startswith(" ") or getattr(tokenizer, "chat_template", None) else " " + answer
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


@dataclass
class QACollator:
    """Pads encoded QA examples into a batch (right padding, for teacher-forced training and scoring)."""

    pad_token_id: int

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in examples)
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for example in examples:
            pad = width - len(example["input_ids"])
            batch["input_ids"].append(example["input_ids"] + [self.pad_token_id] * pad)
            batch["labels"].append(example["labels"] + [IGNORE_INDEX] * pad)
            batch["attention_mask"].append(example["attention_mask"] + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
