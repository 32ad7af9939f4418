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
