"""Errors the CLI prints: text from the other party inside them is escaped, not interpreted."""

from __future__ import annotations

from hypothesis import given, strategies as st

from mpu.errors import InputError, MPUError, printable


def test_control_and_formatting_characters_are_written_as_escapes():
    assert printable("update-1\x1b]0;owned\x07") == "update-1\\x1b]0;owned\\x07"
    assert printable("a\rb\nc\td") == "a\\rb\\nc\\td"
    assert printable("name\u202egnp.exe") == "name\\u202egnp.exe"   # right-to-left override
    assert printable("bad \ud800") == "bad \\ud800"                 # lone surrogate: cannot be encoded
    assert printable("Größe ok, 東京, emoji \U0001F600") == "Größe ok, 東京, emoji \U0001F600"


@given(st.text())
def test_the_result_is_printable_and_printable_text_is_unchanged(text):
    shown = printable(text)
    assert shown.isprintable()
    assert (shown == text) == text.isprintable()


def test_an_error_quoting_a_hostile_name_prints_safely():
    error = InputError("/inbox/copy-1\x1b[2J", "holds settings.json\rforged line")
    assert str(error) == "/inbox/copy-1\\x1b[2J: holds settings.json\\rforged line"
    assert error.path == "/inbox/copy-1\x1b[2J"   # the program still sees the real path
    assert str(MPUError("template error: \x1b[31mred")) == "template error: \\x1b[31mred"
