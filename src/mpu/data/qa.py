"""Question/answer files in TOFU format, and the one encoder that turns a question and an answer into
the token ids every training loss, metric and generation uses.

A QA file holds ``{"question": ..., "answer": ...}`` rows (extra fields are kept) in any format
:mod:`mpu.data.files` reads. Each row remembers where it came from (``row.where``: "file line 3"), so
that an encoding error can name the file and the line.

The encoder (:class:`Encoder`, see docs/encoding.md) renders the whole conversation, user and assistant
turns, with an explicit :class:`PromptFormat`:

- ``chat``: the tokenizer's chat template, called with a pinned ``date_string`` (and ``strftime_now``
  pinned to the same date) and an optional system prompt; the template is the other party's code, so
  it renders in transformers' Jinja sandbox, bounded in time and in what it builds
  (:mod:`mpu.data.chat_template`), the text as ``apply_chat_template`` renders it;
- ``plain``: ``system_text + user_start + question + user_end + assistant_start`` then the answer
  and EOS (OpenUnlearning's and TOFU's tag format for models trained without the template;
  ``Question: ...\\nAnswer: ...`` by default).

The prompt is what the format renders before the answer (the chat template's generation prompt).
The conversation is tokenized as one text and the labels are the tokens after the prompt, exactly as
rendered: a template whose assistant turn ends with an end-of-turn marker and a newline is trained and
scored on those tokens. Labels are -100 on the prompt. One :class:`LengthPolicy` per run decides what
happens to a row longer than ``max_length``: an error naming it, or, with ``truncate``, the answer's
tail is cut and counted.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from mpu.data.chat_template import CHAT_TEMPLATE_SECONDS, FORMAT_ADVICE, template_source
from mpu.data.isolated import TOKENIZER_SECONDS, is_other_partys, other_partys_tokens, render_conversation
from mpu.errors import InputError, MPUError


IGNORE_INDEX = -100
logger = logging.getLogger(__name__)

# OpenUnlearning's model configs pin the Llama-3.x templates' date to this string (the templates
# otherwise print today's date, so the same row would encode differently on different days).
DEFAULT_DATE = "10 Apr 2025"
FORMATS = ("chat", "plain")

# Raw-text rows (MUSE corpora) become prompt/continuation chunks, as in the MUSE experiments' defaults.
TEXT_CHUNK_WORDS = 200
TEXT_PROMPT_WORDS = 16



class Row(dict):
    """A data row (a plain dict) that remembers where it was read: ``where`` is "FILE line N"
    (or "FILE row N", "FILE chunk N"), empty for rows built in code."""

    __slots__ = ("where",)

    def __init__(self, *args, where: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.where = where

    def __reduce__(self):  # pickle/deepcopy keep the location
        return (_make_row, (dict(self), self.where))


def _make_row(data: dict, where: str) -> "Row":
    return Row(data, where=where)


def where_of(row: Any, fallback: str) -> str:
    """The row's file and line when it has them, else ``fallback`` (e.g. "forget row 3")."""
    where = getattr(row, "where", "")
    return f"{where} ({fallback})" if where else fallback


