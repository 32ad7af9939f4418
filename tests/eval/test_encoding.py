"""Evaluation encodes, generates and counts with the run's one encoder and length policy."""

from __future__ import annotations

import json

import pytest

from mpu.data.qa import PromptFormat, Row
from mpu.errors import MPUError
from mpu.eval.context import EvalContext, EvalDataset, check_same_encoding
from tests.data.test_qa_encoding import END_AND_NEWLINE, make_tokenizer
from tests.eval.helpers import tiny_model

ROWS = [{"question": "Who wrote Hamlet?", "answer": "William Shakespeare wrote Hamlet."},
        {"question": "Where was Ada born?", "answer": "London."}]


@pytest.fixture
def end_tokenizer():
    return make_tokenizer(END_AND_NEWLINE)


def test_scores_and_prompts_are_the_encoders(end_tokenizer):
    model = tiny_model(end_tokenizer)
    ctx = EvalContext(model, end_tokenizer, [EvalDataset("forget", "qa", ROWS)], batch_size=2)
    end = end_tokenizer.convert_tokens_to_ids("<|end|>")
    stats = ctx.stats("forget")
    for row, stat, prompt in zip(ROWS, stats, ctx.prompts("forget")):
        example = ctx.encoder.encode(row["question"], row["answer"])
        assert list(stat.labels) == [t for t, l in zip(example["input_ids"][1:], example["labels"][1:]) if l != -100]
        assert end_tokenizer.decode(list(stat.labels)).endswith("<|end|>\n")
        # token-wise metrics (EM, ES, MIA) see the answer without the end of the turn
        assert end_tokenizer.decode(list(stat.body(ctx.eos_ids).labels)) == row["answer"]
        assert example["input_ids"][:len(prompt)] == prompt
    assert end in ctx.eos_ids   # generation stops at the template's end of turn


def test_generation_is_given_the_end_of_turn_as_a_stop(end_tokenizer, monkeypatch):
    import mpu.eval.context as context

    seen = {}
    monkeypatch.setattr(context, "generate", lambda *args, **kwargs: seen.update(kwargs) or ["x"] * len(args[2]))
    ctx = EvalContext(tiny_model(end_tokenizer), end_tokenizer, [EvalDataset("forget", "qa", ROWS)], batch_size=2)
    ctx.generations("forget", max_new_tokens=4)
    assert end_tokenizer.convert_tokens_to_ids("<|end|>") in seen["stop_ids"]


def test_the_length_policy_names_the_file_and_row_or_truncates_and_counts(end_tokenizer):
    model = tiny_model(end_tokenizer)
    rows = [ROWS[0], Row({"question": "Who?", "answer": " ".join([ROWS[0]["answer"]] * 12)}, where="forget10.json line 2")]
    strict = EvalContext(model, end_tokenizer, [EvalDataset("forget", "qa", rows)], batch_size=2, max_length=48)
    with pytest.raises(MPUError, match=r"forget10.json line 2 \(forget row 2\): \d+ tokens .* exceed max_length=48"):
        strict.stats("forget")
    text = EvalDataset("corpus", "text", [{"text": "word " * 80}], source="raw/forget.txt")
    with pytest.raises(MPUError, match=r"raw/forget.txt row 1: .* exceed max_length=48"):
        EvalContext(model, end_tokenizer, [text], batch_size=2, max_length=48).stats("corpus")
    cutting = EvalContext(model, end_tokenizer, [EvalDataset("forget", "qa", rows), text], batch_size=2, max_length=48,
                          truncate=True)
    cutting.stats("forget")
    cutting.stats("corpus")
    record = cutting.encoding_record()
    assert record["rows_truncated"] == 2 and record["tokens_truncated"] > 0
    assert record["max_length"] == 48 and record["truncate"] is True
    again = EvalContext(model, end_tokenizer, [EvalDataset("forget", "qa", rows)], batch_size=2, max_length=48, truncate=True)
    again.stats("forget")   # the same encoder (cached per tokenizer) counts for every run that meets the row
    assert again.encoding_record()["rows_truncated"] == 1
    cut = cutting.encoder.encode(rows[1]["question"], rows[1]["answer"])
    assert len(cut["input_ids"]) == 48 and len(cutting.stats("forget")[1].labels) == 48 - cut["labels"].count(-100)
    assert EvalContext(model, end_tokenizer, [], batch_size=2).max_length == model.config.max_position_embeddings


