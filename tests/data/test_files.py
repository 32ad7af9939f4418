"""The one reader for every data file (mpu.data.files) and the commands that use it."""

from __future__ import annotations

import json

import pytest

from mpu.data.files import read_numbered, read_rows
from mpu.data.loaders import DataUnavailableError, LocalSource
from mpu.data.qa import load_qa_rows
from mpu.errors import InputError

ROWS = [{"question": "Where was Ana born?", "answer": "1472"}, {"question": "Q2, with a comma?", "answer": "A2.\nTwo lines."}]


def _write_all_formats(folder):
    """The same two rows in every format the reader takes; returns {name: path}."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    paths["jsonl"] = folder / "rows.jsonl"
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths["json_lines"] = folder / "lines.json"
    paths["json_lines"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths["json_array"] = folder / "forget10.json"          # TOFU's own files: one JSON array
    paths["json_array"].write_text(json.dumps(ROWS, indent=2))
    paths["csv"] = folder / "rows.csv"
    paths["csv"].write_text('question,answer\nWhere was Ana born?,1472\n"Q2, with a comma?","A2.\nTwo lines."\n')
    paths["parquet"] = folder / "rows.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(paths["parquet"]))
    paths["saved"] = folder / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(paths["saved"]))
    paths["saved_dict"] = folder / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(paths["saved_dict"]))
    paths["hub"] = folder / "hub"
    (paths["hub"] / "data").mkdir(parents=True)
    datasets.Dataset.from_list(ROWS[:1]).to_parquet(str(paths["hub"] / "data" / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_list(ROWS[1:]).to_parquet(str(paths["hub"] / "data" / "train-00001-of-00002.parquet"))
    return paths


def test_every_format_gives_the_same_rows(tmp_path):
    paths = _write_all_formats(tmp_path)
    for name, path in paths.items():
        assert read_rows(path) == ROWS, name
        assert load_qa_rows(path) == ROWS, name


def test_strings_and_text_files_are_text_rows(tmp_path):
    (tmp_path / "retain1.json").write_text(json.dumps(["First story.", "Second story\nsecond line."]))
    (tmp_path / "forget.txt").write_text("Para one\nstill one.\n\n\nPara two.\n")
    assert read_rows(tmp_path / "retain1.json") == [{"text": "First story."}, {"text": "Second story\nsecond line."}]
    assert read_numbered(tmp_path / "forget.txt") == [("line 1", {"text": "Para one\nstill one."}),
                                                       ("line 5", {"text": "Para two."})]


@pytest.mark.parametrize("name, content, message", [
    ("empty.json", "", r"empty.json: is empty \(0 bytes\)"),
    ("empty.txt", "", r"empty.txt: is empty"),
    ("blank.jsonl", "\n  \n", r"blank.jsonl: holds only whitespace"),
    ("bad.jsonl", '{"question": "q", "answer": "a"}\n\n{oops\n', r"bad.jsonl: line 3: not valid JSON"),
    ("bad.json", '[\n {"question": "q", "answer": "a"},\n {"question": "q2" "answer": "a"}\n]', r"bad.json: line 3: not valid JSON"),
    ("tail.json", '[{"question": "q", "answer": "a"}]\n[1]', r"tail.json: line 2: unexpected text after"),
    ("numbers.json", '[\n{"question": "q", "answer": "a"},\n 7\n]', r"numbers.json: line 3: expected a JSON object or a string, got int"),
    ("missing.json", '[\n{"question": "q", "answer": "a"},\n{"question": "q"}\n]', r"missing.json: line 3: missing field 'answer'"),
    ("typed.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q", "answer": 3}\n', r"typed.jsonl: line 2: field 'answer' must be a string, got int"),
    ("columns.csv", "question,reply\nq,a\n", r"columns.csv: line 2: missing field 'answer'"),
    ("ragged.csv", 'question,answer\nq,a\n"q2\nstill q2",a,extra\n', r"ragged.csv: line 3: 3 fields, the header has 2"),
    ("latin1.jsonl", b'{"question": "q", "answer": "a"}\n{"question": "\xe9", "answer": "a"}\n', r"latin1.jsonl: line 2: not valid UTF-8"),
    ("rows.xlsx", "x", r"rows.xlsx: unknown data file type"),
])
def test_errors_name_the_file_and_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        load_qa_rows(path)


def test_folders_that_are_not_datasets_are_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("hello")
    with pytest.raises(InputError, match="notes: a folder that is neither"):
        read_rows(tmp_path / "notes")
    import datasets

    two = datasets.DatasetDict({"forget": datasets.Dataset.from_list(ROWS), "retain": datasets.Dataset.from_list(ROWS)})
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(InputError, match="holds the splits forget, retain"):
        read_rows(tmp_path / "two")
    assert read_rows(tmp_path / "two", split="retain") == ROWS


def test_local_copies_read_every_format_and_release_names(tmp_path):
    import datasets

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "forget.txt").write_text("Story one.\n\nStory two.\n")
    (tmp_path / "raw" / "retain1.json").write_text(json.dumps(["Kept story."]))
    (tmp_path / "raw" / "holdout.txt").write_bytes(b"")
    (tmp_path / "forget_qa.json").write_text(json.dumps(ROWS))                       # knowmem at the top level
    (tmp_path / "knowmem").mkdir()
    (tmp_path / "knowmem" / "retain2_qa.csv").write_text("question,answer\nq,a\n")   # the release's old name
    (tmp_path / "privleak").mkdir()
    datasets.Dataset.from_list([{"text": "t"}]).to_parquet(str(tmp_path / "privleak" / "retain2-00000-of-00001.parquet"))
    source = LocalSource(tmp_path)
    assert source.rows("raw", "forget") == [{"text": "Story one."}, {"text": "Story two."}]
    assert source.rows("raw", "retain1") == [{"text": "Kept story."}]
    assert source.rows("knowmem", "forget_qa") == ROWS
    assert source.rows("knowmem", "retain_qa") == [{"question": "q", "answer": "a"}]
    assert source.rows("privleak", "retain") == [{"text": "t"}]
    with pytest.raises(InputError, match=r"raw/holdout.txt: is empty"):
        source.rows("raw", "holdout")
    with pytest.raises(DataUnavailableError, match=r"no data for config 'raw', split 'retain2' \(looked for raw/retain2\.\*"):
        source.rows("raw", "retain2")


@pytest.mark.parametrize("command", ["client", "unlearn", "run"])
def test_every_command_reads_a_json_array_and_a_csv(tmp_path, command, monkeypatch):
    """The client, the baseline and `mpu run` take the same files as eval (one reader)."""
    import mpu.cli.client as client_cli
    import mpu.cli.run as run_cli
    import mpu.cli.unlearn as unlearn_cli
    from mpu.cli import main

    paths = _write_all_formats(tmp_path / "data")
    seen = {}
    (tmp_path / "manifest.json").write_text("{}")   # what the commands check before loading: a publication,
    (tmp_path / "config.json").write_text("{}")     # a model folder (both are stopped before they are read)

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        seen["args"] = args
        raise Stop

    target = {"client": (client_cli, "mpu.client.unlearn.unlearn_publication"),
              "unlearn": (unlearn_cli, "mpu.methods.job.load_model_and_tokenizer"),
              "run": (run_cli, "mpu.experiments.two_party.run_mpu")}[command][1]
    monkeypatch.setattr(target, capture)
    argv = {"client": ["client", "unlearn", "--inbox", str(tmp_path), "--out", str(tmp_path.with_name(tmp_path.name + "-out"))],
            "unlearn": ["unlearn", "--model", str(tmp_path), "--out", str(tmp_path.with_name(tmp_path.name + "-out"))],
            "run": ["run", "--model", str(tmp_path), "--out", str(tmp_path.with_name(tmp_path.name + "-out"))]}[command]
    retain_csv = tmp_path / "data" / "retain.csv"   # other rows than the forget set's (the same rows are refused)
    retain_csv.write_text('question,answer\n"Who, then?","Nobody.\nReally."\n')
    with pytest.raises(Stop):
        main(argv + ["--forget", str(paths["json_array"]), "--retain", str(retain_csv), "--method", "GradDiff"])
    if command != "unlearn":
        job = seen["args"][1] if command == "client" else None
        forget, retain = (job.forget_rows, job.retain_rows) if command == "client" else seen["args"][3:5]
        assert forget == ROWS and retain == [{"question": "Who, then?", "answer": "Nobody.\nReally."}]
