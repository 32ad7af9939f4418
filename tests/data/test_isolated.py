"""The other party's tokenizer runs each text in the child process first: a regular expression that
panics (onig's retry limit) or backtracks for long is refused there, naming the file, and never runs here;
an ordinary tokenizer gives the same tokens as one of our own."""

from __future__ import annotations

import json
import uuid

import pytest

import mpu.data.qa as qa
from mpu.data import isolated
from mpu.data.qa import tokenize
from mpu.data.tokenizer import train_tokenizer
from mpu.errors import MPUError

TEXTS = ["The author's full name is Jaime Vasquez, a writer of true crime born in 1958.",
         "Question: Where was Ada born? Answer: London."] * 4
ROW = TEXTS[0]


def other_partys(folder, pre_tokenizer_pattern: str | None = None, vocabulary: int = 300, **config):
    """A tiny fast tokenizer saved in ``folder`` (with a Split pre-tokenizer of that pattern, and ``config``
    in its tokenizer_config.json), loaded as the client loads the other party's: in the child only."""
    from tokenizers import Regex, pre_tokenizers

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    if pre_tokenizer_pattern is not None:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pre_tokenizer_pattern), "isolated")
    tokenizer.save_pretrained(folder)
    if config:
        path = folder / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return isolated.load_other_partys(folder, uuid.uuid4().hex, vocabulary)


def test_a_tokenizer_regex_that_panics_is_refused_in_the_child_and_never_run_here(tmp_path, capfd):
    # arrange: backtracking past onig's retry limit: a Rust panic (a BaseException) with a backtrace on stderr
    tokenizer = other_partys(tmp_path, r"(?:.|.){1,25}(?=\d{5})")

    # act
    with pytest.raises(MPUError) as refused:
        tokenize(tokenizer, ROW, False)

    # assert: an MPUError naming the file and the reason; no panic here (nothing on this process's stderr)
    assert str(refused.value).startswith(f"{tmp_path}/tokenizer.json: the tokenizer fails on this run's text "
                                         "(PanicException: Onig: Regex search error: retry-limit-in-match over")
    assert "panicked" not in capfd.readouterr().err


def test_a_tokenizer_regex_that_backtracks_for_long_is_killed_at_the_time_bound(tmp_path, monkeypatch):
    # arrange: just under the retry limit at each start, about 0.6 s on this text on a 2-core machine
    monkeypatch.setattr(qa, "TOKENIZER_SECONDS", 0.05)
    tokenizer = other_partys(tmp_path, r"(?:\w*\s?){1,13}\d{5}")

    # act
    with pytest.raises(MPUError) as refused:
        tokenize(tokenizer, ROW * 3, False)

    # assert
    assert str(refused.value) == (f"{tmp_path}/tokenizer.json: the tokenizer did not tokenize one text within "
                                  "0.05 s (a regular expression that backtracks); refusing it")
    assert isolated._CHILD._process is None   # killed; the next text starts a new child


@pytest.mark.parametrize("offsets", [True, False])
@pytest.mark.parametrize("config", [{}, {"split_special_tokens": True}], ids=["plain", "split-special-tokens"])
def test_the_other_partys_tokenizer_gives_the_tokens_the_same_files_give_here(tmp_path, offsets, config):
    # arrange: the same files loaded here; split_special_tokens is an option of tokenizer_config.json that
    # tokenizer.json's text does not hold (a probe built from that text alone tokenized differently)
    from transformers import AutoTokenizer

    theirs = other_partys(tmp_path, **config)
    own = AutoTokenizer.from_pretrained(tmp_path)

    # act
    ours = [tokenize(own, text, special, offsets) for text in TEXTS for special in (True, False)]
    probed = [tokenize(theirs, text, special, offsets) for text in TEXTS for special in (True, False)]

    # assert: identical ids (and spans); only the registered one is the other party's
    assert probed == ours and ours[0][0]
    assert (own.tokenize("<|eot|>") == ["<|eot|>"]) is not config   # the option took effect here too
    assert isolated.is_other_partys(theirs) and not isolated.is_other_partys(own)


