"""What a metric function sees: the model, its tokenizer, named datasets, and cached passes over them.

Several metrics read the same pass (probabilities, memorisation and MIA scores all come from one
teacher-forced pass over a dataset), so passes are cached per (model, dataset, answer key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from mpu.errors import MPUError
from mpu.eval import encoding
from mpu.eval.engine import TokenStats, eos_ids, generate, gradient_norms, token_stats

log = logging.getLogger(__name__)

KINDS = ("qa", "icl_qa", "completion", "text", "mcq")


class MetricUnavailable(MPUError):
    """A metric cannot be computed with what was given (e.g. mia_reference without a reference model)."""


@dataclass
class EvalDataset:
    name: str
    kind: str
    rows: list[dict[str, Any]]
    icl: list[dict[str, Any]] = field(default_factory=list)   # few-shot examples (icl_qa)
    mode: str = "auto"                                       # mcq scoring: auto, cloze or letter
    subject: str = ""                                        # mcq prompt subject (letter mode)
    source: str = ""                                         # where the rows came from (error messages)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown dataset kind {self.kind!r}; known: {', '.join(KINDS)}")


class EvalContext:
    def __init__(
        self,
        model,
        tokenizer,
        datasets: dict[str, EvalDataset] | Sequence[EvalDataset],
        batch_size: int = 32,
        reference_model=None,
        progress=None,
        max_length: int | None = None,
        prompt_format=None,
        truncate: bool = False,
    ):
        """``max_length`` (default: the model's context length), ``truncate`` and ``prompt_format`` (a
        :class:`~mpu.data.qa.PromptFormat`, or a name for :func:`mpu.data.templates.resolve_format`;
        default ``auto``: the model's shipped settings, else its chat template) are the run's encoding,
        shared by every metric and generation."""
        from mpu.data.qa import LengthPolicy, PromptFormat, encoder_for, model_max_length, model_name
        from mpu.data.templates import resolve_format

        self.model = model
        self.tokenizer = tokenizer
        if not isinstance(datasets, dict):
            datasets = {dataset.name: dataset for dataset in datasets}
        self.datasets = datasets
        self.batch_size = batch_size
        self.reference_model = reference_model
        self.progress = progress
        if not isinstance(prompt_format, PromptFormat):
            prompt_format = resolve_format(prompt_format or "auto", model_name=model_name(model, tokenizer))
        self.max_length = max_length or model_max_length(model, tokenizer)
        self.encoder = encoder_for(tokenizer, prompt_format, LengthPolicy(self.max_length, truncate))
        self._keys: set[tuple] = set()   # what this context encoded (its truncation count)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # generation stops at the model's EOS and at the end-of-turn marker the format renders
        self.eos_ids = eos_ids(model, tokenizer)
        self.eos_ids += [token for token in self.encoder.end_of_turn_ids() if token not in self.eos_ids]
        self._stats: dict[tuple, list] = {}
        self._generations: dict[tuple, list[str]] = {}
        self._gradnorms: dict[str, list[float]] = {}

    def dataset(self, name: str) -> EvalDataset:
        try:
            return self.datasets[name]
        except KeyError:
            why = getattr(self, "missing", {}).get(name)   # the evaluator's reason: the local copy lacks it
            raise MetricUnavailable(f"no {name} data: {why}" if why else
                                    f"no dataset {name!r} (have {', '.join(self.datasets) or 'none'})") from None

    # --- the run's encoding ------------------------------------------------------------------------

    @staticmethod
    def _where(dataset: EvalDataset, row, number: int, answer_key: str | None = None) -> str:
        from mpu.data.qa import where_of

        named = f"{dataset.source or dataset.name} row {number}" + (f" ({answer_key})" if answer_key else "")
        return where_of(row, named)

    def truncation(self) -> dict[str, int]:
        """Rows this context cut to ``max_length`` (``--truncate``), and the tokens lost."""
        lost = [self.encoder.truncated[key] for key in self._keys if key in self.encoder.truncated]
        return {"rows_truncated": len(lost), "tokens_truncated": int(sum(lost))}

    def encoding_record(self) -> dict[str, Any]:
        """The evaluation's encoding (prompt format arguments, template hash, length policy) and what it
        truncated: what the output config records and what comparisons check."""
        return {**self.encoder.record(), **self.truncation()}

    def _warn_truncation(self, data: str) -> None:
        summary = self.truncation()
        if summary["rows_truncated"] > getattr(self, "_warned_rows", 0):
            log.warning("%s: %d row(s) so far truncated to max_length=%d, %d tokens lost", data,
                        summary["rows_truncated"], self.max_length, summary["tokens_truncated"])
            self._warned_rows = summary["rows_truncated"]

    # --- teacher-forced passes ----------------------------------------------------------------------

    def stats(self, data: str, answer_key: str | None = None, model=None) -> list:
        """Per row: TokenStats, or a list of them when the row's ``answer_key`` holds several answers."""
        model = model if model is not None else self.model
        key = (id(model), data, answer_key)
        if key not in self._stats:
            dataset = self.dataset(data)
            examples, shape = [], []
            for number, row in enumerate(dataset.rows, start=1):
                target = row[answer_key] if answer_key else None
                targets = target if isinstance(target, list) else [target]
                shape.append(len(targets) if isinstance(target, list) else None)
                for one in targets:
                    self._keys.add(encoding.truncation_key(dataset.kind, row, one))
                    examples.append(encoding.encode(self.tokenizer, dataset.kind, row, one, dataset.icl,
                                                    encoder=self.encoder, where=self._where(dataset, row, number, answer_key)))
            self._warn_truncation(data)
            flat = token_stats(model, examples, self.batch_size, self.pad_id)
            result, offset = [], 0
            for n in shape:
                if n is None:
                    result.append(flat[offset])
                    offset += 1
                else:
                    result.append(flat[offset:offset + n])
                    offset += n
            self._stats[key] = result
        return self._stats[key]

    def reference_stats(self, data: str) -> list[TokenStats]:
        if self.reference_model is None:
            raise MetricUnavailable("needs a reference model (--retain-model)")
        return self.stats(data, model=self.reference_model)

    def gradnorms(self, data: str, p: float = 2) -> list[float]:
        key = f"{data}:{p}"
        if key not in self._gradnorms:
            dataset = self.dataset(data)
            self._keys.update(encoding.truncation_key(dataset.kind, row) for row in dataset.rows)
            examples = [encoding.encode(self.tokenizer, dataset.kind, row, None, dataset.icl, encoder=self.encoder,
                                        where=self._where(dataset, row, number))
                        for number, row in enumerate(dataset.rows, start=1)]
            self._warn_truncation(data)
            self._gradnorms[key] = gradient_norms(self.model, examples, self.eos_ids, p=p)
        return self._gradnorms[key]

    # --- generation -------------------------------------------------------------------------------

    def prompts(self, data: str, max_new_tokens: int = 1) -> list[list[int]]:
        """The token ids each row of ``data`` generates from, under the run's length policy
        (:func:`mpu.eval.encoding.fit_prompt`: an error naming the row for a prompt that leaves no room
        to generate; with ``--truncate``, few-shot and continuation prompts cut to leave
        ``max_new_tokens``, counted with the truncated rows)."""
        dataset = self.dataset(data)
        prompts = []
        for number, row in enumerate(dataset.rows, start=1):
            key = encoding.truncation_key(dataset.kind, row)   # a row cut here and when scored counts once
            self._keys.add(key)
            prompt = encoding.prompt_ids(self.tokenizer, dataset.kind, row, dataset.icl, encoder=self.encoder)
            prompts.append(encoding.fit_prompt(prompt, dataset.kind, self.encoder, self._where(dataset, row, number),
                                               key, max_new_tokens))
        self._warn_truncation(data)
        return prompts

    def generations(self, data: str, max_new_tokens: int = 200, stopwords: Sequence[str] = ()) -> list[str]:
        """Greedy generations for the rows of ``data``, each within max_length (prompt + new tokens):
        a row whose prompt leaves fewer than ``max_new_tokens`` stops at the limit, and a warning
        counts those rows."""
        key = (data, max_new_tokens, tuple(stopwords))
        if key not in self._generations:
            prompts = self.prompts(data, max_new_tokens)
            short = sum(1 for prompt in prompts if len(prompt) + max_new_tokens > self.max_length)
            if short:
                log.warning("%s: %d row(s) generate fewer than max_new_tokens=%d tokens: prompt and generation stop "
                            "at max_length=%d", data, short, max_new_tokens, self.max_length)
            self._generations[key] = generate(
                self.model, self.tokenizer, prompts, self.batch_size, max_new_tokens, stopwords,
                stop_ids=self.eos_ids, max_length=self.max_length,
            )
        return self._generations[key]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # --- multiple choice --------------------------------------------------------------------------

    def choice_logliks(self, data: str, mode: str) -> list[dict]:
        """Per row: summed log-likelihood of each choice (and its character length) under ``mode``."""
        key = (id(self.model), data, "mcq", mode)
        if key not in self._stats:
            dataset = self.dataset(data)
            examples, spans = [], []
            for row in dataset.rows:
                contexts, continuations = mcq_prompts(row, mode, dataset.subject)
                spans.append((len(examples), len(continuations), continuations))
                for context, continuation in zip(contexts, continuations):
                    self._keys.add(("choice", context, continuation))
                    examples.append(encoding.encode_choice(self.tokenizer, context, continuation, encoder=self.encoder,
                                                           where=self._where(dataset, row, len(spans))))
            self._warn_truncation(data)
            flat = token_stats(self.model, examples, self.batch_size, self.pad_id)
            self._stats[key] = [
                {"logliks": [float(s.logprobs.sum()) for s in flat[start:start + n]],
                 "lengths": [len(c.strip().encode("utf-8")) for c in continuations]}
                for start, n, continuations in spans
            ]
        return self._stats[key]


LETTERS = "ABCDEFGHIJ"


def mcq_answer_index(row: dict) -> int:
    answer = row["answer"]
    if isinstance(answer, str):
        answer = answer.strip()
        return LETTERS.index(answer.upper()) if answer.upper() in LETTERS[: len(row["choices"])] else int(answer)
    return int(answer)


def mcq_mode(row: dict, mode: str) -> str:
    if mode == "auto":
        return "cloze" if row.get("cloze") else "letter"
    if mode not in ("cloze", "letter"):
        raise MPUError(f"unknown multiple-choice mode {mode!r}; use auto, cloze or letter")
    return mode


def mcq_prompts(row: dict, mode: str, subject: str = "") -> tuple[list[str], list[str]]:
    """(contexts, continuations) whose log-likelihoods are compared.

    letter: lm-eval-harness's MMLU/WMDP zero-shot prompt, continuations " A".." D";
    cloze:  the corpus sentence prefix (``cloze``, else the question), continuations the choice texts.
    """
    choices = list(row["choices"])
    if mcq_mode(row, mode) == "cloze":
        context = row.get("cloze") or row["question"]
        return [context] * len(choices), choices
    topic = (row.get("subject") or subject or "").replace("_", " ").strip()
    header = f"The following are multiple choice questions (with answers) about {topic}.\n\n" if topic else ""
    lines = [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    context = header + row["question"].strip() + "\n" + "\n".join(lines) + "\nAnswer:"
    return [context] * len(choices), [LETTERS[i] for i in range(len(choices))]


# The parts of an encoding record that change the scores: runs that differ in them cannot be compared.
COMPARED_ENCODING = ("prompt_format", "chat_template_sha256")


def check_same_encoding(ours: dict | None, theirs: dict | None, source: str) -> None:
    """MPUError naming ``source`` when two runs rendered their rows differently (another prompt format,
    system prompt, date or chat template): their scores do not compare. A record without an encoding
    (older outputs) is not checked."""
    if not ours or not theirs:
        return
    for key in COMPARED_ENCODING:
        if key in ours and key in theirs and ours[key] != theirs[key]:
            raise MPUError(f"{source}: made with another encoding ({key} {theirs[key]!r}, this run {ours[key]!r}); "
                           "evaluate both with the same --prompt-format/--system-prompt/--date-string")
