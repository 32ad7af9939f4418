"""Question/answer files in TOFU format and their tokenisation for causal-LM training.

A QA file holds ``{"question": ..., "answer": ...}`` rows (extra fields are kept) in any format
:mod:`mpu.data.files` reads. Loss is computed on answer
tokens only, so the prompt part of ``labels`` is -100.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mpu.errors import InputError, MPUError


IGNORE_INDEX = -100
logger = logging.getLogger(__name__)


# Raw-text rows (MUSE corpora) become prompt/continuation chunks, as in the MUSE experiments' defaults.
TEXT_CHUNK_WORDS = 200
TEXT_PROMPT_WORDS = 16


def load_qa_rows(path: str | Path, required: Sequence[str] = ("question", "answer"),
                 text_chunks: tuple[int, int] | None = (TEXT_CHUNK_WORDS, TEXT_PROMPT_WORDS)) -> list[dict[str, Any]]:
    """Read and validate a QA file with the project's one reader (:mod:`mpu.data.files`: JSON lines,
    JSON arrays, CSV, parquet, ``datasets`` folders, hub-layout folders). Every problem names the
    file and the line (or row).

    A file of raw text (MUSE's ``raw/forget.txt``, a JSON array of strings, ``text`` rows) is cut
    into chunks of ``text_chunks[0]`` words whose first ``text_chunks[1]`` words are the prompt and
    the rest the answer (the methods train on prompt/answer rows); ``text_chunks=None`` refuses it.
    """
    from mpu.data.files import read_numbered, validate_fields

    numbered = read_numbered(path)
    is_text = all(set(row) == {"text"} for _, row in numbered)
    if is_text and text_chunks is not None and "question" in required:
        validate_fields(path, numbered, ("text",))
        from mpu.experiments.sources import text_rows_to_qa

        try:
            rows = text_rows_to_qa([row for _, row in numbered], *text_chunks)
        except MPUError as err:
            raise InputError(path, f"read as raw text ({len(numbered)} strings), but {err}; a QA file needs "
                                   f"one JSON object per row with the fields {', '.join(required)}") from None
        logger.info("%s: %d text rows read as %d chunks of %d words (the first %d the prompt)",
                    path, len(numbered), len(rows), text_chunks[0], text_chunks[1])
        return rows
    validate_fields(path, numbered, required)
    return [row for _, row in numbered]


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