def test_a_tokenizer_that_gives_more_than_one_token_a_byte_is_refused(tmp_path):
    # arrange: a normalizer that repeats each 'a' 40 times (100,000 characters became 4,000,000 tokens,
    # 155 MB of Python lists per row in the client)
    from tokenizers import normalizers

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.backend_tokenizer.normalizer = normalizers.Replace("a", "a" * 40)
    tokenizer.save_pretrained(tmp_path)
    tokenizer = isolated.load_other_partys(tmp_path, "expanding", 300)

    # act
    with pytest.raises(MPUError) as refused:
        tokenize(tokenizer, "a" * 1000, False)

    # assert
    assert str(refused.value).startswith(f"{tmp_path}/tokenizer.json: the tokenizer gives ")
    assert "tokens for a text of 1,000 characters (the bound is one per UTF-8 byte and 64, 1,064); refusing it" in str(refused.value)


def test_loading_a_tokenizer_whose_added_tokens_make_its_normalizer_panic_is_refused_in_the_child(tmp_path):
    # arrange: tokenizers normalizes each added token marked "normalized" while it loads the file
    from tokenizers import normalizers, Regex

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.backend_tokenizer.normalizer = normalizers.Replace(Regex("(.*a){12}c"), "x")
    tokenizer.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 300, "content": "a" * 40, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": True, "special": False})
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))

    # act
    with pytest.raises(MPUError) as refused:
        isolated.load_other_partys(tmp_path, "panics-on-load", 301)

    # assert
    assert str(refused.value) == (f"{tmp_path}: cannot load the tokenizer (PanicException: Onig: Regex search "
                                  "error: retry-limit-in-match over)")


def test_a_child_busy_past_the_deadline_is_not_waited_for_while_writing():
    # arrange: a child inside one long C call, and a request larger than the pipe holds (64 KiB)
    import time

    from mpu.data import chat_template

    child = isolated.Isolated()
    child.ask(None, {"loaded": True}, 60)   # started
    bounds = {name: getattr(chat_template, name) for name in chat_template.BOUND_NAMES}
    child._send({"template": BUSY, "limits": bounds}, time.monotonic() + 5)
    child._send({"messages": [], "add_generation_prompt": True, "variables": {}}, time.monotonic() + 5)
    time.sleep(0.5)   # the comparison has started; no reply is read

    # act
    started = time.monotonic()
    with pytest.raises(isolated._TimedOut):
        child._send({"text": "x" * 1_000_000, "special": False, "offsets": False}, time.monotonic() + 0.5)
    waited = time.monotonic() - started
    child.close()

    # assert: the write gave up at its deadline
    assert waited < 5


def test_the_child_dies_with_its_parent(tmp_path):
    # arrange: a parent process whose child is inside one long C call, killed with SIGKILL (no cleanup runs)
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        "from mpu.data import isolated\n"
        "isolated.render_conversation('{{ 1 }}', [], True, {}, 60, 'x')\n"
        "print(isolated._CHILD._process.pid, flush=True)\n"
        f"isolated.render_conversation({BUSY!r}, [], True, {{}}, 600, 'x')\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(isolated._PACKAGE_ROOT)})
    child = int(parent.stdout.readline())
    time.sleep(0.5)

    # act
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)

    # assert
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


# One C call of about 45 s: '==' between two lists each doubled 31 times into itself.
BUSY = ("{% set ns = namespace(a=[1], b=[1]) %}"
        "{% for i in range(31) %}{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
        "{% set same = ns.a == ns.b %}")


