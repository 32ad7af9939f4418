"""The one encoder: whole conversations through the template with pinned arguments, labels exactly as
rendered, the plain format, the length policy, and the shipped per-model formats."""

from __future__ import annotations

import datetime
import json

import pytest

from mpu.data import chat_template, isolated
from mpu.data.qa import Encoder, LengthPolicy, PromptFormat, encode_qa, load_qa_rows
from mpu.data.templates import MODEL_FORMATS, resolve_format
from mpu.errors import MPUError

TEXTS = ["Who wrote Hamlet? William Shakespeare wrote Hamlet.", "Question: Where was Ada born? Answer: London.",
         "Today Date: 10 Apr 2025. Cutting Knowledge Date: December 2023. You are a helpful assistant."] * 4

# The structure of the Llama-3.1/3.2 Instruct templates: a system header with today's date (from
# date_string when given, else strftime_now), then header-delimited turns ending in <|eot|>.
LLAMA3_STYLE = (
    "{{ bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "<|header|>system\n\nCutting Knowledge Date: December 2023\nToday Date: {{ date_string }}\n\n{{ system }}<|eot|>"
    "{%- for message in messages %}<|header|>{{ message['role'] }}\n\n{{ message['content'] }}<|eot|>{% endfor %}"
    "{%- if add_generation_prompt %}<|header|>assistant\n\n{% endif %}"
)
# A template that calls strftime_now itself (no date_string variable to set).
CLOCK_ONLY = (
    "{{ bos_token }}Today is {{ strftime_now('%Y-%m-%d') }}.\n"
    "{%- for message in messages %}<|header|>{{ message['role'] }}\n{{ message['content'] }}<|eot|>{% endfor %}"
    "{%- if add_generation_prompt %}<|header|>assistant\n{% endif %}"
)
# An assistant turn that ends with an end-of-turn marker and a newline, not with EOS.
END_AND_NEWLINE = (
    "{%- for message in messages %}<|header|>{{ message['role'] }}\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|header|>assistant\n{% endif %}"
)


def make_tokenizer(template: str | None = None):
    from mpu.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TEXTS, vocab_size=320)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|header|>", "<|eot|>", "<|end|>"]})
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def labelled(example):
    return [token for token, label in zip(example["input_ids"], example["labels"]) if label != -100]


def on_day(monkeypatch, day: datetime.datetime):
    import transformers.utils.chat_template_utils as ctu

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(ctu, "datetime", Clock)


@pytest.mark.parametrize("template", [LLAMA3_STYLE, CLOCK_ONLY], ids=["date_string", "strftime_now"])
def test_the_pinned_date_gives_the_same_ids_on_two_days(monkeypatch, template):
    tokenizer = make_tokenizer(template)
    messages = [{"role": "user", "content": "Who wrote Hamlet?"}]
    ids, unpinned = [], []
    for day in (datetime.datetime(2025, 1, 2), datetime.datetime(2026, 12, 4)):
        on_day(monkeypatch, day)
        unpinned.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        encoder = Encoder(tokenizer, PromptFormat(), LengthPolicy(512))   # a fresh encoder: no cache
        ids.append(encoder.encode("Who wrote Hamlet?", "William Shakespeare."))
    assert unpinned[0] != unpinned[1]          # the template does print the day it runs on
    assert ids[0] == ids[1]                    # the encoder does not
    text = tokenizer.decode(ids[0]["input_ids"])
    assert ("10 Apr 2025" in text) if template is LLAMA3_STYLE else ("2025-04-10" in text)


def test_the_system_prompt_and_date_are_template_arguments():
    tokenizer = make_tokenizer(LLAMA3_STYLE)
    fmt = resolve_format("auto", model_name="open-unlearning/tofu_Llama-3.2-1B-Instruct_full")
    prompt, full = Encoder(tokenizer, fmt).render("Who wrote Hamlet?", "Shakespeare.")
    assert "Today Date: 10 Apr 2025\n\nYou are a helpful assistant.<|eot|>" in prompt
    assert full == prompt + "Shakespeare.<|eot|>"
    other = Encoder(tokenizer, PromptFormat(system_prompt="Be brief.", date_string="1 Jan 2024")).render("Q?")[0]
    assert "Today Date: 1 Jan 2024\n\nBe brief.<|eot|>" in other