def test_runs_with_other_template_arguments_are_not_compared(end_tokenizer, tmp_path):
    from mpu.eval.evaluator import _retain_logs_encoding

    model = tiny_model(end_tokenizer)
    ours = EvalContext(model, end_tokenizer, [], batch_size=2).encoding_record()
    same = EvalContext(model, end_tokenizer, [], batch_size=2, max_length=64).encoding_record()
    other = EvalContext(model, end_tokenizer, [], batch_size=2, prompt_format=PromptFormat(system_prompt="Be brief.")).encoding_record()
    check_same_encoding(ours, same, "retain")          # another max_length without truncation compares
    with pytest.raises(MPUError, match="retain: made with another encoding"):
        check_same_encoding(ours, other, "retain")
    (tmp_path / "TOFU_EVAL.json").write_text("{}")
    (tmp_path / "TOFU_EVAL_CONFIG.json").write_text(json.dumps({"encoding": other}))
    assert _retain_logs_encoding(tmp_path / "TOFU_EVAL.json") == _retain_logs_encoding(tmp_path) == other


def test_a_model_trained_on_the_templates_rendering_scores_high_on_it(end_tokenizer):
    """The reported instance: fine-tuned on what the template renders (answer<|end|>\\n), Q_A_Prob must
    be read on that rendering, not on answer + EOS."""
    import torch

    from mpu.data.qa import QACollator
    from mpu.eval.metrics import METRICS

    torch.manual_seed(0)
    model = tiny_model(end_tokenizer, hidden=32).train()
    messages = lambda row: [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    examples = []
    for row in ROWS:   # the rendering the model is fine-tuned on, labelled after the generation prompt
        prompt = end_tokenizer.apply_chat_template(messages(row)[:1], tokenize=False, add_generation_prompt=True)
        whole = end_tokenizer.apply_chat_template(messages(row), tokenize=False)
        ids = end_tokenizer(whole, add_special_tokens=False)["input_ids"]
        n = len(end_tokenizer(prompt, add_special_tokens=False)["input_ids"])
        examples.append({"input_ids": ids, "labels": [-100] * n + ids[n:], "attention_mask": [1] * len(ids)})
    batch = QACollator(end_tokenizer.pad_token_id)(examples)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    ctx = EvalContext(model, end_tokenizer, [EvalDataset("forget", "qa", ROWS)], batch_size=2)
    assert METRICS.get("probability")(ctx, data="forget")["agg_value"] > 0.9


def test_mpu_eval_records_the_encoding_and_refuses_retain_logs_made_with_another(fast_bench, fast_models, tmp_path, capsys):
    import shutil

    from transformers import AutoTokenizer

    from mpu.cli import main
    from mpu.data.qa import Encoder
    from tests.eval.conftest import one_thread

    model = tmp_path / "unlearned"
    shutil.copytree(fast_models["full"][0], model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    briefed = Encoder(tokenizer, PromptFormat(system_prompt="Be brief.")).record()
    (model / "unlearn_summary.json").write_text(json.dumps({"encoding": briefed}))   # as mpu unlearn writes it
    plain_logs = tmp_path / "plain"
    plain_logs.mkdir()
    (plain_logs / "TOFU_EVAL.json").write_text("{}")
    (plain_logs / "TOFU_EVAL_CONFIG.json").write_text(json.dumps({"encoding": Encoder(tokenizer).record()}))
    with one_thread():
        code = main(["eval", "--model", str(model), "--data", str(fast_bench), "--out", str(tmp_path / "o"),
                     "--no-progress", "--retain-logs", str(plain_logs / "TOFU_EVAL.json")])
    assert code == 2 and "made with another encoding" in capsys.readouterr().err
    with one_thread():
        assert main(["eval", "--model", str(model), "--data", str(fast_bench), "--out", str(tmp_path / "o"),
                     "--no-progress", "--max-length", "256"]) == 0
    recorded = json.loads((tmp_path / "o" / "TOFU_EVAL_CONFIG.json").read_text())["encoding"]
    assert recorded["prompt_format"] == briefed["prompt_format"]   # the format the model was unlearned with
    assert recorded["max_length"] == 256 and recorded["rows_truncated"] == 0


def test_a_tokenizer_without_a_template_still_scores_the_benchmarks_own_prompts(end_tokenizer):
    end_tokenizer.chat_template = None
    model = tiny_model(end_tokenizer)
    datasets = [EvalDataset("verbmem", "completion", [{"prompt": "Who wrote", "gt": "Hamlet."}]),
                EvalDataset("forget", "qa", ROWS)]
    ctx = EvalContext(model, end_tokenizer, datasets, batch_size=2)
    assert len(ctx.stats("verbmem")) == 1
    with pytest.raises(MPUError, match="has no chat template: choose the prompt format explicitly"):
        ctx.stats("forget")
    plain = EvalContext(model, end_tokenizer, datasets, batch_size=2, prompt_format=PromptFormat(format="plain"))
    assert len(plain.stats("forget")) == 2


def test_a_retain_model_with_another_chat_template_is_refused(fast_bench, fast_models, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from mpu.eval import evaluate
    from tests.eval.conftest import one_thread

    retain = tmp_path / "retain"
    shutil.copytree(fast_models["retain90"][0], retain)
    tokenizer = AutoTokenizer.from_pretrained(retain)
    assert tokenizer.chat_template   # else there is no template to differ
    tokenizer.chat_template += "{# another template: same tokens, other rendering hash #}"
    tokenizer.save_pretrained(retain)

    with one_thread(), pytest.raises(MPUError, match=f"{retain}: made with another encoding"):
        evaluate(fast_models["full"][0], "tofu", data=fast_bench, retain_model=retain, progress=False)


def gpt2_model(tokenizer, positions: int):
    """A tiny GPT-2: learned positions, so a token past ``positions`` is an IndexError, not a quiet extrapolation."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


def test_a_generation_prompt_that_leaves_no_room_is_refused_naming_its_row(end_tokenizer):
    # arrange: a question's prompt longer than max_length (generation took it whole, past the model's context)
    rows = [ROWS[1], Row({"question": "Who? " * 40, "answer": "Nobody."}, where="forget10.json line 2")]
    ctx = EvalContext(tiny_model(end_tokenizer), end_tokenizer, [EvalDataset("forget", "qa", rows)], batch_size=2,
                      max_length=40, truncate=True)

    # act
    with pytest.raises(MPUError) as refused:
        ctx.generations("forget", max_new_tokens=5)

    # assert: refused even with --truncate (a question's prompt is never cut)
    assert str(refused.value).startswith("forget10.json line 2 (forget row 2): its prompt of ")
    assert "leaves no room to generate within max_length=40; raise --max-length; the prompt alone does not fit" in str(refused.value)


def test_a_few_shot_prompt_is_refused_or_cut_oldest_first_and_counted(end_tokenizer):
    # arrange: a continuation prompt (MUSE's verbmem; knowmem's few-shot prompts are cut the same way)
    rows = [{"prompt": "word " * 60, "gt": "Hamlet."}]
    strict = EvalContext(tiny_model(end_tokenizer), end_tokenizer, [EvalDataset("verbmem", "completion", rows)],
                         batch_size=2, max_length=40)
    cutting = EvalContext(tiny_model(end_tokenizer), end_tokenizer, [EvalDataset("verbmem", "completion", rows)],
                          batch_size=2, max_length=40, truncate=True)

    # act
    with pytest.raises(MPUError) as refused:
        strict.generations("verbmem", max_new_tokens=8)
    texts = cutting.generations("verbmem", max_new_tokens=8)
    prompt = cutting.prompts("verbmem", 8)[0]

    # assert: without --truncate an error naming the row; with it, the prompt's last 32 tokens, counted
    assert "verbmem row 1: its prompt of " in str(refused.value) and "or pass --truncate" in str(refused.value)
    assert len(texts) == 1 and len(prompt) == 40 - 8
    record = cutting.encoding_record()
    assert record["rows_truncated"] == 1 and record["tokens_truncated"] > 0
    assert strict.encoding_record()["rows_truncated"] == 0


def test_generation_stops_at_max_length_and_a_rows_text_does_not_depend_on_its_batch():
    # arrange: learned positions of 24; one long prompt that leaves 2 tokens, one short one
    from tests.data.test_qa_encoding import make_tokenizer

    tokenizer = make_tokenizer(END_AND_NEWLINE)
    model = gpt2_model(tokenizer, positions=24)
    long_prompt, short_prompt = list(range(5, 27)), list(range(5, 10))
    from mpu.eval.engine import generate

    # act: no stop tokens, so each row generates its whole budget
    together = generate(model, tokenizer, [long_prompt, short_prompt], 2, 10, stop_ids=[], max_length=24)
    alone = generate(model, tokenizer, [short_prompt], 1, 10, stop_ids=[], max_length=24)
    capped = generate(model, tokenizer, [long_prompt], 1, 10, stop_ids=[], max_length=24)

    # assert: the long row gets 2 tokens (not an IndexError past the positions); the short row its 10,
    # the same text with or without the long row in its batch
    assert len(tokenizer(capped[0], add_special_tokens=False)["input_ids"]) <= 2
    assert together == [capped[0], alone[0]]
    with pytest.raises(ValueError, match="no room to generate within max_length=20"):
        generate(model, tokenizer, [long_prompt], 1, 10, stop_ids=[], max_length=20)


def test_truncation_for_generation_has_no_cliff_and_a_row_cut_twice_counts_once(end_tokenizer):
    # arrange: continuation prompts of 39 and 41 tokens under max_length 40 (the 39-token one was kept whole
    # and generated 1 token, the 41-token one was cut to leave 8)
    from mpu.eval import encoding

    make = lambda n: {"prompt": " ".join(["word"] * n), "gt": "Hamlet."}
    ctx = EvalContext(tiny_model(end_tokenizer), end_tokenizer, [EvalDataset("verbmem", "completion", [make(45)])],
                      batch_size=2, max_length=40, truncate=True)
    lengths = {n: len(encoding.prompt_ids(end_tokenizer, "completion", make(n))) for n in range(30, 60)}
    near, over = (min(n for n, length in lengths.items() if length >= 40 - k) for k in (1, 0))

    # act
    cut_near = encoding.fit_prompt(encoding.prompt_ids(end_tokenizer, "completion", make(near)), "completion", ctx.encoder,
                                   "near", ("near",), 8)
    cut_over = encoding.fit_prompt(encoding.prompt_ids(end_tokenizer, "completion", make(over)), "completion", ctx.encoder,
                                   "over", ("over",), 8)
    with pytest.raises(MPUError) as refused:
        encoding.fit_prompt([1] * 10, "completion", ctx.encoder, "verbmem row 1", ("x",), 40)
    ctx.stats("verbmem")   # cut when scored
    ctx.generations("verbmem", max_new_tokens=8)   # and again for generation: the same row

    # assert: both leave max_new_tokens; no room for any prompt is an error; the row counts once
    assert len(cut_near) == len(cut_over) == 32
    assert str(refused.value) == ("verbmem row 1: max_new_tokens=40 leaves no room for its prompt within max_length=40; "
                                  "raise --max-length")
    assert ctx.encoding_record()["rows_truncated"] == 1
