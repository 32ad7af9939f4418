"""Forget/retain pairing for unlearning batches, and the shipped "I don't know" answers.

The dataset has one item per forget example. Item ``i`` on its ``v``-th visit is paired with retain row
``perm_v[i mod R]``, where ``perm_v`` is a permutation of the R retain rows drawn from
``SeedSequence([seed, v, i // R])``. So the pairing is a function of (seed, item, visit), not of the
process: under DDP each rank's sampler shard holds different forget items and therefore draws different
retain rows, within an epoch no retain row repeats until all R were used, and a run is reproducible for
any number of processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import numpy as np
import torch

from mpu.data.qa import (Encoder, LengthPolicy, PromptFormat, QACollator, encoder_for, truncation_summary,
                         where_of)
from mpu.errors import MPUError

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def idk_answers() -> tuple[str, ...]:
    """The shipped "I don't know" answers (``mpu/resources/idk.txt``, one per line)."""
    text = resources.files("mpu").joinpath("resources/idk.txt").read_text(encoding="utf-8")
    answers = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not answers:
        raise MPUError("mpu/resources/idk.txt holds no answers")
    return answers


def encode_rows(tokenizer, rows: Sequence[dict[str, Any]], max_length: int, what: str, *,
                encoder: Encoder | None = None) -> list[dict[str, list[int]]]:
    """Each row through the run's one encoder (:class:`mpu.data.qa.Encoder`, cached: the MPU client
    trains m copies for R rounds on the same rows); a row that does not fit ``max_length`` is an error
    naming its file and line (or, with the policy's ``truncate``, cut and counted)."""
    encoder = encoder or encoder_for(tokenizer, None, LengthPolicy(max_length))
    return [encoder.encode(row["question"], row["answer"], where_of(row, f"{what} row {number}"))
            for number, row in enumerate(rows, start=1)]


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
        prompt_format: PromptFormat | None = None,
        truncate: bool = False,
    ):
        if not forget_rows:
            raise MPUError("the forget set is empty")
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.max_length = max_length
        self.encoder = encoder_for(tokenizer, prompt_format, LengthPolicy(max_length, truncate))
        self.forget_rows = list(forget_rows)
        self.retain_rows = list(retain_rows) if retain_rows else None
        self.forget = encode_rows(tokenizer, forget_rows, max_length, "forget", encoder=self.encoder)
        self.retain = encode_rows(tokenizer, retain_rows, max_length, "retain", encoder=self.encoder) if retain_rows else None
        self.alternates = None
        if with_alternates:
            self.alternates = []
            for number, row in enumerate(self.forget_rows, start=1):
                try:
                    own = alternates_of(row)
                except MPUError as err:
                    raise MPUError(f"{where_of(row, f'forget row {number}')}: {err}") from None
                self.alternates.append(own if own is not None else list(idk_answers()))
                # every preferred answer encoded now, not mid-training (training reads the encoder's cache): the
                # length policy, and a template or tokenizer of the other party's that fails on one answer
                # only, are refused before any copy trains
                for answer in self.alternates[-1]:
                    self.encoder.encode(row["question"], answer, where_of(row, f"forget row {number}") + " (alternate answer)")
        self._visits = [0] * len(self.forget)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}
        summary = self.truncation()
        if summary["rows_truncated"]:
            logger.warning("truncated %d row(s) to max_length=%d: %d answer tokens lost",
                           summary["rows_truncated"], max_length, summary["tokens_truncated"])

    def truncation(self) -> dict[str, int]:
        """Rows (forget, retain and alternates seen so far) cut by the length policy, and tokens lost."""
        keys = [(row["question"], row["answer"]) for row in self.forget_rows + (self.retain_rows or [])]
        if self.alternates is not None:
            keys += [(row["question"], answer) for row, answers in zip(self.forget_rows, self.alternates) for answer in answers]
        return truncation_summary(self.encoder, keys)

    def record(self) -> dict[str, Any]:
        """The run's encoding (prompt format, template hash, length policy) and what was truncated."""
        return {**self.encoder.record(), **self.truncation()}

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
            row = self.forget_rows[index]
            item["alternate"] = self.encoder.encode(row["question"], self.alternate_answer(index, visit),
                                                    where_of(row, f"forget row {index + 1}") + " (alternate answer)")
        return item


@dataclass
class ForgetRetainCollator:
    """Pads each part of the items separately with :class:`QACollator`."""

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, dict[str, list[int]]]]) -> dict[str, dict[str, torch.Tensor]]:
        pad = QACollator(self.pad_token_id)
        return {key: pad([item[key] for item in items]) for key in items[0]}