def test_an_end_of_turn_marker_and_newline_are_trained_and_scored_not_eos():
    tokenizer = make_tokenizer(END_AND_NEWLINE)
    encoder = Encoder(tokenizer, PromptFormat(), LengthPolicy(512))
    example = encoder.encode("Who wrote Hamlet?", "William Shakespeare.")
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    labels = labelled(example)
    assert tokenizer.decode(labels) == "William Shakespeare.<|end|>\n"
    assert end in labels and tokenizer.eos_token_id not in labels
    assert example["tail"] == len(labels) - len(tokenizer("William Shakespeare.", add_special_tokens=False)["input_ids"])
    assert encoder.end_of_turn_ids() == [end]   # generation stops there
    # the ids are the template's own tokenisation of the conversation
    whole = tokenizer.apply_chat_template([{"role": "user", "content": "Who wrote Hamlet?"},
                                           {"role": "assistant", "content": "William Shakespeare."}], tokenize=False)
    assert example["input_ids"] == tokenizer(whole, add_special_tokens=False)["input_ids"]


def test_the_builtin_template_and_the_encoder_agree():
    from mpu.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TEXTS, vocab_size=320)
    example = encode_qa(tokenizer, "Who wrote Hamlet?", "William Shakespeare wrote Hamlet.")
    conversation = [{"role": "user", "content": "Who wrote Hamlet?"},
                    {"role": "assistant", "content": "William Shakespeare wrote Hamlet."}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert rendered.endswith("Hamlet.<|eos|>")   # the turn ends at EOS: what generation stops at
    assert example["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(labelled(example)) == "William Shakespeare wrote Hamlet.<|eos|>"
    prompt = Encoder(tokenizer).prompt_ids("Who wrote Hamlet?")
    assert example["input_ids"][:len(prompt)] == prompt and example["labels"][len(prompt) - 1] == -100
    assert example["labels"][len(prompt)] != -100


def test_the_plain_format_needs_no_template_and_splits_before_the_answers_space():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(MPUError, match="has no chat template: choose the prompt format explicitly"):
        encode_qa(tokenizer, "Who wrote Hamlet?", "Shakespeare.")
    encoder = Encoder(tokenizer, resolve_format("plain"))
    example = encoder.encode("Who wrote Hamlet?", "William Shakespeare.")
    assert tokenizer.decode(example["input_ids"]) == "Question: Who wrote Hamlet?\nAnswer: William Shakespeare.<|eos|>"
    assert tokenizer.decode(labelled(example)) == " William Shakespeare.<|eos|>"
    assert example["input_ids"][-1] == tokenizer.eos_token_id and example["tail"] == 1
    prompt = encoder.prompt_ids("Who wrote Hamlet?")   # "...Answer:" : the space goes with the answer
    assert example["input_ids"][:len(prompt)] == prompt and example["labels"][len(prompt)] != -100


def test_shipped_model_formats_match_openunlearning():
    llama3 = resolve_format("auto", model_name="meta-llama/Llama-3.1-8B-Instruct")
    assert (llama3.format, llama3.system_prompt, llama3.date_string) == ("chat", "You are a helpful assistant.", "10 Apr 2025")
    assert resolve_format("Llama-3.2-3B-Instruct") == llama3
    llama2 = resolve_format("auto", model_name="locuslab/tofu_ft_llama2-7b")
    assert (llama2.format, llama2.user_start, llama2.user_end, llama2.assistant_start) == ("plain", "[INST] ", " [/INST]", "")
    phi = resolve_format("auto", model_name="/models/tofu_ft_phi-1.5")
    assert (phi.format, phi.user_start, phi.user_end, phi.assistant_start) == ("plain", "Question: ", "\n", "Answer: ")
    assert resolve_format("auto", model_name="/some/tiny-model") == PromptFormat()
    assert resolve_format("auto", system_prompt="", model_name="Llama-3.2-1B-Instruct").system_prompt is None
    assert set(MODEL_FORMATS) >= {"Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct",
                                  "Llama-2-7b-chat", "phi-1_5"}
    with pytest.raises(MPUError, match="unknown prompt format 'Llama-9'"):
        resolve_format("Llama-9")


def test_too_long_rows_are_refused_or_truncated_and_counted(tmp_path):
    tokenizer = make_tokenizer()
    path = tmp_path / "forget.json"
    path.write_text(json.dumps([{"question": "Who?", "answer": "Shakespeare."},
                                {"question": "Who wrote Hamlet?", "answer": " ".join(["William Shakespeare wrote Hamlet."] * 8)}]))
    rows = load_qa_rows(path)
    assert rows[1].where == f"{path} line 1" or rows[1].where.startswith(str(path))
    strict = Encoder(tokenizer, PromptFormat(), LengthPolicy(40))
    strict.encode(rows[0]["question"], rows[0]["answer"])
    with pytest.raises(MPUError, match=r"exceed max_length=40; raise --max-length, or pass --truncate"):
        strict.encode(rows[1]["question"], rows[1]["answer"], rows[1].where)
    full = len(Encoder(tokenizer, PromptFormat(), LengthPolicy(4096)).encode(rows[1]["question"], rows[1]["answer"])["input_ids"])
    cutting = Encoder(tokenizer, PromptFormat(), LengthPolicy(40, truncate=True))
    example = cutting.encode(rows[1]["question"], rows[1]["answer"])
    assert len(example["input_ids"]) == 40 and example["labels"][-1] != -100 and example["tail"] == 0
    assert cutting.truncated == {(rows[1]["question"], rows[1]["answer"]): full - 40}
    assert cutting.record()["max_length"] == 40 and cutting.record()["truncate"] is True


def test_rows_remember_their_file_and_line(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text('{"question": "q1", "answer": "a1"}\n\n{"question": "q2", "answer": "a2"}\n')
    rows = load_qa_rows(path)
    assert [row.where for row in rows] == [f"{path} line 1", f"{path} line 3"]
    assert rows == [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(rows[1])).where == copy.deepcopy(rows[1]).where == f"{path} line 3"


def test_a_model_directory_records_its_format(tmp_path):
    from mpu.data.templates import recorded_format

    assert recorded_format(tmp_path) is None
    fmt = resolve_format("Llama-3.2-1B-Instruct", date_string="1 Jan 2024")
    (tmp_path / "unlearn_summary.json").write_text(json.dumps({"encoding": {"prompt_format": fmt.record()}}))
    assert recorded_format(tmp_path) == fmt
    (tmp_path / "unlearn_summary.json").write_text(json.dumps({"encoding": {"prompt_format": {"format": "odd"}}}))
    with pytest.raises(MPUError, match="unlearn_summary.json: encoding.prompt_format: unknown prompt format 'odd'"):
        recorded_format(tmp_path)


def test_the_end_of_turn_is_found_when_the_template_trims_the_answer():
    tokenizer = make_tokenizer(END_AND_NEWLINE.replace("{{ message['content'] }}", "{{ message['content'] | trim }}"))
    example = Encoder(tokenizer).encode("Who wrote Hamlet?", "  William Shakespeare. ")
    assert tokenizer.decode(labelled(example)) == "William Shakespeare.<|end|>\n"
    assert example["tail"] == 2   # <|end|> and the newline


def test_a_chat_template_with_runaway_loops_is_refused_in_bounded_time(monkeypatch):
    # arrange: a template whose nested loops stay under Jinja's per-loop cap but would render for hours
    import time

    import mpu.data.qa as qa

    hostile = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
               "{{ messages[0]['content'] }}")
    tokenizer = make_tokenizer(hostile)
    tokenizer.name_or_path = "/inbox/copy-1"
    monkeypatch.setattr(qa, "CHAT_TEMPLATE_SECONDS", 0.5)
    encoder = Encoder(tokenizer, PromptFormat(format="chat"))

    # act
    started = time.perf_counter()
    with pytest.raises(MPUError) as refused:
        encoder.render("Who wrote Hamlet?", "Shakespeare")
    elapsed = time.perf_counter() - started

    # assert: refused within the bound, naming the file and the fix; a normal template still renders
    assert elapsed < 5
    assert "/inbox/copy-1/tokenizer_config.json" in str(refused.value)
    assert "--prompt-format plain" in str(refused.value)
    prompt, full = Encoder(make_tokenizer(), PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")
    assert full.startswith(prompt) and "Shakespeare" in full


# Chat templates that build gigabytes in one operation or a few (Jinja's sandbox caps a loop at 100,000
# iterations but bounds no size), and how the client refuses each; rendered unbounded, each takes gigabytes
# (or hours, for the power).
INFLATING = {
    "repeat": ("{{ 'x ' * 1000000000 }}", "in one operation ('*')"),
    "repeat-a-power": ("{{ 'x ' * 10 ** 10 }}", "in one operation ('*')"),
    "power": ("{% set p = 7 ** (10 ** 9) %}", "in one operation ('**')"),
    "list-of-references": ("{{ ['x' * 100000] * 100000 }}", "in one operation ('*')"),
    "concat-doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s }}", "in one operation ('~')"),
    "concat-chain": ("{% set s = 'abcd' %}" + "{% set s = s ~ s %}" * 40 + "{{ s }}", "in one operation ('~')"),
    "plus-doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s }}", "in one operation ('+')"),
    "center-filter": ("{{ 'x' | center(1000000000) }}", "gives a number above 1,000,000 (the center filter)"),
    "center-method": ("{{ 'x'.center(1000000000) }}", "gives a number above 1,000,000 (calling center)"),
    "format-filter": ("{{ '%1000000000s' | format('x') }}", "in one operation (the format filter)"),
    "percent": ("{{ '%1000000000s' % 'x' }}", "in one operation ('%')"),
    "str-format": ("{{ '{:>1000000000}'.format('x') }}", "in one operation (calling format)"),
    "indent": (r"{{ ('\n' * 100000) | indent(100000) }}", "in one operation (the indent filter)"),
    "wordwrap": ("{{ ('x' * 100000) | wordwrap(1, wrapstring='y' * 100000) }}",
                 "in one operation (the wordwrap filter)"),
    "join-filter": ("{{ range(100000) | join('x' * 100000) }}", "in one operation (the join filter)"),
    "join-method": ("{{ ('x' * 100000).join(range(100000) | map('string')) }}", "in one operation (calling join)"),
    "replace": ("{{ ('x' * 100000) | replace('x', 'y' * 100000) }}", "in one operation (the replace filter)"),
    "tojson-indent": ("{{ range(100000) | list | tojson(indent=100000) }}", "in one operation (the tojson filter)"),
    "expandtabs": (r"{{ ('\t' * 100000).expandtabs(100000) }}", "in one operation (calling expandtabs)"),
    "translate": ("{{ ('x' * 100000).translate({120: 'y' * 100000}) }}", "in one operation (calling translate)"),
    "nested-width-string": ("{{ '{:{}}'.format('x', '10000000') }}", "in one operation (calling format)"),
    "translate-list": ("{{ ('x' * 20).translate(['y' * 100000]) }}", "in one operation (calling translate)"),
    "lipsum": ("{{ lipsum(1000000, max=1000) }}", "in one operation (calling generate_lorem_ipsum)"),
    "output-of-references": ("{% set s = 'x' * 900000 %}{{ [" + "s, " * 1000 + "] }}",
                             "built a value of more than 1,000,000 characters (an output)"),
    "string-of-references": ("{% set s = 'x' * 900000 %}{{ [" + "s, " * 1000 + "] | string | length }}",
                             "in one operation (the string filter)"),
    "error-of-references": ("{% set s = 'x' * 900000 %}{{ raise_exception([" + "s, " * 1000 + "]) }}",
                            "in one operation (calling raise_exception)"),
    "macro-buffer": ("{% macro m() %}{% for i in range(100000) %}{% for j in range(100000) %}" + "x" * 1000
                     + "{% endfor %}{% endfor %}{% endmacro %}{{ m() | length }}", "characters in all"),
    "kept-values": ("".join("{%% set ns%d = namespace(v='%d' * 900000) %%}" % (i, i % 10) for i in range(1000)),
                    "characters in all"),
    "constant-padding": ("".join("{%% set c%d = '%d' | center(999999) %%}" % (i, i % 10) for i in range(1000)),
                         "characters in all"),
}


@pytest.mark.parametrize("inflating, refusal", list(INFLATING.values()), ids=list(INFLATING))
def test_a_chat_template_that_inflates_what_it_builds_is_refused_before_it_builds_it(inflating, refusal):
    # arrange: a copy's template that builds gigabytes before it renders the conversation

    tokenizer = make_tokenizer(inflating + "{% for message in messages %}{{ message['content'] }}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"
    encoder = Encoder(tokenizer, PromptFormat(), LengthPolicy(512))

    # act
    with pytest.raises(MPUError) as refused:
        encoder.encode("Who wrote Hamlet?", "Shakespeare.")

    # assert: refused by the size bounds (not the time bound), naming the file, the size and the fix
    message = str(refused.value)
    assert message.startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template ")
    assert refusal in message and "refusing it" in message and "--prompt-format plain" in message
    assert f"{chat_template.CHAT_TEMPLATE_MAX_CHARS:,}" in message or f"{chat_template.CHAT_TEMPLATE_BUDGET_CHARS:,}" in message


def test_the_rendered_text_is_bounded_before_it_is_tokenized():
    # arrange: every operation within the bounds, but the text 2.4 times the most one conversation may take

    tokenizer = make_tokenizer("{% for i in range(4) %}{{ 'x ' * 300000 }}{% endfor %}"
                               "{% for message in messages %}{{ message['content'] }}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"
    encoder = Encoder(tokenizer, PromptFormat(), LengthPolicy(512, truncate=True))

    # act
    with pytest.raises(MPUError) as refused:
        encoder.encode("Who wrote Hamlet?", "Shakespeare.")

    # assert: refused for its size, not tokenized and then truncated or refused for its length
    message = str(refused.value)
    assert message.startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template renders "
                              "2,400,017 characters for one conversation; the limit is ")
    assert f"the limit is {chat_template.CHAT_TEMPLATE_MAX_CHARS:,}; refusing it" in message


# Most of what real chat templates use: macros, namespaces, loop controls, transformers' generation tag,
# tojson, raise_exception, the padding and joining filters, formatting, operators, set and filter blocks.
FEATURES = (
    "{%- macro turn(message) -%}{{ message['role'] | upper }}: {{ message['content'] | trim }}{%- endmacro -%}\n"
    "{%- set ns = namespace(count=0) -%}\n"
    "{%- if messages | length == 0 %}{{ raise_exception('no messages') }}{% endif -%}\n"
    "{{ bos_token }}{{ '=' * 3 }} {{ '%s/%d' % (messages[0]['role'], 2 ** 10) }} {{ '{}-{}'.format('a', 7 % 3) }} "
    "{{ dict(a=[1, 2] + [3]) | tojson }}\n"
    "{%- for message in messages %}\n"
    "  {%- if loop.index0 > 5 %}{% break %}{% endif %}\n"
    "  {%- set ns.count = ns.count + 1 %}\n"
    "<|header|>{{ message['role'] }}\n"
    "{% generation %}{{ turn(message) ~ ' #' ~ loop.index ~ '/' ~ ns.count }}{% endgeneration %}\n"
    "{{ message | tojson(indent=2) }}\n"
    "{{ message['content'] | wordwrap(12) | indent(2) }}|{{ message['content'] | replace(' ', '_') }}|"
    "{{ message['content'].split(' ') | join('|') }}|{{ '%-6s|' | format(message['role']) }}|"
    "{{ message['content'] | center(40) }}|{{ message['content'] | truncate(12) }}|{{ message['content'] | urlize }}|"
    "{{ [message['role']] | pprint }}\n"
    "{%- set footer %}{{ 'ab' * 2 }} {{ message['content'] | length }}{% endset %}{{ footer }}\n"
    "{% filter lower %}END {{ eos_token }}{% endfilter %}<|eot|>\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}<|header|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("template", [LLAMA3_STYLE, CLOCK_ONLY, END_AND_NEWLINE, FEATURES],
                         ids=["llama3-style", "strftime_now", "end-and-newline", "features"])
def test_real_templates_render_as_transformers_renders_them_and_inflating_them_is_refused(monkeypatch, template):
    # arrange: transformers' clock on the pinned date (its strftime_now then prints what the pinned one
    # prints); the same template, and the same with one inflating line in front
    on_day(monkeypatch, datetime.datetime(2025, 4, 10))
    fmt = PromptFormat(system_prompt="You are a helpful assistant.")
    tokenizer = make_tokenizer(template)
    inflated = make_tokenizer("{{ '=' * 1000000000 }}" + template)
    question, answer = "Who wrote Hamlet? See https://example.org/hamlet", "William Shakespeare wrote it."
    messages = [{"role": "system", "content": fmt.system_prompt}, {"role": "user", "content": question}]

    # act
    prompt, full = Encoder(tokenizer, fmt).render(question, answer)
    with pytest.raises(MPUError) as refused:
        Encoder(inflated, fmt).render(question, answer)

    # assert: byte for byte transformers' text (what OpenUnlearning encodes), and the bound still applies
    assert prompt == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   date_string=fmt.date_string)
    assert full == tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}],
                                                 tokenize=False, date_string=fmt.date_string)
    assert "would build about 1,000,000,000 characters in one operation ('*')" in str(refused.value)


