"""Forget/retain pairing, IdK alternates, and data files that fail with the file and the line."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.data.qa import load_qa_rows
from mpu.errors import InputError, MPUError
from mpu.methods import prepare_unlearning
from mpu.methods.data import ForgetRetainDataset, idk_answers
from tests.methods.conftest import options


def pairing(dataset, indices):
    return [dataset.retain.index(dataset[i]["retain"]) for i in indices]


def test_pairing_is_seeded_and_changes_per_visit(tokenizer, forget_rows, retain_rows):
    make = lambda seed: ForgetRetainDataset(tokenizer, forget_rows, retain_rows, seed=seed, max_length=64)
    first, again, other = make(0), make(0), make(1)
    epoch0 = pairing(first, range(8))
    assert epoch0 == pairing(again, range(8))
    assert epoch0 != pairing(other, range(8))
    assert len(set(epoch0)) == 8  # no retain row twice within an epoch while there are enough
    assert pairing(first, range(8)) != epoch0  # the second visit draws again


def test_ranks_draw_different_retain_rows(tokenizer, forget_rows, retain_rows):
    """What each DDP rank sees: the sampler gives it different forget items, hence different retain rows."""
    dataset = ForgetRetainDataset(tokenizer, forget_rows, retain_rows, seed=3, max_length=64)
    seen = []
    for rank in (0, 1):
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        seen.append(set(pairing(dataset, list(sampler))))
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]


def test_more_forget_than_retain_covers_retain(tokenizer, forget_rows, retain_rows):
    dataset = ForgetRetainDataset(tokenizer, forget_rows * 5, retain_rows, seed=0, max_length=64)
    indices = pairing(dataset, range(40))
    assert set(indices[:16]) == set(range(16)) and set(indices[16:32]) == set(range(16))


def test_dpo_uses_the_rows_alternate_else_idk(tokenizer, forget_rows):
    rows = [dict(forget_rows[0], alternate="Nobody knows that."), dict(forget_rows[1], idk=["No clue.", "Beats me."]), forget_rows[2]]
    dataset = ForgetRetainDataset(tokenizer, rows, None, seed=0, max_length=64, with_alternates=True)
    answers = [dataset.alternate_answer(i, visit) for visit in range(6) for i in range(3)]
    assert set(answers[0::3]) == {"Nobody knows that."}
    assert set(answers[1::3]) <= {"No clue.", "Beats me."}
    assert set(answers[2::3]) <= set(idk_answers()) and len(idk_answers()) >= 20
    item = dataset[0]
    assert tokenizer.decode([t for t in item["alternate"]["labels"] if t != -100], skip_special_tokens=True).strip() == "Nobody knows that."
    with pytest.raises(MPUError, match="forget row 1: field 'alternate'"):
        ForgetRetainDataset(tokenizer, [dict(forget_rows[0], alternate=3)], None, seed=0, max_length=64, with_alternates=True)


def test_retain_requirements(model, tokenizer, forget_rows, retain_rows, tmp_path):
    for method in ("GradDiff", "RMU", "PDU"):
        with pytest.raises(MPUError, match=f"{method} needs retain data"):
            prepare_unlearning(model, tokenizer, forget_rows, None, method, {}, options(), str(tmp_path))
    # optional where the method allows it: NPO without retain is forget-only; GradDiff with alpha=0 too
    for method, hp in (("NPO", {}), ("DPO", {}), ("GradDiff", {"alpha": 0.0})):
        trainer = prepare_unlearning(model, tokenizer, forget_rows, None, method, hp, options(), str(tmp_path))
        assert "retain" not in trainer.data_collator([trainer.train_dataset[0]])


def test_a_row_longer_than_max_length_is_an_error_naming_the_file_and_line(model, tokenizer, forget_rows, tmp_path):
    path = tmp_path / "forget.jsonl"
    long_row = {"question": forget_rows[1]["question"], "answer": " ".join([forget_rows[1]["answer"]] * 20)}
    path.write_text("\n".join(json.dumps(row) for row in (forget_rows[0], long_row)) + "\n")
    rows = load_qa_rows(path)
    with pytest.raises(MPUError, match=rf"{path} line 2 \(forget row 2\): \d+ tokens .* exceed max_length=48"):
        prepare_unlearning(model, tokenizer, rows, None, "GradAscent", {}, options(max_length=48), str(tmp_path))
    # the prompt alone does not fit: an error even when truncating
    with pytest.raises(MPUError, match="line 1 .*the prompt alone does not fit"):
        prepare_unlearning(model, tokenizer, rows, None, "GradAscent", {}, options(max_length=6, truncate=True), str(tmp_path))


def test_truncate_cuts_the_answer_and_counts_rows_and_tokens(model, tokenizer, forget_rows, tmp_path, caplog):
    from mpu.data.qa import encode_qa
    from mpu.methods import run_unlearning

    long_row = {"question": forget_rows[1]["question"], "answer": " ".join([forget_rows[1]["answer"]] * 20)}
    full = len(encode_qa(tokenizer, long_row["question"], long_row["answer"], 4096)["input_ids"])
    rows = [forget_rows[0], long_row]
    with caplog.at_level("WARNING"):
        result = run_unlearning(model, tokenizer, rows, None, "GradAscent", {}, options(max_length=48, truncate=True, max_steps=1), str(tmp_path))
    assert result.encoding["rows_truncated"] == 1 and result.encoding["tokens_truncated"] == full - 48
    assert result.encoding["max_length"] == 48 and result.encoding["truncate"] is True
    assert "truncated 1 row(s) to max_length=48" in caplog.text
    dataset = ForgetRetainDataset(tokenizer, rows, None, seed=0, max_length=48, truncate=True)
    assert len(dataset.forget[1]["input_ids"]) == 48 and dataset.forget[1]["labels"][-1] != -100


def test_the_default_max_length_is_the_models_context(model, tokenizer, forget_rows, tmp_path):
    trainer = prepare_unlearning(model, tokenizer, forget_rows, None, "GradAscent", {}, options(), str(tmp_path))
    assert trainer.train_dataset.encoder.policy.max_length == model.config.max_position_embeddings


def test_dpo_alternates_follow_the_same_length_policy(tokenizer, forget_rows):
    rows = [dict(forget_rows[0], alternate="no " * 80)]
    with pytest.raises(MPUError, match=r"forget row 1 \(alternate answer\): .* exceed max_length=48"):
        ForgetRetainDataset(tokenizer, rows, None, seed=0, max_length=48, with_alternates=True)
    dataset = ForgetRetainDataset(tokenizer, rows, None, seed=0, max_length=48, with_alternates=True, truncate=True)
    assert len(dataset[0]["alternate"]["input_ids"]) == 48
    assert dataset.record()["rows_truncated"] == 1


@pytest.mark.parametrize("content,message", [
    ('{"question": "q", "answer": "a"}\n{"question": "q2" "answer": "a"}\n', "line 2: not valid JSON"),
    ('{"question": "q", "answer": "a"}\n\n{"question": "q3"}\n', "line 3: missing field 'answer'"),
    ('{"question": "q", "answer": 5}\n', "line 1: field 'answer' must be a string"),
    ('{"question": "q", "answer": "  "}\n', "line 1: field 'answer' is empty"),
    ('["q", "a"]\n', "read as raw text (2 strings), but the text corpus gave no training chunks"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "forget.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        load_qa_rows(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_invalid_utf8_and_missing_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "\xff", "answer": "a"}\n')
    with pytest.raises(InputError, match="line 2: not valid UTF-8"):
        load_qa_rows(path)
    with pytest.raises(InputError, match="no such file"):
        load_qa_rows(tmp_path / "absent.jsonl")


def test_datasets_directory(tmp_path, forget_rows):
    import datasets

    good = tmp_path / "good"
    datasets.Dataset.from_list(forget_rows).save_to_disk(str(good))
    assert load_qa_rows(good) == forget_rows
    bad = tmp_path / "bad"
    datasets.Dataset.from_list([{"question": "q", "answer": "a"}, {"question": "q", "answer": ""}]).save_to_disk(str(bad))
    with pytest.raises(InputError, match="row 2: field 'answer' is empty"):
        load_qa_rows(bad)
    split = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(forget_rows)}).save_to_disk(str(split))
    assert load_qa_rows(split) == forget_rows   # one split: no ambiguity
    datasets.DatasetDict({"forget": datasets.Dataset.from_list(forget_rows),
                          "retain": datasets.Dataset.from_list(forget_rows)}).save_to_disk(str(split))
    with pytest.raises(InputError, match="holds the splits forget, retain"):
        load_qa_rows(split)


def test_cli_reports_a_malformed_file(tiny_dir, tmp_path, capsys):
    from mpu.cli import main

    bad = tmp_path / "forget.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n{oops\n")
    code = main(["unlearn", "--model", str(tiny_dir / "model"), "--forget", str(bad), "--method", "GradAscent", "--out", str(tmp_path / "out")])
    assert code == 2
    assert f"{bad}: line 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rows_are_encoded_once_per_tokenizer_and_callers_get_their_own_lists(tokenizer, forget_rows, monkeypatch):
    import mpu.methods.data as data
    from mpu.data.qa import Encoder

    first = data.encode_rows(tokenizer, forget_rows, 64, "forget")
    calls = []
    real = Encoder.render
    monkeypatch.setattr(Encoder, "render", lambda self, *args: calls.append(args) or real(self, *args))
    second = data.encode_rows(tokenizer, forget_rows, 64, "forget")
    assert calls == [] and second == first  # served from the cache
    second[0]["input_ids"].append(-5)
    assert data.encode_rows(tokenizer, forget_rows, 64, "forget")[0] == first[0]
    data.encode_rows(tokenizer, forget_rows[:1], 32, "forget")  # another length policy is another encoder
    assert [call for call in calls if call not in Encoder._REFERENCE_ROWS] == [(forget_rows[0]["question"], forget_rows[0]["answer"])]


def test_mpu_unlearn_records_the_encoding(tiny_dir, tmp_path, capsys):
    from mpu.cli import main

    forget = tmp_path / "forget.jsonl"
    rows = [json.loads(line) for line in (tiny_dir / "forget.jsonl").read_text().splitlines()][:3]
    rows[1]["answer"] = " ".join([rows[1]["answer"]] * 10)
    forget.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["unlearn", "--model", str(tiny_dir / "model"), "--forget", str(forget), "--method", "GradAscent",
              "--max-steps", "1", "--prompt-format", "plain", "--max-length", "40"]
    assert main(common + ["--out", str(tmp_path / "strict")]) == 2     # the long row is refused
    assert f"{forget} line 2 (forget row 2): " in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    assert main(common + ["--truncate", "--out", str(tmp_path / "out")]) == 0
    encoding = json.loads((tmp_path / "out" / "unlearn_summary.json").read_text())["encoding"]
    assert encoding["prompt_format"]["format"] == "plain" and encoding["prompt_format"]["user_start"] == "Question: "
    assert (encoding["max_length"], encoding["truncate"], encoding["rows_truncated"]) == (40, True, 1)
    assert encoding["tokens_truncated"] > 0