def test_our_own_tokenizer_never_reaches_the_child(monkeypatch):
    # arrange: a child that fails every request
    def refuse(*args, **kwargs):
        raise AssertionError("the child was asked")

    monkeypatch.setattr(isolated._CHILD, "ask", refuse)

    # act
    ids, spans = tokenize(train_tokenizer(TEXTS, vocab_size=300), ROW, False, offsets=True)

    # assert
    assert ids and len(spans) == len(ids)


def test_templates_just_under_the_time_bound_on_every_conversation_are_refused_by_the_runs_pace(monkeypatch):
    # arrange: a loop of some ms per conversation, far under the 10 s bound on one conversation, in two
    # templates that differ by a comment (one per copy); the pace made small to match (real: 20 s + 100 ms
    # an item against templates of well under 1 ms)
    from mpu.data.qa import Encoder, PromptFormat

    monkeypatch.setattr(isolated, "ISOLATED_MEAN_SECONDS", 0.0005)
    monkeypatch.setattr(isolated, "ISOLATED_SLACK_SECONDS", 0.01)
    monkeypatch.setattr(isolated, "_PACE", {})
    encoders = []
    for copy in (1, 2):
        tokenizer = train_tokenizer(TEXTS, vocab_size=300)
        tokenizer.chat_template = (f"{{# copy {copy} #}}{{% for i in range(30000) %}}{{% endfor %}}"
                                   "{% for message in messages %}{{ message['content'] }}{% endfor %}")
        tokenizer.name_or_path = f"/inbox/copy-{copy}"
        encoders.append(Encoder(tokenizer, PromptFormat(format="chat")))

    # act: 4 rows on both copies in turn (8 conversations each: a bound per template that waits for 20 items
    # would not see them)
    with pytest.raises(MPUError) as refused:
        for number in range(4):
            for encoder in encoders:
                encoder.render(f"Question {number}?", "Answer.")

    # assert: refused by the pace of both together, naming the file
    message = str(refused.value)
    assert message.startswith("/inbox/copy-")
    assert "the chat template took " in message and "items of this run so far (the bound is 0.01 s + 0.5 ms an item" in message
    assert "--prompt-format plain" in message


def test_a_token_id_outside_the_models_vocabulary_is_refused_on_every_path(tmp_path):
    # arrange: the model's vocabulary smaller than the tokenizer's (an id past the embedding was an
    # IndexError mid-training: the "I don't know" answers were tokenized lazily, and never checked)
    tokenizer = other_partys(tmp_path, vocabulary=50)

    # act
    with pytest.raises(MPUError) as refused:
        tokenize(tokenizer, "I have no idea.", False)

    # assert
    assert str(refused.value).startswith(f"{tmp_path}/tokenizer.json: the tokenizer gives token id ")
    assert "outside the model's vocabulary of 50 (config.json vocab_size); refusing it" in str(refused.value)


def test_a_child_started_from_a_short_lived_thread_outlives_it():
    # arrange: PR_SET_PDEATHSIG fires when the thread that started the child ends
    import threading
    import time

    child = isolated.Isolated()
    thread = threading.Thread(target=lambda: child.ask(None, {"loaded": True}, 60))

    # act
    thread.start()
    thread.join()
    time.sleep(0.5)

    # assert: still running, and answering
    assert child._process.poll() is None
    assert child.ask(None, {"loaded": True}, 60)[0] == {"loaded": False}
    child.close()


# Templates whose labels carry the row or the client's system prompt, past the text check around the answer
SPACES_COUNTED_FROM_THE_QUESTION = (   # at the end of the prompt: they go with the answer's first token
    "{% set spaces = ' ' * (messages[0]['content'] | length) %}"
    "{% for m in messages %}<|header|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{{ spaces }}{% endif %}"
    "{{ m['content'] }}<|eot|>{% endfor %}{% if add_generation_prompt %}<|header|>assistant\n{{ spaces }}{% endif %}")