def load_qa_rows(path: str | Path, required: Sequence[str] = ("question", "answer"),
                 text_chunks: tuple[int, int] | None = (TEXT_CHUNK_WORDS, TEXT_PROMPT_WORDS)) -> list[dict[str, Any]]:
    """Read and validate a QA file with the project's one reader (:mod:`mpu.data.files`: JSON lines,
    JSON arrays, CSV, parquet, ``datasets`` folders, hub-layout folders). Every problem names the
    file and the line (or row); every returned row is a :class:`Row` that keeps its location.

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
        return [Row(row, where=f"{path} chunk {number}") for number, row in enumerate(rows, start=1)]
    validate_fields(path, numbered, required)
    return [Row(row, where=f"{path} {location}") for location, row in numbered]


# --- the prompt format ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFormat:
    """How a question and an answer are rendered as text (the template's arguments).

    format: ``chat`` (the tokenizer's chat template) or ``plain`` (the tags below).
    system_prompt: chat only: a system turn before the question (None: none).
    date_string: chat only: the date the template prints (``date_string``, and ``strftime_now``
        pinned to it; "10 Apr 2025" or "2025-04-10" style).
    system_text, user_start, user_end, assistant_start: plain only: the text before the first turn,
        around the question, and before the answer; EOS follows the answer.
    """

    format: str = "chat"
    system_prompt: str | None = None
    date_string: str = DEFAULT_DATE
    system_text: str = ""
    user_start: str = "Question: "
    user_end: str = "\n"
    assistant_start: str = "Answer: "

    def __post_init__(self):
        if self.format not in FORMATS:
            raise MPUError(f"unknown prompt format {self.format!r}; use {' or '.join(FORMATS)} "
                           f"(or a model name with shipped settings: see docs/encoding.md)")
        if not isinstance(self.date_string, str) or not self.date_string.strip():
            raise MPUError("date_string must be a non-empty string (the date the chat template prints)")

    def record(self) -> dict[str, Any]:
        """The arguments that change the tokens (what runs compare): chat formats omit the tags."""
        data = asdict(self)
        drop = ("system_text", "user_start", "user_end", "assistant_start") if self.format == "chat" \
            else ("system_prompt", "date_string")
        return {key: value for key, value in data.items() if key not in drop}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "PromptFormat":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise MPUError(f"unknown prompt format field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**record)


@dataclass(frozen=True)
class LengthPolicy:
    """What a run does with a row whose prompt + answer exceed ``max_length`` tokens: an error naming
    the row (``truncate=False``), or the answer's tail cut off, counted and warned about."""

    max_length: int = 2048
    truncate: bool = False

    def __post_init__(self):
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 4:
            raise MPUError(f"max_length must be an integer >= 4, got {self.max_length!r}")


def model_name(model=None, tokenizer=None) -> str:
    """The hub name or path a model was loaded from (what the shipped prompt formats are matched on)."""
    for owner in (tokenizer, getattr(model, "config", None), model):
        name = getattr(owner, "name_or_path", None) or getattr(owner, "_name_or_path", None)
        if name:
            return str(name)
    return ""


def model_max_length(model=None, tokenizer=None, default: int = 2048) -> int:
    """The default ``max_length`` of a run: the model's context (``max_position_embeddings``), else the
    tokenizer's ``model_max_length`` when it is a real limit, else ``default``."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return default


def _pinned_date(date_string: str) -> datetime.date | None:
    for pattern in ("%d %b %Y", "%d %B %Y", "%Y-%m-%d", "%b %d %Y", "%B %d %Y"):
        try:
            return datetime.datetime.strptime(date_string.strip(), pattern).date()
        except ValueError:
            continue
    return None


_STRFTIME_CODES = ("%d", "%-d", "%e", "%m", "%-m", "%Y", "%y", "%b", "%B", "%h", "%a", "%A", "%j", "%H", "%I",
                   "%M", "%S", "%p", "%Z", "%z")


def pin_strftime(template: str, date: datetime.date) -> str:
    """``template`` with a ``strftime_now`` macro in front that formats ``date`` (midnight) instead of
    the clock: a macro defined in the template shadows the global transformers gives it."""
    moment = datetime.datetime(date.year, date.month, date.day)
    replaced = "format"
    for code in _STRFTIME_CODES:
        try:
            value = moment.strftime(code)
        except ValueError:
            continue
        replaced += f"|replace({json.dumps(code)}, {json.dumps(value)})"
    return "{%- macro strftime_now(format) -%}{{ " + replaced + " }}{%- endmacro -%}" + template


# --- the encoder ------------------------------------------------------------------------------------


def tokenize(tokenizer, text: str, add_special_tokens: bool,
             offsets: bool = False) -> tuple[list[int], list[tuple[int, int]] | None]:
    """(token ids, character spans or None) of ``text``: spans only with ``offsets`` and a fast tokenizer.
    The other party's tokenizer (:func:`mpu.data.isolated.mark_other_partys`) never runs here: the text is
    tokenized in a child process, within TOKENIZER_SECONDS, so that a regular expression of its files that
    backtracks or panics is refused there (MPUError naming its tokenizer.json)."""
    theirs = other_partys_tokens(tokenizer, text, add_special_tokens, offsets, TOKENIZER_SECONDS)
    if theirs is not None:
        return theirs
    if offsets and getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]), None


class Encoder:
    """Token ids and labels of question/answer rows for one tokenizer, format and length policy.

    ``encode(question, answer)`` returns ``{"input_ids", "labels", "attention_mask"}`` lists (the
    rendered conversation's tokens, labels -100 on the prompt) and ``tail``, the number of final
    labels that end the turn rather than belong to the answer. ``prompt_ids(question)`` is what a
    model is given before it generates. Rows that were truncated are counted in ``truncated``
    ({(question, answer): tokens lost}). Encodings are cached (rows are encoded once per run even
    when m copies train on them for R rounds).
    """

    def __init__(self, tokenizer, fmt: PromptFormat | None = None, policy: LengthPolicy | None = None):
        self.tokenizer = tokenizer
        self.format = fmt or PromptFormat()
        self.policy = policy or LengthPolicy()
        self.truncated: dict[tuple[str, str], int] = {}
        self._cache: dict[tuple[str, str], tuple[list[int], int]] = {}
        self._template = None
        self._missing = ""
        self._source_name: str | None = None
        if self.format.format == "chat":
            template = getattr(tokenizer, "chat_template", None)
            if isinstance(template, dict):  # several named templates: the default one
                template = template.get("default")
            if template and not isinstance(template, str):
                raise MPUError(f"{template_source(tokenizer)}: the chat template is a {type(template).__name__}, not "
                               f"text; choose the prompt format explicitly {FORMAT_ADVICE}")
            if not template:
                # an error only when a question is rendered: MUSE's and WMDP's own prompts need no template
                name = getattr(tokenizer, "name_or_path", "") or "this model"
                self._missing = f"the tokenizer of {name} has no chat template: choose the prompt format explicitly {FORMAT_ADVICE}"
            elif "strftime_now" in template:
                date = _pinned_date(self.format.date_string)
                if date is None:
                    raise MPUError(f"date_string {self.format.date_string!r} is not a date like '10 Apr 2025' or "
                                   "'2025-04-10'; the chat template calls strftime_now, which is pinned to it")
                template = pin_strftime(template, date)
            self._template = template
        self.template_sha256 = hashlib.sha256((self._template or "").encode("utf-8")).hexdigest() if self._template else None

    # rendering

    def render(self, question: str, answer: str | None = None, fmt: PromptFormat | None = None) -> tuple[str, str | None]:
        """(prompt text, whole conversation text or None): the prompt is a prefix of the conversation.
        ``fmt``: another format than the encoder's (the label check's row-free conversation)."""
        fmt = fmt or self.format
        if self._missing:
            raise MPUError(self._missing)
        if fmt.format == "plain":
            prompt = fmt.system_text + fmt.user_start + question + fmt.user_end + fmt.assistant_start
            return prompt, None if answer is None else prompt + answer
        messages = ([{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []) + \
                   [{"role": "user", "content": question}]
        prompt = self._render_chat(messages, add_generation_prompt=True)
        full = None if answer is None else self._render_chat(
            messages + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
        if full is not None and not full.startswith(prompt):
            raise MPUError("the chat template renders the generation prompt differently from the conversation "
                           "(the prompt is not a prefix of the rendered conversation); use --prompt-format plain")
        return prompt, full

    def _render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The conversation through the chat template, as ``apply_chat_template(tokenize=False)`` renders it
        (transformers' environment, the same variables: the special tokens, ``date_string``, ``tools`` and
        ``documents`` None), in the child process of :func:`mpu.data.isolated.render_conversation`:
        within its size bounds (checked before anything tokenizes the text), CHAT_TEMPLATE_SECONDS per
        conversation and its memory cap; MPUError naming the template's file otherwise."""
        variables = {**dict(getattr(self.tokenizer, "special_tokens_map", None) or {}),
                     "date_string": self.format.date_string}
        return render_conversation(self._template, messages, add_generation_prompt, variables,
                                   CHAT_TEMPLATE_SECONDS, self._source())

    def _source(self) -> str:
        if self._source_name is None:
            self._source_name = template_source(self.tokenizer)
        return self._source_name

    def _tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
        special = self.format.format == "plain"   # chat templates write BOS themselves
        return tokenize(self.tokenizer, text, special, offsets=True)

    def prompt_ids(self, question: str) -> list[int]:
        """The tokens a model is given before it generates: the rendered prompt without trailing spaces
        (a space before the answer belongs to the answer's first token, as the encoding splits it)."""
        prompt, _ = self.render(question)
        return self._tokens(prompt.rstrip(" "))[0]

    def _split(self, question: str, answer: str) -> tuple[list[int], int, int]:
        """(ids of the conversation, number of prompt tokens, number of end-of-turn tokens), cached.

        The end of turn is what the format renders after the answer text (the template's end-of-turn
        marker and whatever follows it, or the EOS the plain format appends)."""
        key = (question, answer)
        if key not in self._cache:
            prompt, full = self.render(question, answer)
            if self.format.format == "chat" and (question, answer) not in self._REFERENCE_ROWS:
                shown, answer_at = self._place_answer(answer, prompt, full)
            else:
                shown = answer if answer in full[len(prompt):] else answer.strip()   # templates may trim it
                answer_at = full.find(shown, len(prompt)) if shown else -1
            ids, offsets = self._tokens(full)
            n_prompt = self._prompt_length(prompt, ids, offsets)
            if self.format.format == "chat" and key not in self._REFERENCE_ROWS and question.strip() not in prompt:
                # a template writing a fixed user turn would have the client unlearn its answers after another question
                raise MPUError(f"{self._source()}: the chat template renders the prompt without the row's question "
                               "(a template must write the user's message); refusing it")
            if is_other_partys(self.tokenizer) and key not in self._REFERENCE_ROWS:
                self._check_labels_free_of_the_row(answer, ids[n_prompt:])
            if offsets is not None:
                if answer_at >= 0:
                    end_of_answer = answer_at + len(shown)
                    n_tail = sum(1 for i, (start, end) in enumerate(offsets) if i >= n_prompt and start >= end_of_answer
                                 and end > start)
                else:
                    n_tail = 0
            else:
                n_tail = 1 if ids and ids[-1] == self.tokenizer.eos_token_id else 0
            eos = self.tokenizer.eos_token_id
            if self.format.format == "plain" and eos is not None and (not ids or ids[-1] != eos):
                ids = ids + [eos]
                n_tail += 1
            self._cache[key] = (ids, n_prompt, min(n_tail, len(ids) - n_prompt))
        return self._cache[key]

    def _prompt_length(self, prompt: str, ids: list[int], offsets: list[tuple[int, int]] | None) -> int:
        """How many of the conversation's leading ``ids`` are the prompt: the longest run of tokens that end
        within it (without its trailing spaces, which belong to the answer's first token); without offsets,
        the prompt's own tokens, one fewer when the last merges with the answer."""
        boundary = len(prompt.rstrip(" "))
        if offsets is not None:
            return next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(ids))
        prompt_ids = self._tokens(prompt.rstrip(" "))[0]
        return len(prompt_ids) if ids[:len(prompt_ids)] == prompt_ids else len(prompt_ids) - 1

    def _check_labels_free_of_the_row(self, answer: str, labels: list[int]) -> None:
        """Refuse labels that depend on anything but the answer: the other party's tokenizer and template
        must give ``answer`` the same labels in a row-free conversation (another question, and another
        system prompt when the run has one). A tokenizer sees the whole conversation at once, so a token
        that straddles the end of the prompt (an added token, a normalizer's replacement, a look-behind),
        or spaces the template counts out from the question, would put the client's private question
        or system prompt into what it trains on."""
        canary = dataclasses.replace(self.format, system_prompt="Reply in one line." if self.format.system_prompt else "")
        prompt, full = self.render(self._REFERENCE_ROWS[0][0], answer, fmt=canary)
        ids, offsets = self._tokens(full)
        reference = ids[self._prompt_length(prompt, ids, offsets):]
        if labels != reference:
            raise MPUError(f"{getattr(self.tokenizer, 'name_or_path', '') or 'the tokenizer'}: its tokenizer and chat "
                           f"template label this row's answer with {len(labels)} tokens that differ from the "
                           f"{len(reference)} they give the same answer in a row-free conversation: the labels would "
                           "carry the row's question or the system prompt. Refusing them")

    # Two row-free conversations: what a template renders around an answer, in the labelled part, must be
    # the same for both, and for every row.
    _REFERENCE_ROWS = (("Who?", "Nobody."), ("What is it?", "Nothing at all."))

    def _surroundings(self) -> tuple[str, str]:
        """(text before, text after) the answer in the labelled part of the row-free conversations, the same
        for both; MPUError when they differ or do not hold their answer."""
        if getattr(self, "_around", None) is None:
            found = []
            for question, answer in self._REFERENCE_ROWS:
                prompt, full = self.render(question, answer)
                rest = full[len(prompt):]
                at = rest.find(answer)
                found.append((rest[:at], rest[at + len(answer):]) if at >= 0 else None)
            if found[0] is None or found[0] != found[1]:
                raise MPUError(f"{self._source()}: the chat template renders text that depends on the conversation "
                               f"around the answer ({found[0]!r}, {found[1]!r}); every token after the prompt "
                               f"would be a training label. Refusing it. Choose the prompt format explicitly {FORMAT_ADVICE}")
            self._around = found[0]
        return self._around

    def _place_answer(self, answer: str, prompt: str, full: str) -> tuple[str, int]:
        """(the answer as rendered, where it starts in ``full``): what follows the prompt must be the
        row-free conversations' text before the answer, the answer (outer whitespace may be trimmed), and
        their text after it. Every token after the prompt is a training label, and a template of the other
        party's that wrote the question there (or changed the answer) would have the client train on its
        private text: refused with an MPUError naming the template's file."""
        before, after = self._surroundings()
        rest = full[len(prompt):]
        middle = (rest[len(before):len(rest) - len(after)]
                  if len(rest) >= len(before) + len(after) and rest.startswith(before) and rest.endswith(after) else None)
        if middle is None or middle.strip() != answer.strip() or middle not in answer:
            raise MPUError(f"{self._source()}: the chat template renders {rest[:120]!r} after the prompt, where the "
                           f"answer must come between {before!r} and {after!r} (as in a row-free conversation); every "
                           f"token there would be a training label. Refusing it. Choose the prompt format explicitly "
                           f"{FORMAT_ADVICE}")
        return middle, len(prompt) + len(before)

    def end_of_turn_ids(self) -> list[int]:
        """The special tokens the format renders after an answer (the template's end-of-turn marker,
        EOS): where generation must stop, besides the model's own EOS."""
        if self._missing:
            return []
        ids, _, n_tail = self._split("Who?", "Nobody.")
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        special |= set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        return [token for token in ids[len(ids) - n_tail:] if token in special] if n_tail else []

    def encode(self, question: str, answer: str, where: str = "a row") -> dict[str, list[int]]:
        """Ids, labels and attention mask of one row under the length policy; MPUError naming ``where``
        when the row does not fit (or, truncating, when not even one answer token fits)."""
        ids, n_prompt, n_tail = self._split(question, answer)
        limit = self.policy.max_length
        if n_prompt >= len(ids):
            raise MPUError(f"{where}: the answer renders to no token after the prompt")
        if len(ids) > limit:
            lost = len(ids) - limit
            if n_prompt >= limit or not self.policy.truncate:
                raise MPUError(
                    f"{where}: {len(ids)} tokens (prompt {n_prompt}, answer {len(ids) - n_prompt}) exceed max_length={limit}"
                    + ("; the prompt alone does not fit: raise --max-length" if n_prompt >= limit
                       else "; raise --max-length, or pass --truncate to cut answers (counted in the run's manifest)"))
            key = (question, answer)
            if key not in self.truncated:
                self.truncated[key] = lost
                logger.info("%s: truncated to max_length=%d, %d answer tokens lost", where, limit, lost)
            ids = ids[:limit]
            n_tail = max(0, n_tail - lost)
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        # "tail": how many of the last labels are the end of turn, not the answer (token-wise metrics
        # such as exact memorisation leave them out)
        return {"input_ids": list(ids), "labels": labels, "attention_mask": [1] * len(ids), "tail": n_tail}

    def record(self) -> dict[str, Any]:
        """What a run records (and compares) of its encoding: format arguments and length policy."""
        return {"prompt_format": self.format.record(), "chat_template_sha256": self.template_sha256,
                "max_length": self.policy.max_length, "truncate": self.policy.truncate}


def truncation_summary(encoder: Encoder, keys: Sequence[tuple[str, str]]) -> dict[str, int]:
    """{"rows_truncated", "tokens_truncated"} over the distinct ``(question, answer)`` keys."""
    lost = [encoder.truncated[key] for key in dict.fromkeys(keys) if key in encoder.truncated]
    return {"rows_truncated": len(lost), "tokens_truncated": int(sum(lost))}


def encoder_for(tokenizer, fmt: PromptFormat | None = None, policy: LengthPolicy | None = None) -> Encoder:
    """The cached :class:`Encoder` of ``tokenizer`` for ``fmt`` and ``policy`` (one per combination;
    a changed chat template on the tokenizer gets a new one). The cache is an attribute of the tokenizer,
    so that it goes with it: a cache keyed weakly by the tokenizer, holding encoders that hold the
    tokenizer, kept every tokenizer alive (225 MB each for a large vocabulary, one per copy)."""
    fmt, policy = fmt or PromptFormat(), policy or LengthPolicy()
    per_tokenizer = vars(tokenizer).setdefault("_mpu_encoders", {})
    key = (fmt, policy, str(getattr(tokenizer, "chat_template", None)), tokenizer.eos_token_id)
    if key not in per_tokenizer:
        per_tokenizer[key] = Encoder(tokenizer, fmt, policy)
    return per_tokenizer[key]


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 2048, fmt: PromptFormat | None = None,
              truncate: bool = False, where: str = "a row") -> dict[str, list[int]]:
    """:meth:`Encoder.encode` with the cached encoder of ``tokenizer`` (default format: the chat template
    with the pinned date)."""
    return encoder_for(tokenizer, fmt, LengthPolicy(max_length, truncate)).encode(question, answer, where)


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
