"""The claim sweep's command list (benchmarks/claim_sweep.py): what a --groups selection runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "claim_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("claim_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def folders(jobs) -> set[str]:
    return {next(arg for arg in argv if arg.startswith("hydra.sweep.dir=")).split("=", 1)[1].split("/")[-2] for _, argv in jobs}


def test_every_run_folder_is_a_named_group(sweep, tmp_path):
    jobs = sweep.commands(tmp_path, "0,1,2", "python")
    assert folders(jobs) == set(sweep.GROUPS)
    assert len(jobs) == 8 * 6 + 3  # 8 methods x 6 groups, plus the moving-reference control of NPO, DPO, UNDIAL


def test_the_paper_regime_on_forget01_and_forget10(sweep, tmp_path):
    """One command covers both splits; sigma follows the task vector except in the labelled control."""
    jobs = sweep.commands(tmp_path, "0", "python", splits=("forget01", "forget10"))
    assert len(jobs) == 2 * (8 * 6 + 3)
    for _, argv in jobs:
        where = next(arg for arg in argv if arg.startswith("hydra.sweep.dir=")).split("=", 1)[1]
        split = Path(where).parts[-3]
        assert f"data.forget_split={split}" in argv and f"data.retain_split=retain{100 - int(split[-2:])}" in argv
        bases = [arg for arg in argv if arg.startswith("mpu.sigma_from=")]
        assert bases[-1] == ("mpu.sigma_from=weights" if "/control-weights/" in where
                                  else "mpu.sigma_from=task-vector")
    control = sweep.commands(tmp_path, "0", "python", splits=("forget10",), sigma_from="weights")
    assert all("mpu.sigma_from=weights" in argv for _, argv in control) and "control-weights" not in folders(control)
    release = sweep.commands(tmp_path, "0", "python", ["baseline"], shape="release")
    assert all("model=tiny-llama-cpu-release" in argv and "benchmark.shape=release" in argv for _, argv in release)
    with pytest.raises(ValueError, match="unknown split"):
        sweep.commands(tmp_path, "0", "python", splits=("forget20",))


def test_groups_select_the_runs_to_redo(sweep, tmp_path):
    jobs = sweep.commands(tmp_path, "0,1,2", "python", ["mpu-k0.01", "control-k0"])
    assert folders(jobs) == {"mpu-k0.01", "control-k0"}
    assert all("seed=0,1,2" in argv for _, argv in jobs if "mpu.kappa=0.01" in argv)


def test_an_unknown_group_is_refused(sweep, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--groups", "mpu-k0.5", "--dry-run"])
    assert "unknown ['mpu-k0.5']" in capsys.readouterr().err


def test_a_rerun_refuses_folders_that_hold_runs_unless_told_to_overwrite(sweep, tmp_path, capsys, monkeypatch):
    stale = tmp_path / "forget10" / "mpu-k0.1" / "NPO" / "0_NPO_m3_k0.1_mpuTrue_s0"
    stale.mkdir(parents=True)
    kept = tmp_path / "forget10" / "baseline" / "NPO"
    kept.mkdir(parents=True)
    with pytest.raises(SystemExit):
        sweep.main(["--out", str(tmp_path), "--groups", "mpu-k0.1", "--split", "forget10"])
    assert "mpu-k0.1 already hold runs" in capsys.readouterr().err
    assert stale.is_dir()  # nothing removed without --overwrite

    launched = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda argv, **kwargs: launched.append(argv) or 0)
    assert sweep.main(["--out", str(tmp_path), "--groups", "mpu-k0.1", "--overwrite", "--split", "forget10"]) == 0
    assert not stale.exists() and kept.is_dir()  # only the selected group is cleared
    assert len(launched) == 8
    assert (tmp_path / "logs" / "forget10-mpu-k0.1-NPO.log").is_file()
