"""Prompt formats of the real targets the experiment configs name, as OpenUnlearning's model configs
give them (``configs/model/<name>.yaml``, ``template_args``), and how a run picks its format.

- Llama-3.2-1B/3B-Instruct, Llama-3.1-8B-Instruct: the tokenizer's chat template with the system
  prompt "You are a helpful assistant." and the date pinned to "10 Apr 2025";
- Llama-2-7b-chat (TOFU's and OpenUnlearning's Llama-2 targets): ``[INST] question [/INST]answer``
  then EOS, without the tokenizer's template;
- phi-1_5 (TOFU's phi target): ``Question: question\\nAnswer: answer`` then EOS.

A model is matched by name: the longest key (or alias) contained in its hub name or directory path,
case-insensitively ("open-unlearning/tofu_Llama-3.2-1B-Instruct_full" is a Llama-3.2-1B-Instruct).
"""

from __future__ import annotations

from typing import Any

from mpu.data.qa import DEFAULT_DATE, FORMATS, PromptFormat
from mpu.errors import MPUError

_LLAMA3 = {"format": "chat", "system_prompt": "You are a helpful assistant.", "date_string": DEFAULT_DATE}

MODEL_FORMATS: dict[str, dict[str, Any]] = {
    "Llama-3.2-1B-Instruct": dict(_LLAMA3),
    "Llama-3.2-3B-Instruct": dict(_LLAMA3),
    "Llama-3.1-8B-Instruct": dict(_LLAMA3),
    "Llama-2-7b-chat": {"format": "plain", "user_start": "[INST] ", "user_end": " [/INST]",
                        "assistant_start": ""},
    "phi-1_5": {"format": "plain", "user_start": "Question: ", "user_end": "\n",
                "assistant_start": "Answer: "},
}

# Other spellings of the same targets (TOFU's own checkpoints: locuslab/tofu_ft_llama2-7b, tofu_ft_phi-1.5).
ALIASES = {"llama2-7b": "Llama-2-7b-chat", "phi-1.5": "phi-1_5", "phi_1_5": "phi-1_5"}


def model_settings(name: str | None) -> tuple[str, dict[str, Any]] | None:
    """(key, settings) of the shipped entry whose name ``name`` contains, or None."""
    if not name:
        return None
    lowered = str(name).lower()
    candidates = [(key, key) for key in MODEL_FORMATS] + [(alias, key) for alias, key in ALIASES.items()]
    matches = [(len(spelled), key) for spelled, key in candidates if spelled.lower() in lowered]
    if not matches:
        return None
    key = max(matches)[1]
    return key, dict(MODEL_FORMATS[key])


def resolve_format(prompt_format: str = "auto", system_prompt: str | None = None, date_string: str | None = None,
                   model_name: str | None = None) -> PromptFormat:
    """The :class:`PromptFormat` of a run.

    ``prompt_format``: ``auto`` (the shipped settings of ``model_name`` when it is a known target, else
    the chat template), ``chat``, ``plain``, or a shipped model name (e.g. ``Llama-3.2-1B-Instruct``).
    ``system_prompt`` and ``date_string`` override the chosen settings when given (``system_prompt=""``
    removes a shipped one). Unknown names raise MPUError listing the choices.
    """
    spec = (prompt_format or "auto").strip()
    if spec == "auto":
        found = model_settings(model_name)
        settings = found[1] if found else {"format": "chat"}
    elif spec in FORMATS:
        settings = {"format": spec}
    else:
        found = model_settings(spec)
        if found is None:
            raise MPUError(f"unknown prompt format {spec!r}; use auto, {', '.join(FORMATS)}, or one of "
                           f"{', '.join(MODEL_FORMATS)}")
        settings = found[1]
    if system_prompt is not None:
        settings["system_prompt"] = system_prompt or None
    if date_string is not None:
        settings["date_string"] = date_string
    if settings["format"] == "plain":
        settings.pop("system_prompt", None)
        settings.pop("date_string", None)
    return PromptFormat(**settings)


# Files next to a model that record the encoding it was trained with (``mpu unlearn``'s summary).
RECORD_FILES = ("unlearn_summary.json",)


def recorded_format(model_dir) -> PromptFormat | None:
    """The prompt format a model directory records having been trained with (``mpu unlearn`` writes
    it in ``unlearn_summary.json``), None when it records none. A malformed record is an MPUError."""
    import json
    from pathlib import Path

    for name in RECORD_FILES:
        path = Path(str(model_dir)) / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8")).get("encoding", {}).get("prompt_format")
        except (OSError, ValueError, AttributeError) as err:
            raise MPUError(f"{path}: unreadable ({err})") from None
        if record:
            try:
                return PromptFormat.from_record(record)
            except (MPUError, TypeError) as err:
                raise MPUError(f"{path}: encoding.prompt_format: {err}") from None
    return None
