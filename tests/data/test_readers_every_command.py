"""Every command that takes data reads every format through the one reader (mpu.data.files): the
client, the noise-free baseline, `mpu run`, an experiment's (Hydra) data.forget_file/retain_file, and
the benchmark directories of `mpu eval` and `mpu finetune`, each × JSON lines, a JSON array, CSV,
parquet, a `datasets` folder and a hub-layout folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

ROWS = [{"question": "Where was Ana born?", "answer": "1472"},
        {"question": "Q2, with a comma?", "answer": "A2.\nTwo lines."}]
RETAIN_ROWS = [{"question": "Who, then?", "answer": "Nobody.\nReally."}, {"question": "Q3?", "answer": "1473"}]
FORMATS = ["jsonl", "json_array", "csv", "parquet", "datasets_folder", "hub_folder"]
LISTS = [{**ROWS[0], "paraphrased_answer": "In 1472.", "perturbed_answer": ["1471", "1500"]},
         {**ROWS[1], "paraphrased_answer": "A2, in two lines.", "perturbed_answer": ["B2.", "C2.", "D2."]}]


def write(folder, name, fmt, rows):
    """``rows`` as ``folder/name`` in ``fmt``; returns the path a user would pass."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif fmt == "json_array":
        path = folder / f"{name}.json"
        path.write_text(json.dumps(rows, indent=2))
    elif fmt == "csv":
        import csv

        path = folder / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        path = folder / f"{name}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "datasets_folder":
        path = folder / name
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:  # hub layout: <name>/train-0000K-of-0000N.parquet
        path = folder / name
        path.mkdir()
        for k, row in enumerate(rows):
            datasets.Dataset.from_list([row]).to_parquet(str(path / f"train-{k:05d}-of-{len(rows):05d}.parquet"))
    return path


class Stop(Exception):
    pass


def _capture(seen, forget_at, retain_at):
    def capture(*args, **kwargs):
        seen["forget"], seen["retain"] = args[forget_at], args[retain_at]
        raise Stop
    return capture


def _capture_job(seen, job_at):
    """Stops the command where it hands its UnlearnJob (argument ``job_at``) on, keeping its rows."""
    def capture(*args, **kwargs):
        seen["forget"], seen["retain"] = args[job_at].forget_rows, args[job_at].retain_rows
        raise Stop
    return capture


