"""Loading TOFU/MUSE/WMDP rows from local copies and the hub (failing fast offline)."""

from __future__ import annotations

import json
import time

import pytest

from mpu.data.loaders import DataUnavailableError, HubSource, LocalSource, resolve_source
from mpu.errors import InputError, MPUError

ROWS = [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]


def test_local_layouts(tmp_path):
    import datasets

    (tmp_path / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))   # TOFU snapshot
    (tmp_path / "knowmem").mkdir()
    (tmp_path / "knowmem" / "forget_qa.json").write_text(json.dumps(ROWS))                 # a JSON array
    (tmp_path / "wmdp-bio").mkdir()
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "wmdp-bio" / "test-00000-of-00001.parquet"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    source = LocalSource(tmp_path)
    assert source.rows("forget10", "train") == ROWS
    assert source.rows("knowmem", "forget_qa") == ROWS
    assert source.rows("wmdp-bio", "test") == ROWS
    assert source.rows("saved", "train") == ROWS
    with pytest.raises(DataUnavailableError, match="forget05"):
        source.rows("forget05", "train")


def test_malformed_local_file_names_the_line(tmp_path):
    (tmp_path / "forget10.json").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(InputError, match=r"forget10.json: line 2"):
        LocalSource(tmp_path).rows("forget10", "train")


def test_hub_name_fails_fast_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(DataUnavailableError) as err:
        HubSource("locuslab/TOFU").rows("forget10_perturbed", "train")
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert "HF_HUB_OFFLINE is set" in message
    assert "huggingface-cli download --repo-type dataset locuslab/TOFU" in message and "--data DIR" in message


def test_unreachable_hub_is_detected_in_milliseconds(monkeypatch):
    from mpu.data.loaders import hub_offline_reason

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # the discard port: nothing listens
    started = time.perf_counter()
    reason = hub_offline_reason()
    assert reason and "127.0.0.1:9 is unreachable" in reason
    with pytest.raises(DataUnavailableError, match="--data DIR"):
        HubSource("muse-bench/MUSE-News").rows("knowmem", "forget_qa")
    assert time.perf_counter() - started < 10


def test_resolve_source(tmp_path, monkeypatch):
    from mpu.data.builtin import build_benchmark

    build_benchmark(tmp_path / "b", authors=10, facts=5, news=20, topics=8)
    for data in (tmp_path / "b", tmp_path / "b" / "tofu"):
        resolved = resolve_source(str(data), "tofu")
        assert resolved.builtin and resolved.rows("forget01", "train")
    assert resolve_source(str(tmp_path / "b"), "wmdp").builtin["wmdp"]["mode"] == "cloze"
    (tmp_path / "plain").mkdir()
    assert isinstance(resolve_source(str(tmp_path / "plain"), "tofu").source, LocalSource)
    assert isinstance(resolve_source("locuslab/TOFU", "tofu").source, HubSource)
    with pytest.raises(InputError, match="no such directory"):
        resolve_source(str(tmp_path / "missing"), "tofu")
    with pytest.raises(MPUError, match="unknown benchmark"):
        resolve_source(None, "mmmu")


def test_default_data_is_the_cached_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path))
    resolved = resolve_source(None, "tofu")
    assert resolved.root.parent == tmp_path and resolved.builtin["config"]["authors"] == 200
    assert len(resolved.rows("forget10", "train")) == 20 * 20   # the default release shape: 20 QA per author


OTHER = [{"question": "Q3?", "answer": "A3."}]


@pytest.mark.parametrize("layout", ["conversion", "older-conversion", "stale-json-beside-the-shards"])
def test_the_layouts_of_the_hubs_branches_and_snapshots(tmp_path, layout):
    # arrange: the parquet conversion (refs/convert/parquet) writes <config>/<split>/0000.parquet (older:
    # <config>/<repo>-<split>.parquet); MUSE's main branch keeps a stale verbmem/forget.json of other
    # columns beside the parquet its README names. The first two were refused, the third read the JSON.
    import datasets

    folder = tmp_path / "forget01"
    if layout == "conversion":
        (folder / "train").mkdir(parents=True)
        datasets.Dataset.from_list(ROWS[:1]).to_parquet(str(folder / "train" / "0000.parquet"))
        datasets.Dataset.from_list(ROWS[1:]).to_parquet(str(folder / "train" / "0001.parquet"))
    elif layout == "older-conversion":
        folder.mkdir()
        datasets.Dataset.from_list(ROWS).to_parquet(str(folder / "tofu-train.parquet"))
    else:
        folder.mkdir()
        datasets.Dataset.from_list(ROWS).to_parquet(str(folder / "train-00000-of-00001.parquet"))
        (folder / "train.json").write_text(json.dumps([{"text": "stale"}]))

    # act
    rows = LocalSource(tmp_path).rows("forget01", "train")

    # assert
    assert rows == ROWS


def test_a_save_to_disk_of_one_config_is_read_at_the_top(tmp_path):
    # arrange: load_dataset("cais/mmlu", "all").save_to_disk(X), passed as --mmlu X (only X/all was read)
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS), "dev": datasets.Dataset.from_list(OTHER)}).save_to_disk(
        str(tmp_path / "mmlu"))

    # act
    rows = LocalSource(tmp_path / "mmlu").rows("all", "test")

    # assert
    assert rows == ROWS


def test_the_offline_message_names_the_option_that_takes_the_local_copy(monkeypatch):
    # arrange: WMDP's utility set comes from --mmlu; the message said --data, which replaces the WMDP data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_source("cais/mmlu", "mmlu", flag="--mmlu").source

    # act
    with pytest.raises(DataUnavailableError) as refused:
        source.rows("all", "test")

    # assert
    assert "pass `--mmlu DIR`; or pass `--mmlu none` to evaluate without MMLU" in str(refused.value)


def test_a_copy_of_the_wmdp_corpora_trains_on_the_configs_it_holds(tmp_path):
    # arrange: cais/wmdp-corpora's public configs; the built-in benchmark's names were the only ones tried
    import datasets

    from mpu.experiments.finetune import training_data

    for config, text in [("bio-retain-corpus", "cells"), ("cyber-retain-corpus", "ports"), ("cyber-forget-corpus", "exploits")]:
        (tmp_path / config).mkdir()
        datasets.Dataset.from_list([{"text": text}]).to_parquet(str(tmp_path / config / "train-00000-of-00001.parquet"))

    # act
    full = training_data(LocalSource(tmp_path), "wmdp", "full")
    retain = training_data(LocalSource(tmp_path), "wmdp", "retain")
    with pytest.raises(MPUError) as refused:
        training_data(LocalSource(tmp_path / "bio-retain-corpus"), "wmdp", "full")

    # assert
    assert full.sources == ["bio-retain-corpus/train", "cyber-retain-corpus/train", "cyber-forget-corpus/train"]
    assert retain.sources == ["bio-retain-corpus/train", "cyber-retain-corpus/train"]
    assert "no retain corpus to fine-tune on" in str(refused.value)