def test_errors_name_the_file_the_chat_template_came_from(tmp_path):
    # arrange: a template that refuses every conversation, saved as transformers saves it
    # (chat_template.jinja), and only as the chat_template entry of tokenizer_config.json
    from transformers import AutoTokenizer

    refusing = "{{ raise_exception('not this conversation') }}"
    in_jinja, in_config = tmp_path / "jinja", tmp_path / "config"
    for folder in (in_jinja, in_config):
        make_tokenizer(refusing).save_pretrained(folder)
    (in_config / "chat_template.jinja").unlink()
    config = json.loads((in_config / "tokenizer_config.json").read_text())
    (in_config / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": refusing}))

    # act
    messages = []
    for folder in (in_jinja, in_config):
        with pytest.raises(MPUError) as refused:
            Encoder(AutoTokenizer.from_pretrained(folder)).render("Who wrote Hamlet?", "Shakespeare.")
        messages.append(str(refused.value))

    # assert
    assert messages[0].startswith(f"{in_jinja}/chat_template.jinja: the chat template cannot render this "
                                  "conversation (TemplateError: not this conversation)")
    assert messages[1].startswith(f"{in_config}/tokenizer_config.json (chat_template): the chat template cannot")


def test_a_chat_template_that_swallows_exceptions_is_still_refused_at_the_time_bound(monkeypatch):
    # arrange: Jinja's `sequence` test runs len(loop), which reads the loop's iterator (template code, slow
    # here) inside `except Exception`; then the template runs loops after it
    import mpu.data.qa as qa

    hostile = ("{% set L = [none] * 50000 %}{% for x in range(100) | map('default', L) %}"
               "{% if loop.first and loop is sequence %}{% endif %}{% endfor %}"
               "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"
               "{{ messages[0]['content'] }}")
    tokenizer = make_tokenizer(hostile)
    tokenizer.name_or_path = "/inbox/copy-1"
    monkeypatch.setattr(qa, "CHAT_TEMPLATE_SECONDS", 0.2)

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")

    # assert: refused by the time bound, naming the file
    assert str(refused.value).startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template "
                                         "did not render one conversation within 0.2 s")


