"""benchmarks/flower_transfer.py: the payload is m real model-sized copies, the file-exchange baseline
copies and hashes every byte, and a run that would not fit in memory is refused before it starts."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import load_benchmark
from safetensors import safe_open

from mpu.checkpoint import dir_sha256



@pytest.fixture(scope="module")
def bench():
    return load_benchmark("flower_transfer")


def test_the_payload_is_m_safetensors_copies_of_exactly_the_model_parameters(bench, tmp_path):
    n_params, copies = 999, 3  # its header (71 bytes) needs padding

    total = bench.write_payload(tmp_path / "outbox", n_params, copies)

    files = sorted(p for p in (tmp_path / "outbox").rglob("*") if p.is_file())
    assert [p.relative_to(tmp_path / "outbox").as_posix() for p in files] == [
        "copy-1/model.safetensors", "copy-2/model.safetensors", "copy-3/model.safetensors", "manifest.json"]
    assert total == sum(p.stat().st_size for p in files)
    for k in range(1, copies + 1):
        header = (tmp_path / "outbox" / f"copy-{k}" / "model.safetensors").read_bytes()[:8]
        assert int.from_bytes(header, "little") % 8 == 0  # padded as safetensors' own writer pads (tensor alignment)
        with safe_open(str(tmp_path / "outbox" / f"copy-{k}" / "model.safetensors"), framework="pt") as handle:
            weight = handle.get_tensor("weight")
        assert tuple(weight.shape) == (n_params,) and str(weight.dtype) == "torch.float32"


def test_the_file_exchange_copies_every_byte_both_ways_and_hashes_it(bench, tmp_path):
    bench.write_payload(tmp_path / "outbox", 500, 2)
    (tmp_path / "work").mkdir()

    result = bench.file_exchange(tmp_path / "outbox", tmp_path / "work")

    assert result["sha256"] == dir_sha256(tmp_path / "outbox")
    assert dir_sha256(tmp_path / "work" / "returns") == result["sha256"]
    assert result["round_trip_s"] == pytest.approx(result["forward_s"] + result["back_s"])
    assert result["maxrss_mib"] > 0 and result["start_rss_mib"] > 0  # two counters, not comparable to the KiB


def test_a_run_estimated_beyond_the_available_memory_is_refused_before_anything_starts(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["flower_transfer.py", "--model-params", "1e6", "--copies", "3", "--multiple", "1e9"])
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda **_: pytest.fail("a folder was made for a refused run"))

    with pytest.raises(SystemExit) as stopped:
        bench.main()

    assert stopped.value.code == 2
    assert "not run" in capsys.readouterr().err