def rows_through(command, forget, retain, tmp_path, monkeypatch):
    """(forget rows, retain rows) as ``command`` received them from the files ``forget`` and ``retain``."""
    from mpu.cli import main

    seen: dict = {}
    common = ["--forget", str(forget), "--retain", str(retain), "--method", "graddiff"]
    (tmp_path / "manifest.json").write_text("{}")   # what the commands check before loading: a publication,
    (tmp_path / "config.json").write_text("{}")     # a model folder (both are stopped before they are read)
    if command == "client":
        monkeypatch.setattr("mpu.client.unlearn.unlearn_publication", _capture_job(seen, 1))
        argv = ["client", "unlearn", "--inbox", str(tmp_path), "--out", str(tmp_path.with_name(tmp_path.name + "-out"))]
    elif command == "unlearn":
        monkeypatch.setattr("mpu.methods.job.load_model_and_tokenizer", lambda *a, **k: (None, None))
        monkeypatch.setattr("mpu.methods.job.UnlearnJob.run", _capture_job(seen, 0))
        argv = ["unlearn", "--model", str(tmp_path), "--out", str(tmp_path.with_name(tmp_path.name + "-out"))]
    elif command == "run":
        monkeypatch.setattr("mpu.experiments.two_party.run_mpu", _capture(seen, 3, 4))
        argv = ["run", "--model", str(tmp_path), "--out", str(tmp_path.with_name(tmp_path.name + "-out"))]
    else:  # an experiment config's data section (what `python src/train.py` / Hydra passes)
        from mpu.experiments.sources import prepare

        settings = SimpleNamespace(
            benchmark="tofu", data={"source": None, "forget_file": str(forget), "retain_file": str(retain)},
            model={"target": str(tmp_path), "retain": None, "base": None}, evaluation={"enabled": False},
            builtin=None, finetune=None, model_config=None, progress=False)
        prepared = prepare(settings)
        return prepared.forget_rows, prepared.retain_rows
    with pytest.raises(Stop):
        main(argv + common)
    return seen["forget"], seen["retain"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", ["client", "unlearn", "run", "experiment"])
def test_every_command_reads_every_format(tmp_path, monkeypatch, command, fmt):
    forget = write(tmp_path / "data", "forget10", fmt, ROWS)
    retain = write(tmp_path / "data", "retain90", fmt, RETAIN_ROWS)   # other rows: the same rows are refused
    got_forget, got_retain = rows_through(command, forget, retain, tmp_path, monkeypatch)
    assert got_forget == ROWS and got_retain == RETAIN_ROWS


@pytest.mark.parametrize("command", ["client", "unlearn", "run", "experiment"])
def test_every_command_names_the_file_and_line_of_a_bad_row(tmp_path, monkeypatch, command):
    from mpu.errors import InputError

    bad = tmp_path / "forget10.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    good = write(tmp_path, "retain90", "json_array", ROWS)
    if command == "experiment":
        with pytest.raises(InputError, match=r"forget10.jsonl: line 2"):
            rows_through(command, bad, good, tmp_path, monkeypatch)
        return
    from mpu.cli import main

    import sys
    argv = {"client": ["client", "unlearn", "--inbox", str(tmp_path)],
            "unlearn": ["unlearn", "--model", str(tmp_path)], "run": ["run", "--model", str(tmp_path)]}[command]
    messages = []
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(write=messages.append, flush=lambda: None))
    assert main(argv + ["--out", str(tmp_path.with_name(tmp_path.name + "-out")), "--forget", str(bad), "--retain", str(good),
                        "--method", "GradDiff"]) == 2
    assert "forget10.jsonl: line 2" in "".join(messages)
    assert not (tmp_path / "o").exists()


TOFU_CONFIGS = {"forget": "forget10_perturbed", "holdout": "holdout10", "retain": "retain_perturbed",
                "ra": "real_authors_perturbed", "wf": "world_facts_perturbed"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_reads_a_local_copy_in_every_format(tmp_path, fmt):
    """`mpu eval --data DIR`: every TOFU subset of a local copy in ``fmt`` (CSV cells are strings, so the
    CSV copy holds no list column)."""
    from mpu.data.loaders import resolve_source
    from mpu.eval.evaluator import build_datasets
    from mpu.eval.suites import default_suite

    rows = ROWS if fmt == "csv" else LISTS
    for config in TOFU_CONFIGS.values():
        write(tmp_path / "tofu", config, fmt, rows)
    suite = default_suite("tofu")
    missing: dict = {}
    datasets = build_datasets(suite, resolve_source(str(tmp_path / "tofu"), "tofu"), missing)
    assert missing == {}
    assert {name: d.rows for name, d in datasets.items()} == {name: rows for name in TOFU_CONFIGS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_finetune_reads_a_local_copy_in_every_format(tmp_path, fmt):
    """`mpu finetune --data DIR` on a TOFU copy: the ``full`` and ``retain90`` configs in ``fmt``."""
    from mpu.data.loaders import LocalSource
    from mpu.experiments.finetune import training_data

    write(tmp_path / "tofu", "full", fmt, LISTS if fmt != "csv" else ROWS)
    write(tmp_path / "tofu", "retain90", fmt, ROWS[1:])
    source = LocalSource(tmp_path / "tofu")
    assert training_data(source, "tofu", "full").parts == [("qa", ROWS)]
    assert training_data(source, "tofu", "retain90").parts == [("qa", ROWS[1:])]