# Operations no sandbox hook sees and no signal can interrupt (one C-level call each): what only the renderer
# process's wall-clock kill and memory cap bound.
SELF_REFERENTIAL_COMPARISON = (   # two lists each doubled 31 times into itself: '==' walks 2^31 leaves in one
    "{% set ns = namespace(a=[1], b=[1]) %}"   # C call, about 45 s here (finite, so that a regression fails)
    "{% for i in range(31) %}{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
    "{% set same = ns.a == ns.b %}{{ messages[0]['content'] }}")
SLICES_IN_A_LITERAL = (           # 120 copies of a 900,000-character string (108 MB), built outside every hook
    "{% set s = 'x' * 900000 %}{% set kept = [" + ", ".join(f"s[{i}:]" for i in range(1, 121)) + "] %}"
    "{{ messages[0]['content'] }}")


def test_a_chat_template_busy_in_one_uninterruptible_operation_is_killed_at_the_time_bound(monkeypatch):
    # arrange
    import os

    import mpu.data.qa as qa

    tokenizer = make_tokenizer(SELF_REFERENTIAL_COMPARISON)
    tokenizer.name_or_path = "/inbox/copy-1"
    monkeypatch.setattr(qa, "CHAT_TEMPLATE_SECONDS", 0.5)

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")
    busy = isolated._CHILD._process

    # assert: refused naming the file; the busy renderer is gone; the next conversation renders in a new one
    assert str(refused.value).startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template "
                                         "did not render one conversation within 0.5 s")
    assert busy is None
    prompt, full = Encoder(make_tokenizer(), PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")
    assert full.startswith(prompt) and "Shakespeare" in full
    assert isolated._CHILD._process.pid != os.getpid()


def test_a_chat_template_that_builds_out_of_sight_of_the_hooks_is_stopped_at_the_memory_cap(monkeypatch):
    # arrange: a cap of 64 MB, which the template's 108 MB of slices pass without any hook seeing them
    import resource

    monkeypatch.setattr(isolated, "ISOLATED_MEMORY_BYTES", 64 * 2**20)
    tokenizer = make_tokenizer(SLICES_IN_A_LITERAL)
    tokenizer.name_or_path = "/inbox/copy-1"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")

    # assert: refused naming the file and the cap, built in the renderer, not in this process
    message = str(refused.value)
    assert message.startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template ")
    assert "0.0625 GiB" in message and "--prompt-format plain" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 30 * 1024   # KB: far below 108 MB


def test_the_time_bound_holds_outside_the_main_thread(monkeypatch):
    # arrange: the old in-process bound was a SIGALRM, which only the main thread can take
    import threading

    import mpu.data.qa as qa

    tokenizer = make_tokenizer("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"
    monkeypatch.setattr(qa, "CHAT_TEMPLATE_SECONDS", 0.3)
    errors = []

    def encode():
        try:
            Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")
        except MPUError as err:
            errors.append(str(err))

    # act
    worker = threading.Thread(target=encode, daemon=True)
    worker.start()
    worker.join(timeout=60)

    # assert
    assert not worker.is_alive()
    assert len(errors) == 1 and "did not render one conversation within 0.3 s" in errors[0]


@pytest.mark.parametrize("unprintable", [
    "{{ raise_exception([10 ** 5000]) }}",   # str() of the int: ValueError (more than 4300 digits)
    "{% set ns = namespace(d=0) %}{% for i in range(5000) %}{% set ns.d = [ns.d] %}{% endfor %}"
    "{{ raise_exception(ns.d) }}",          # str() of the list: RecursionError
], ids=["huge-int", "deep-list"])
def test_an_error_whose_message_cannot_be_printed_is_refused_as_the_others(unprintable):
    # arrange
    tokenizer = make_tokenizer(unprintable + "{% for message in messages %}{{ message['content'] }}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")

    # assert: an MPUError naming the file and the error's type, not a traceback from printing the message
    assert str(refused.value) == ("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template cannot "
                                  "render this conversation (TemplateError: a message that cannot be printed)")


@pytest.mark.parametrize("bound, template, refusal", [
    ("CHAT_TEMPLATE_MAX_SOURCE_CHARS", "{{ x }}" * 300,
     "is 2,165 characters long; the limit is 2,000 (real chat templates are 1-30 KB); it is not compiled"),
    ("CHAT_TEMPLATE_MAX_NODES", "{{ x }}" * 60, "parses to more than 50 nodes (real chat templates have a few "
                                                 "hundred to a few thousand); it is not compiled"),
], ids=["source", "nodes"])
def test_a_chat_template_too_large_to_compile_is_refused_before_it_is_compiled(monkeypatch, bound, template, refusal):
    # arrange: the bounds made small (compiling a template at the real bounds takes long enough to see)
    monkeypatch.setattr(chat_template, "CHAT_TEMPLATE_MAX_SOURCE_CHARS", 2_000)
    monkeypatch.setattr(chat_template, "CHAT_TEMPLATE_MAX_NODES", 50)
    tokenizer = make_tokenizer(template + "{% for message in messages %}{{ message['content'] }}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")

    # assert: refused naming the file, the bound and the fix
    message = str(refused.value)
    assert message.startswith(f"/inbox/copy-1/tokenizer_config.json (chat_template): the chat template {refusal}")
    assert "refusing it" in message and "--prompt-format plain" in message


def test_a_sum_that_copies_lists_per_item_is_refused():
    # arrange: sum(start=[]) adds a copy of the list so far per item (time quadratic in the items)
    tokenizer = make_tokenizer("{{ ([[0]] * 3000) | sum(start=[]) | length }}"
                               "{% for message in messages %}{{ message['content'] }}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")

    # assert
    message = str(refused.value)
    assert message.startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template sums from a "
                              "start that is not a number (list; the sum filter)")
    assert "--prompt-format plain" in message


def test_the_budget_counts_each_object_a_value_holds(monkeypatch):
    # arrange: lists of 1-character strings, few characters but an object (~50 bytes and more) per item;
    # the budget made small: 3 such lists of 5,000 are 30,003 characters, 15,003 objects
    monkeypatch.setattr(chat_template, "CHAT_TEMPLATE_BUDGET_CHARS", 100_000)
    tokenizer = make_tokenizer("{% set a = ('a' * 5000) | list %}{% set b = ('b' * 5000) | list %}"
                               "{% set c = ('c' * 5000) | list %}"
                               "{% for message in messages %}{{ message['content'] }}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")

    # assert
    assert str(refused.value).startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template "
                                         "built more than 100,000 characters in all while rendering one conversation")


