"""The other party's tokenizer runs each text in the child process first: a regular expression that
panics (onig's retry limit) or backtracks for long is refused there, naming the file, and never runs here;
an ordinary tokenizer gives the same tokens as one of our own."""

from __future__ import annotations

import pytest

import mpu.data.qa as qa
from mpu.data import isolated
from mpu.data.qa import tokenize
from mpu.data.tokenizer import train_tokenizer
from mpu.errors import MPUError

TEXTS = ["The author's full name is Jaime Vasquez, a writer of true crime born in 1958.",
         "Question: Where was Ada born? Answer: London."] * 4
ROW = TEXTS[0]


def other_partys(pre_tokenizer_pattern: str | None = None):
    """A tiny fast tokenizer registered as the other party's, with a Split pre-tokenizer of that pattern."""
    from tokenizers import Regex, pre_tokenizers

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    if pre_tokenizer_pattern is not None:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pre_tokenizer_pattern), "isolated")
    tokenizer.name_or_path = "/inbox/copy-1"
    isolated.mark_other_partys(tokenizer)
    return tokenizer


def test_a_tokenizer_regex_that_panics_is_refused_in_the_child_and_never_run_here(capfd):
    # arrange: backtracking past onig's retry limit: a Rust panic (a BaseException) with a backtrace on stderr
    tokenizer = other_partys(r"(?:.|.){1,25}(?=\d{5})")

    # act
    with pytest.raises(MPUError) as refused:
        tokenize(tokenizer, ROW, False)

    # assert: an MPUError naming the file and the reason; no panic here (nothing on this process's stderr)
    assert str(refused.value).startswith("/inbox/copy-1/tokenizer.json: the tokenizer fails on this run's text "
                                         "(PanicException: Onig: Regex search error: retry-limit-in-match over")
    assert "panicked" not in capfd.readouterr().err


def test_a_tokenizer_regex_that_backtracks_for_long_is_killed_at_the_time_bound(monkeypatch):
    # arrange: just under the retry limit at each start, about 0.6 s on this text on a 2-core machine
    monkeypatch.setattr(qa, "TOKENIZER_SECONDS", 0.05)
    tokenizer = other_partys(r"(?:\w*\s?){1,13}\d{5}")

    # act
    with pytest.raises(MPUError) as refused:
        tokenize(tokenizer, ROW * 3, False)

    # assert
    assert str(refused.value) == ("/inbox/copy-1/tokenizer.json: the tokenizer did not tokenize one text within "
                                  "0.05 s (a regular expression that backtracks); refusing it")
    assert isolated._CHILD._process is None   # killed; the next text starts a new child


@pytest.mark.parametrize("offsets", [True, False])
def test_the_other_partys_tokenizer_gives_the_tokens_our_own_copy_gives(offsets):
    # arrange: the same tokenizer twice (training is deterministic), one registered as the other party's
    own, theirs = train_tokenizer(TEXTS, vocab_size=300), other_partys()

    # act
    ours = [tokenize(own, text, special, offsets) for text in TEXTS for special in (True, False)]
    probed = [tokenize(theirs, text, special, offsets) for text in TEXTS for special in (True, False)]

    # assert: identical ids (and spans); only the registered one is the other party's
    assert probed == ours and ours[0][0]
    assert isolated.is_other_partys(theirs) and not isolated.is_other_partys(own)


def test_our_own_tokenizer_never_reaches_the_child(monkeypatch):
    # arrange: a child that fails every request
    def refuse(*args, **kwargs):
        raise AssertionError("the child was asked")

    monkeypatch.setattr(isolated._CHILD, "ask", refuse)

    # act
    ids, spans = tokenize(train_tokenizer(TEXTS, vocab_size=300), ROW, False, offsets=True)

    # assert
    assert ids and len(spans) == len(ids)
