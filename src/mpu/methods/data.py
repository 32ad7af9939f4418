"""Forget/retain pairing for unlearning batches, and the shipped "I don't know" answers.

The dataset has one item per forget example. Item ``i`` on its ``v``-th visit is paired with retain row
``perm_v[i mod R]``, where ``perm_v`` is a permutation of the R retain rows drawn from
``SeedSequence([seed, v, i // R])``. So the pairing is a function of (seed, item, visit), not of the
process: under DDP each rank's sampler shard holds different forget items and therefore draws different
retain rows, within an epoch no retain row repeats until all R were used, and a run is reproducible for
any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence
import weakref

import numpy as np
import torch

from mpu.data.qa import IGNORE_INDEX, QACollator, encode_qa
from mpu.errors import MPUError


@lru_cache(maxsize=1)
def idk_answers() -> tuple[str, ...]:
    """The shipped "I don't know" answers (``mpu/resources/idk.txt``, one per line)."""
    text = resources.files("mpu").joinpath("resources/idk.txt").read_text(encoding="utf-8")
    answers = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not answers:
        raise MPUError("mpu/resources/idk.txt holds no answers")
    return answers


# Encoded rows per tokenizer object: the MPU client trains m copies for R rounds on the same rows with
# the same tokenizer, and encoding 1000 rows costs about as much as a tiny model's epoch.
_ENCODED: "weakref.WeakKeyDictionary[Any, dict[tuple, dict[str, list[int]]]]" = weakref.WeakKeyDictionary()


def _encode_cached(tokenizer, question: str, answer: str, max_length: int) -> dict[str, list[int]]:
    cache = _ENCODED.setdefault(tokenizer, {})
    # what encode_qa reads besides the vocabulary, in case someone changes it on the tokenizer
    key = (question, answer, max_length, getattr(tokenizer, "chat_template", None), tokenizer.bos_token, tokenizer.eos_token_id)
    if key not in cache:
        cache[key] = encode_qa(tokenizer, question, answer, max_length)
    example = cache[key]
    return {name: list(ids) for name, ids in example.items()}  # callers own their lists


def encode_rows(tokenizer, rows: Sequence[dict[str, Any]], max_length: int, what: str) -> list[dict[str, list[int]]]:
    """encode_qa for each row; a row whose answer is truncated away entirely is an error naming it."""
    encoded = []
    for number, row in enumerate(rows, start=1):
        example = _encode_cached(tokenizer, row["question"], row["answer"], max_length)
        if all(label == IGNORE_INDEX for label in example["labels"][1:]):
            raise MPUError(
                f"{what} row {number}: no answer token is left within max_length={max_length} "
                f"(the prompt takes {len(example['input_ids'])} tokens or more); raise --max-length"
            )
        encoded.append(example)
    return encoded


def alternates_of(row: dict[str, Any]) -> list[str] | None:
    """A row's own preferred answers for DPO: ``alternate`` (or ``idk``), a string or a list of strings."""
    for key in ("alternate", "idk"):
        value = row.get(key)
        if value is None:
            continue
        candidates = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
        if not candidates or not all(isinstance(c, str) and c.strip() for c in candidates):
            raise MPUError(f"field {key!r} must be a non-empty string or list of strings, got {value!r}")
        return candidates
    return None


class ForgetRetainDataset(torch.utils.data.Dataset):
    """Items ``{"forget": example, "retain": example, "alternate": example}`` (retain/alternate optional)."""

    def __init__(
        self,
        tokenizer,
        forget_rows: Sequence[dict[str, Any]],
        retain_rows: Sequence[dict[str, Any]] | None,
        *,
        seed: int,
        max_length: int,
        with_alternates: bool = False,
    ):
        if not forget_rows:
            raise MPUError("the forget set is empty")
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.max_length = max_length
        self.forget_rows = list(forget_rows)
        self.forget = encode_rows(tokenizer, forget_rows, max_length, "forget")
        self.retain = encode_rows(tokenizer, retain_rows, max_length, "retain") if retain_rows else None
        self.alternates = None
        if with_alternates:
            self.alternates = []
            for number, row in enumerate(self.forget_rows, start=1):
                try:
                    own = alternates_of(row)
                except MPUError as err:
                    raise MPUError(f"forget row {number}: {err}") from None
                self.alternates.append(own if own is not None else list(idk_answers()))
        self._visits = [0] * len(self.forget)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.forget)

    def _rng(self, salt: int, visit: int, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, salt, visit, index]))

    def retain_index(self, index: int, visit: int) -> int:
        """The retain row paired with forget item ``index`` on its ``visit``-th use (0-based)."""
        size = len(self.retain)
        key = (visit, index // size)
        if key not in self._permutations:
            if len(self._permutations) > 64:
                self._permutations.clear()
            self._permutations[key] = self._rng(1, *key).permutation(size)
        return int(self._permutations[key][index % size])

    def alternate_answer(self, index: int, visit: int) -> str:
        candidates = self.alternates[index]
        return candidates[int(self._rng(2, visit, index).integers(len(candidates)))]

    def __getitem__(self, index: int) -> dict[str, dict[str, list[int]]]:
        visit = self._visits[index]
        self._visits[index] += 1
        item = {"forget": self.forget[index]}
        if self.retain is not None:
            item["retain"] = self.retain[self.retain_index(index, visit)]
        if self.alternates is not None:
            question = self.forget_rows[index]["question"]
            item["alternate"] = encode_qa(self.tokenizer, question, self.alternate_answer(index, visit), self.max_length)
        return item


@dataclass
class ForgetRetainCollator:
    """Pads each part of the items separately with :class:`QACollator`."""

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, dict[str, list[int]]]]) -> dict[str, dict[str, torch.Tensor]]:
        pad = QACollator(self.pad_token_id)
        return {key: pad([item[key] for item in items]) for key in items[0]}