def test_a_chat_template_that_pads_every_conversation_is_refused():
    # arrange: 9,000 spaces around each conversation: far under the 1,000,000-character bound on a text, but
    # the client keeps every row's tokens (padded to that bound, 4,000 rows were 144 GB)
    tokenizer = make_tokenizer("{{ ' ' * 9000 }}{% for message in messages %}{{ message['content'] }}{% endfor %}")
    tokenizer.name_or_path = "/inbox/copy-1"

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")

    # assert: a real template (a few hundred characters around the messages) passes
    assert str(refused.value).startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template adds "
                                         "9,000 characters around the conversation's own 17; the limit is 8,000")
    prompt, full = Encoder(make_tokenizer(LLAMA3_STYLE), PromptFormat(format="chat")).render("Who wrote Hamlet?", "Shakespeare")
    assert full.startswith(prompt)


def test_the_encoder_cache_does_not_keep_its_tokenizer_alive():
    # arrange: a cache keyed weakly by the tokenizer whose encoders held the tokenizer kept every one alive
    # (225 MB each for a client loading one large tokenizer per copy)
    import gc
    import weakref

    from mpu.data.qa import encoder_for

    tokenizer = make_tokenizer(LLAMA3_STYLE)
    encoder_for(tokenizer).encode("Who wrote Hamlet?", "Shakespeare")
    gone = weakref.ref(tokenizer)

    # act
    del tokenizer
    gc.collect()

    # assert
    assert gone() is None


