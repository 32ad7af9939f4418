"""chat_template.template_source: which file an error about a chat template names."""

from __future__ import annotations

import os

from mpu.data.chat_template import template_source
from mpu.data.isolated import _OTHER_PARTYS, mark_other_partys

TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


class Tokenizer:
    """What template_source reads of a tokenizer (a plain object: the registry of the other party's
    tokenizers holds weak references)."""

    def __init__(self, name_or_path: str, chat_template: str):
        self.name_or_path, self.chat_template = name_or_path, chat_template


def test_the_file_holding_the_template_is_named(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(TEMPLATE.replace("\n", "\r\n"))   # read as transformers reads it
    tokenizer = Tokenizer(name_or_path=str(tmp_path), chat_template=TEMPLATE)
    assert template_source(tokenizer) == f"{tmp_path}/chat_template.jinja"
    (tmp_path / "chat_template.jinja").write_text(TEMPLATE + "more")
    assert template_source(tokenizer) == f"{tmp_path}/tokenizer_config.json (chat_template)"


def test_the_other_partys_files_are_read_where_they_were_loaded_from_and_shown_as_received(tmp_path):
    """A client's private copy: the files are read there, the message names the inbox's folder."""
    received, private = tmp_path / "inbox" / "copy-1", tmp_path / "private" / "copy-1"
    received.mkdir(parents=True)
    private.mkdir(parents=True)
    os.mkfifo(received / "chat_template.jinja")   # what the server put in the inbox after the checks: never opened
    (private / "chat_template.jinja").write_text(TEMPLATE)
    tokenizer = Tokenizer(name_or_path=str(received), chat_template=TEMPLATE)
    mark_other_partys(tokenizer, private, "key", 100)
    try:
        assert template_source(tokenizer) == f"{received}/chat_template.jinja"
    finally:
        _OTHER_PARTYS.pop(tokenizer)


def test_a_fifo_or_a_link_in_place_of_the_template_file_is_not_followed(tmp_path):
    (tmp_path / "elsewhere.jinja").write_text(TEMPLATE)
    (tmp_path / "chat_template.jinja").symlink_to(tmp_path / "elsewhere.jinja")
    tokenizer = Tokenizer(name_or_path=str(tmp_path), chat_template=TEMPLATE)
    assert template_source(tokenizer) == f"{tmp_path}/tokenizer_config.json (chat_template)"
    (tmp_path / "chat_template.jinja").unlink()
    os.mkfifo(tmp_path / "chat_template.jinja")   # opening it for reading would wait for a writer forever
    assert template_source(tokenizer) == f"{tmp_path}/tokenizer_config.json (chat_template)"