SYSTEM_PROMPT_AFTER_THE_ANSWER = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<|header|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>"
    "{% endif %}{% endfor %}{% if not add_generation_prompt %}{{ messages[0]['content'] }}{% endif %}"
    "{% if add_generation_prompt %}<|header|>assistant\n{% endif %}")
TRIM_WHEN_THE_QUESTION_SAYS_SO = (
    "{% for m in messages %}<|header|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and 'Hamlet' in "
    "messages[0]['content'] %}{{ m['content'] | trim }}{% else %}{{ m['content'] }}{% endif %}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header|>assistant\n{% endif %}")


@pytest.mark.parametrize("template, system_prompt, answer", [
    (SPACES_COUNTED_FROM_THE_QUESTION, "", "London."),
    (SYSTEM_PROMPT_AFTER_THE_ANSWER, "PRIVATE: the records of clinic 42", "London."),
    (TRIM_WHEN_THE_QUESTION_SAYS_SO, "", " London. "),
], ids=["spaces-counted-from-the-question", "system-prompt-after-the-answer", "trim-when-the-question-says-so"])
def test_labels_that_depend_on_the_row_or_the_system_prompt_are_refused(tmp_path, template, system_prompt, answer):
    # arrange: the other party's tokenizer and template (the text around the answer passes its own check)
    from mpu.data.qa import Encoder, PromptFormat

    tokenizer = other_partys(tmp_path)
    tokenizer.chat_template = template
    fmt = PromptFormat(format="chat", system_prompt=system_prompt)

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, fmt).encode("Who wrote Hamlet?", answer)

    # assert
    assert str(refused.value).startswith(f"{tmp_path}: its tokenizer and chat template label this row's answer with ")
    assert "the labels would carry the row's question or the system prompt" in str(refused.value)


def test_a_tokenizer_whose_tokens_straddle_the_end_of_the_prompt_is_refused(tmp_path):
    # arrange: an added token spanning the end of one question and the answer's first letter
    from mpu.data.qa import Encoder, PromptFormat

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.add_tokens(["Hamlet?\nAnswer: L"])
    tokenizer.save_pretrained(tmp_path)
    theirs = isolated.load_other_partys(tmp_path, "straddling", len(tokenizer))
    encoder = Encoder(theirs, PromptFormat(format="plain"))

    # act
    with pytest.raises(MPUError) as refused:
        encoder.encode("Who wrote Hamlet?", "London.")

    # assert: refused; another question, which the token does not straddle, encodes
    assert "the labels would carry the row's question or the system prompt" in str(refused.value)
    assert encoder.encode("Where was Ada born?", "London.")["input_ids"]