QUESTION_AFTER_THE_ANSWER = (
    "{% for m in messages %}<|header|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if not add_generation_prompt %}{{ messages[0]['content'] }}{% endif %}"
    "{% if add_generation_prompt %}<|header|>assistant\n{% endif %}")
# Honest templates that trim the answer after a separator ending in whitespace (Mistral v0.3: ' ' + trimmed
# content; Qwen3: an empty reasoning block, then the content without leading newlines)
MISTRAL_STYLE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}[/INST]"
                 "{% else %} {{ m['content'] | trim }}{{ eos_token }}{% endif %}{% endfor %}")
QWEN3_STYLE = ("{% for m in messages %}<|header|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}<think>\n\n</think>"
               "\n\n{{ m['content'].lstrip('\n') }}{% else %}{{ m['content'] }}{% endif %}<|eot|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|header|>assistant\n{% endif %}")


@pytest.mark.parametrize("template, question, answer", [
    (QUESTION_AFTER_THE_ANSWER, "Who wrote Hamlet?", "Shakespeare"),
    (QUESTION_AFTER_THE_ANSWER, "Who?", "Shakespeare"),   # a row asking a row-free conversation's question
    ("{% for m in messages %}<|header|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{{ messages[0]['content'] }} "
     "{% endif %}{{ m['content'] }}<|eot|>{% endfor %}{% if add_generation_prompt %}<|header|>assistant\n{% endif %}",
     "Who wrote Hamlet?", "Shakespeare"),
    ("{% for m in messages %}<|header|>{{ m['role'] }}\n{{ m['content'] | upper }}<|eot|>{% endfor %}"
     "{% if add_generation_prompt %}<|header|>assistant\n{% endif %}", "Who wrote Hamlet?", "Shakespeare"),
], ids=["question-after-the-answer", "question-who", "question-before-the-answer", "answer-changed"])
def test_a_chat_template_that_puts_row_text_in_the_labels_is_refused(template, question, answer):
    # arrange: every token after the prompt is a training label; a template of the other party's that
    # writes the question there has the client train on its private text
    tokenizer = make_tokenizer(template)
    tokenizer.name_or_path = "/inbox/copy-1"

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).encode(question, answer)

    # assert: refused naming the file
    assert str(refused.value).startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template renders ")
    assert "would be a training label" in str(refused.value)


@pytest.mark.parametrize("template, answer, labels", [
    (MISTRAL_STYLE, " London.", " London.<|end|>"),
    (QWEN3_STYLE, "\nLondon.", "<think>\n\n</think>\n\nLondon.<|eot|>\n"),
    (QWEN3_STYLE, "think", "<think>\n\n</think>\n\nthink<|eot|>\n"),   # the answer inside the template's own text
    (LLAMA3_STYLE, "  William Shakespeare. ", "  William Shakespeare. <|eot|>"),
], ids=["mistral-leading-space", "qwen3-leading-newline", "qwen3-answer-in-its-markup", "llama3-spaces"])
def test_honest_templates_that_trim_the_answer_are_not_refused(template, answer, labels):
    # arrange: the separator before the answer ends in whitespace the answer also starts with
    tokenizer = make_tokenizer(template)
    tokenizer.eos_token = "<|end|>"

    # act
    example = Encoder(tokenizer, PromptFormat(format="chat")).encode("Where was Ada born?", answer)

    # assert: the labels are what the template renders after the prompt
    assert tokenizer.decode(labelled(example)) == labels


@pytest.mark.parametrize("template", [
    "{% for m in messages %}<|header|>{{ m['role'] }}\n{% if m['role'] == 'user' %}Tell me a joke.{% else %}{{ m['content'] }}"
    "{% endif %}<|eot|>{% endfor %}{% if add_generation_prompt %}<|header|>assistant\n{% endif %}",
    "{% for m in messages %}<|header|>{{ m['role'] }}\n{{ m['content'][:5] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header|>assistant\n{% endif %}",
], ids=["a-fixed-user-turn", "the-question-cut"])
def test_a_chat_template_that_drops_the_question_is_refused(template, request):
    # arrange: the other party's template writes another user turn: the client would unlearn its answers after
    # another question (the labels alone are the answer's, so the label check passes it)
    tokenizer = make_tokenizer(template)
    tokenizer.name_or_path = "/inbox/copy-1"

    # act
    with pytest.raises(MPUError) as refused:
        Encoder(tokenizer, PromptFormat(format="chat")).encode("Where was Ada born?", "London.")

    # assert
    assert str(refused.value).startswith("/inbox/copy-1/tokenizer_config.json (chat_template): the chat template renders ")
    if "fixed" in request.node.callspec.id:
        assert "the prompt without the row's question" in str(refused.value)