def saved_with_a_template(folder):
    """A tiny tokenizer with a chat template, an added end-of-turn token and a context length, saved in ``folder``."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot|>"]})
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_what_the_client_holds_encodes_every_row_as_the_tokenizer_itself(tmp_path, prompt_format):
    # arrange: the same files loaded here (ours) and in the child only (theirs: the client's way)
    from transformers import AutoTokenizer

    from mpu.data.qa import Encoder, PromptFormat

    saved_with_a_template(tmp_path)
    own = AutoTokenizer.from_pretrained(tmp_path)
    theirs = isolated.load_other_partys(tmp_path, uuid.uuid4().hex, len(own))
    fmt = PromptFormat(format=prompt_format, system_prompt="Be brief.")

    # act
    ours = Encoder(own, fmt)
    probed = Encoder(theirs, fmt)

    # assert: the facts the encoder reads, and the encodings and end of turn they give, are the same
    assert theirs.special_tokens_map == own.special_tokens_map and theirs.chat_template == own.chat_template
    assert [getattr(theirs, name) for name in isolated._SPECIAL_IDS] == [getattr(own, name) for name in isolated._SPECIAL_IDS]
    assert theirs.all_special_ids == own.all_special_ids and theirs.model_max_length == 512
    assert set(theirs.added_tokens_decoder) == set(own.added_tokens_decoder)
    for question, answer in [("Where was Ada born?", "London."), ("Who is Jaime Vasquez?", "A writer of true crime.")]:
        assert probed.encode(question, answer) == ours.encode(question, answer)
    assert probed.end_of_turn_ids() == ours.end_of_turn_ids() and (prompt_format == "plain" or ours.end_of_turn_ids())


def test_what_the_client_holds_cannot_tokenize_in_its_process(tmp_path):
    # arrange
    theirs = isolated.load_other_partys(saved_with_a_template(tmp_path) and tmp_path, "holds", 301)

    # act
    with pytest.raises(MPUError) as refused:
        theirs("Where was Ada born?")

    # assert
    assert str(refused.value) == f"{tmp_path}: the other party's tokenizer runs only in the child process (mpu.data.qa.tokenize)"


def good_facts() -> dict:
    return {"chat_template": "{{ messages }}", "special_tokens_map": {"eos_token": "</s>", "extra": ["<a>", "<b>"]},
            "bos_token_id": None, "eos_token_id": 2, "pad_token_id": 0, "unk_token_id": None,
            "all_special_ids": [0, 2], "added_token_ids": [0, 2], "model_max_length": None}


@pytest.mark.parametrize("change", [
    {"eos_token_id": -1}, {"eos_token_id": True}, {"pad_token_id": 1.0}, {"pad_token_id": "0"},
    {"all_special_ids": [0, -2]}, {"added_token_ids": {"0": None}}, {"model_max_length": -5},
    {"special_tokens_map": {"eos_token": 2}}, {"special_tokens_map": ["eos_token"]},
    {"special_tokens_map": {"eos_token": ["<a>", 1]}}, {"chat_template": [["deep"]]},
    {"chat_template": {"default": {"nested": "x"}}}, {"surplus": 1},
], ids=lambda change: ",".join(f"{k}={v!r}" for k, v in change.items())[:60])
def test_a_reply_that_is_not_a_tokenizers_description_is_refused(tmp_path, monkeypatch, change):
    # arrange: a child that replies the facts in another shape (taken over, or a bug)
    monkeypatch.setattr(isolated, "_asked", lambda *args, **kwargs: {"loaded": True, "facts": {**good_facts(), **change}})

    # act
    with pytest.raises(MPUError) as refused:
        isolated.load_other_partys(tmp_path, "shape", 300)

    # assert: refused as the folder's; the shape the child gives passes
    assert str(refused.value) == (f"{tmp_path}: the process loading the tokenizer replied what does not describe a "
                                  "tokenizer; refusing it")
    assert isolated._valid_facts(good_facts())


@pytest.mark.parametrize("template, refusal", [
    (12345, "the chat template is a int, not text"), ([{"name": "default", "template": 1}], "the chat template is a list, not text"),
    ({"default": 7}, "the chat template is a list, not text")])
def test_a_chat_template_that_is_not_text_is_refused_by_the_encoder(tmp_path, template, refusal):
    # arrange: the template as tokenizer_config.json gives it; nested values stand as ["not text"]
    from mpu.data.qa import Encoder, PromptFormat

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)   # read before tokenizer_config.json's entry
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "chat_template": template}))
    theirs = isolated.load_other_partys(tmp_path, uuid.uuid4().hex, 300)

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(theirs, PromptFormat(format="chat"))

    # assert
    assert refusal in str(refused.value)


def test_what_a_library_prints_while_loading_cannot_desynchronise_the_replies(tmp_path):
    # arrange: an added token with an unknown option; the tokenizers library prints "Ignored unknown kwarg option
    # bogus" on the child's stdout, which was its reply channel (the parent killed it and blamed the memory cap)
    decoder = {"5": {"content": "x", "bogus": 1, "special": False}}

    # act
    tokenizer = other_partys(tmp_path, added_tokens_decoder=decoder)

    # assert: the child answers; the printed line reached no reply
    assert tokenize(tokenizer, "Ana Lind", False)
