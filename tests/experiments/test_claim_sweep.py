"""The claim sweep's command list (benchmarks/claim_sweep.py): what a --groups selection runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import load_benchmark



@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("claim_sweep")


def folders(jobs) -> set[str]:
    return {next(arg for arg in argv if arg.startswith("hydra.sweep.dir=")).split("=", 1)[1].split("/")[-2] for _, argv in jobs}


def test_every_run_folder_is_a_named_group(sweep, tmp_path):
    jobs = sweep.commands(tmp_path, "0,1,2", "python")
    assert folders(jobs) == set(sweep.GROUPS)   # the calibration only when asked for
    # one process per run: 8 methods x 3 seeds x (5 groups + control-weights' two kappas), plus the
    # moving-reference control of NPO, DPO, UNDIAL
    assert len(jobs) == 8 * 3 * (5 + 2) + 3 * 3
    for _, argv in jobs:   # each run has its own folder, named by what tells it apart
        assert sum(arg.startswith("hydra.sweep.subdir=") for arg in argv) == 1 and not any("," in arg for arg in argv)
    assert len({(sweep.sweep_dir(argv), sweep.run_name(argv)) for _, argv in jobs}) == len(jobs)


def test_the_calibration_tries_the_grid_apart_and_the_sweep_uses_its_rates(sweep, tmp_path):
    calibration = sweep.commands(tmp_path, "0,1,2", "python", [sweep.CALIBRATION], ("forget10",), lr_grid=(3e-4, 1e-3))
    assert len(calibration) == 8 * 2
    for _, argv in calibration:
        assert "seed=0" in argv and "mpu.enabled=false" in argv
        assert sweep.sweep_dir(argv).parts[-3:-1] == ("calibration", "forget10")  # not under OUT/forget10 (mpu report)
    npo_rates = {sweep.run_name(argv) for _, argv in calibration if "trainer=NPO" in argv}
    assert npo_rates == {"lr0.0003_s0", "lr0.001_s0"}
    jobs = sweep.commands(tmp_path, "0,1,2", "python", ["baseline"], authors=100, learning_rates={"NPO": 3e-3})
    npo = next(argv for _, argv in jobs if "trainer=NPO" in argv)
    assert "trainer.training.learning_rate=0.003" in npo and "benchmark.authors=100" in npo
    assert not any(a.startswith("trainer.training.learning_rate") for _, argv in jobs if "trainer=DPO" in argv for a in argv)
    assert sum("trainer=NPO" in argv for _, argv in jobs) == 3 and "seed=0" in npo


def test_the_rule_picks_the_largest_rate_that_keeps_90_percent_of_the_utility(sweep, tmp_path):
    def run(rate, utility):
        folder = tmp_path / "calibration" / "forget10" / "NPO" / f"{rate:g}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({
            "status": "done", "training": {"learning_rate": rate}, "summary": {"model_utility": utility},
            "target_and_retain": {"target": {"model_utility": 0.5}}}))
    run(3e-4, 0.49)
    run(1e-3, 0.46)   # >= 0.45: kept
    run(3e-3, 0.30)
    chosen = sweep.choose_learning_rates(tmp_path, "forget10")
    assert chosen["NPO"]["learning_rate"] == 1e-3 and set(chosen) == {"NPO"}
    # runs recorded before the rename keep the target under "reference"
    for path in (tmp_path / "calibration").rglob("run.json"):
        record = json.loads(path.read_text())
        record["reference"] = record.pop("target_and_retain")
        path.write_text(json.dumps(record))
    assert sweep.choose_learning_rates(tmp_path, "forget10")["NPO"]["learning_rate"] == 1e-3
    # no target utility at all: refused, not the smallest rate in silence
    for path in (tmp_path / "calibration").rglob("run.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "reference": {}}))
    with pytest.raises(ValueError, match="no target model utility"):
        sweep.choose_learning_rates(tmp_path, "forget10")


def test_resume_keeps_each_finished_run_and_redoes_only_the_missing_ones(sweep, tmp_path, monkeypatch, capsys):
    jobs = {(sweep.sweep_dir(argv).name, sweep.run_name(argv)): argv
            for _, argv in sweep.commands(tmp_path, "0,1,2", sys.executable, ["baseline"])}

    def record(folder, argv, status="done"):
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"status": status, "summary": {"model_utility": 1},
                                                     "overrides": hydra_recorded(argv)}))
    finished = tmp_path / "forget10" / "baseline" / "NPO"
    for seed in range(3):   # the older layout: one Hydra multirun, its own folder names
        record(finished / f"{seed}_NPO_m3_k0.01_mpuFalse_s{seed}", jobs["NPO", f"s{seed}"])
    dpo = tmp_path / "forget10" / "baseline" / "DPO"
    record(dpo / "s0", jobs["DPO", "s0"])                        # finished: kept
    record(dpo / "s1", jobs["DPO", "s1"], status="running")      # cut short: removed and redone
    record(dpo / "seed7", [*jobs["DPO", "s0"], "seed=7"])        # another seed of the same setting: kept
    record(dpo / "copy", jobs["DPO", "s0"])                      # a second copy of s0: moved aside
    record(dpo / "authors", [*jobs["DPO", "s2"], "benchmark.authors=10"])   # another setting: moved aside
    call, launched = _train_like(sweep, lambda split, method, rate: 0.5)
    monkeypatch.setattr(sweep.subprocess, "call", call)
    assert sweep.main(["--out", str(tmp_path), "--groups", "baseline", "--split", "forget10", "--resume"]) == 0
    ran = {(sweep.sweep_dir(argv).name, sweep.run_name(argv)) for argv in launched}
    assert ("DPO", "s1") in ran and ("DPO", "s2") in ran and ("DPO", "s0") not in ran
    assert not any(method == "NPO" for method, _ in ran) and len(launched) == 6 * 3 + 2
    assert (finished / "2_NPO_m3_k0.01_mpuFalse_s2" / "run.json").is_file()
    assert sorted(path.name for path in dpo.iterdir() if path.is_dir()) == ["s0", "s1", "s2", "seed7"]
    stale = list((tmp_path / "stale").glob("*/forget10/baseline/DPO/*"))
    assert sorted(path.name for path in stale) == ["authors", "copy"]   # nothing finished is deleted
    out = capsys.readouterr().out
    assert f"removed {dpo / 's1'}" in out and f"moved {dpo / 'authors'}" in out
    # runs at another learning rate than the calibrated one are stale: moved aside and redone
    (tmp_path / "learning_rates.json").write_text(json.dumps({"methods": {"NPO": {"learning_rate": 0.003}}}))
    launched.clear()
    assert sweep.main(["--out", str(tmp_path), "--groups", "baseline", "--split", "forget10", "--resume"]) == 0
    assert [sweep.run_name(argv) for argv in launched] == ["lr0.003_s0", "lr0.003_s1", "lr0.003_s2"]
    assert sorted(path.name for path in finished.iterdir() if path.is_dir()) == ["lr0.003_s0", "lr0.003_s1", "lr0.003_s2"]
    assert len(list((tmp_path / "stale").glob("*/forget10/baseline/NPO/*"))) == 3


def test_a_second_sweep_in_the_same_out_is_refused_while_one_runs(sweep, tmp_path, capsys):
    from filelock import FileLock

    with FileLock(str(tmp_path / ".claim_sweep.lock")):
        with pytest.raises(SystemExit) as exit_info:
            sweep.main(["--out", str(tmp_path), "--groups", "baseline", "--split", "forget10", "--resume"])
    assert exit_info.value.code == 2 and "another claim_sweep is running there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--out", str(tmp_path), "--seeds", "0,0", "--dry-run"])
    assert "--seeds: distinct" in capsys.readouterr().err


def test_the_docs_block_is_regenerated_between_its_markers(sweep, tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"# Title\nkept\n{sweep.BEGIN}\nold table\n{sweep.END}\nkept too\n")
    sweep.write_docs(page, "new table")
    assert page.read_text() == f"# Title\nkept\n{sweep.BEGIN}\nnew table\n{sweep.END}\nkept too\n"
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(ValueError, match="no generated block"):
        sweep.write_docs(tmp_path / "bare.md", "x")


def test_each_shape_regenerates_its_own_block_and_report_folder(sweep, tmp_path):
    begin, end = sweep.markers("release")
    page = tmp_path / "results.md"
    page.write_text(f"{sweep.BEGIN}\nsmall table\n{sweep.END}\nbetween\n{begin}\nold\n{end}\n")
    sweep.write_docs(page, "release table", "release")
    assert page.read_text() == f"{sweep.BEGIN}\nsmall table\n{sweep.END}\nbetween\n{begin}\nrelease table\n{end}\n"
    assert sweep.report_name("forget01", "release") != sweep.report_name("forget01") == "claim-forget01"


def test_the_paper_regime_on_forget01_and_forget10(sweep, tmp_path):
    """One command covers both splits; sigma follows the task vector except in the labelled control."""
    jobs = sweep.commands(tmp_path, "0", "python", splits=("forget01", "forget10"))
    assert len(jobs) == 2 * (8 * (5 + 2) + 3)
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
    # release-shaped answers run to 84 tokens: the ROUGE generation must not cut them at the small shape's 48
    assert all("eval.metrics.forget_Q_A_ROUGE.max_new_tokens=96" in argv for _, argv in release)
    small = sweep.commands(tmp_path, "0", "python", ["baseline"])
    assert all("eval.metrics.forget_Q_A_ROUGE.max_new_tokens=48" in argv for _, argv in small)
    with pytest.raises(ValueError, match="unknown split"):
        sweep.commands(tmp_path, "0", "python", splits=("forget20",))


def test_groups_select_the_runs_to_redo(sweep, tmp_path):
    jobs = sweep.commands(tmp_path, "0,1,2", "python", ["mpu-k0.01", "control-k0"])
    assert folders(jobs) == {"mpu-k0.01", "control-k0"}
    seeds = [arg for _, argv in jobs if "mpu.kappa=0.01" in argv for arg in argv if arg.startswith("seed=")]
    assert sorted(seeds) == sorted(["seed=0", "seed=1", "seed=2"] * 8)


def test_an_unknown_group_is_refused(sweep, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--groups", "mpu-k0.5", "--dry-run"])
    assert "unknown ['mpu-k0.5']" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # the calibration alone would run without its rule being applied
        sweep.main(["--groups", "calibration", "--dry-run"])
    assert "runs with --calibrate" in capsys.readouterr().err


def test_a_rerun_refuses_folders_that_hold_runs_unless_told_to_overwrite(sweep, tmp_path, capsys, monkeypatch):
    stale = tmp_path / "forget10" / "mpu-k0.1" / "NPO" / "0_NPO_m3_k0.1_mpuTrue_s0"
    stale.mkdir(parents=True)
    kept = tmp_path / "forget10" / "baseline" / "NPO"
    kept.mkdir(parents=True)
    with pytest.raises(SystemExit):
        sweep.main(["--out", str(tmp_path), "--groups", "mpu-k0.1", "--split", "forget10"])
    assert "NPO already hold runs" in capsys.readouterr().err
    assert stale.is_dir()  # nothing removed without --overwrite

    launched = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda argv, **kwargs: launched.append(argv) or 0)
    assert sweep.main(["--out", str(tmp_path), "--groups", "mpu-k0.1", "--overwrite", "--split", "forget10"]) == 0
    assert not stale.exists() and kept.is_dir()  # only the selected group is cleared
    assert len(launched) == 8 * 3
    assert (tmp_path / "logs" / "forget10-mpu-k0.1-NPO-k0.1_s2.log").is_file()


def test_the_headline_states_per_method_and_kappa_whether_the_degradation_is_below_one_percent(sweep, tmp_path):
    def run(folder, mode, seed, kappa, utility, rouge, **extra):
        path = tmp_path / "forget01" / folder / "NPO" / str(seed)
        path.mkdir(parents=True)
        record = {"status": "done", "mode": mode, "method": "NPO", "seed": seed, "kappa": kappa, "m": 3 if kappa is not None else None,
                  "benchmark": "tofu", "forget_split": "forget01", "epochs_total": 10, "experiment": "x",
                  "training": {"learning_rate": 1e-3},
                  "summary": {"model_utility": utility, "forget_quality": 0.5, "forget_Q_A_ROUGE": rouge,
                              "forget_Q_A_Prob": 0.2, "extraction_strength": 0.1},
                  "reference": {"target": {"model_utility": 0.86, "forget_Q_A_ROUGE": 1.0, "forget_quality": 0.03},
                                "retain": {"model_utility": 0.87, "forget_Q_A_ROUGE": 0.3}}, **extra}
        (path / "run.json").write_text(json.dumps(record))
    for seed in (0, 1):
        run("baseline", "baseline", seed, None, 0.80, 0.20)
        run("mpu-k0.01", "mpu", seed, 0.01, 0.80, 0.20)     # identical: 0 % degradation
        run("mpu-k0.1", "mpu", seed, 0.1, 0.80, 0.30)       # forget ROUGE 50 % worse: 10 % on average
        run("control-weights", "mpu", seed, 0.1, 0.80, 0.40, sigma_from="weights: sigma_l = kappa * RMS(theta_l)")
    text = sweep.headline(tmp_path, ("forget01", "forget10"), tmp_path / "docs" / "results")
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| NPO")}
    assert "+0.00 %" in rows["0.01"] and "| yes |" in rows["0.01"]
    assert "+10.00 %" in rows["0.1"] and "| no |" in rows["0.1"]
    assert "+20.00 %" in rows["0.1 (sigma from the weights: control)"]   # its own row, not pooled with the paper's
    assert "| no | +12.50 % |" in rows["0.1"]   # without forget_quality: (0 + 50 + 0 + 0) / 4
    assert "Target: model utility 0.860" in text and "### forget10" not in text   # a split with no runs is left out
    assert (tmp_path / "docs" / "results" / "claim-forget01" / "report.md").is_file()


def _calibration_run(root: Path, split: str, method: str, rate: float, utility: float) -> None:
    folder = root / "calibration" / split / method / f"{rate:g}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "status": "done", "seed": 0, "training": {"learning_rate": rate}, "summary": {"model_utility": utility},
        "target_and_retain": {"target": {"model_utility": 0.5}}}))


def hydra_recorded(argv: list[str]) -> list[str]:
    """The overrides Hydra records for a run launched with ``argv`` (run.json's "overrides"): no hydra.*,
    Python's spelling of booleans and floats, deletions with "=null"."""
    recorded = []
    for arg in argv[3:]:
        key, sep, value = arg.partition("=")
        if key.startswith("hydra."):
            continue
        value = value if sep else "null"
        value = {"false": "False", "true": "True"}.get(value, value)
        try:
            value = repr(float(value)) if not value.isdigit() else value
        except ValueError:
            pass
        recorded.append(f"{key}={value}")
    return recorded


def _train_like(sweep, utility):
    """A stand-in for src/train.py: writes the finished run ``argv`` asks for into its folder, with
    model utility ``utility(split, method, rate)`` against a target's 0.5; records what it ran."""
    launched = []

    def call(argv, **kwargs):
        launched.append(argv)
        folder = sweep.sweep_dir(argv)
        identity = sweep.run_identity(argv)
        rate = identity.get("trainer.training.learning_rate", 1e-3)
        run = folder / sweep.run_name(argv)
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({
            "status": "done", "seed": int(identity["seed"]), "kappa": identity.get("mpu.kappa"),
            "training": {"learning_rate": rate}, "overrides": hydra_recorded(argv),
            "summary": {"model_utility": utility(folder.parts[-2 if folder.parts[-3] == "calibration" else -3],
                                                 folder.parts[-1], rate)},
            "target_and_retain": {"target": {"model_utility": 0.5}}}))
        return 0

    return call, launched


def test_each_calibrated_split_sweeps_at_its_own_rates(sweep, tmp_path, monkeypatch):
    # forget01 keeps the utility at 1e-3, forget10 only at 1e-5
    call, launched = _train_like(sweep, lambda split, method, rate: 0.49 if (rate == 1e-3) == (split == "forget01") else 0.1)
    monkeypatch.setattr(sweep.subprocess, "call", call)
    assert sweep.main(["--out", str(tmp_path), "--groups", "baseline", "--split", "forget01,forget10",
                       "--calibrate", "forget01,forget10", "--lr-grid", "1e-5,1e-3"]) == 0
    assert sweep.read_learning_rates(tmp_path / "learning_rates.json") == {
        "forget01": {m: 1e-3 for m in sweep.METHODS}, "forget10": {m: 1e-5 for m in sweep.METHODS}}
    baselines = [argv for argv in launched if sweep.sweep_dir(argv).parts[-2] == "baseline"]
    assert len(baselines) == 2 * 8 * 3
    for argv in baselines:
        split = sweep.sweep_dir(argv).parts[-3]
        assert f"trainer.training.learning_rate={'0.001' if split == 'forget01' else '1e-05'}" in argv


def test_an_uncalibrated_split_takes_the_first_calibrated_splits_rates_and_old_files_still_read(sweep, tmp_path):
    path = tmp_path / "learning_rates.json"
    path.write_text(json.dumps({"split": "forget01", "methods": {"NPO": {"learning_rate": 3e-4}}}))  # the one-split file
    rates = sweep.read_learning_rates(path)
    assert rates == {"forget01": {"NPO": 3e-4}}
    assert sweep.rates_for(rates, "forget10") == {"NPO": 3e-4}
    assert sweep.rates_for({"forget01": {"NPO": 1.0}, "forget10": {"NPO": 2.0}}, "forget10") == {"NPO": 2.0}
    assert sweep.rates_for({}, "forget10") is None and sweep.read_learning_rates(tmp_path / "none.json") == {}


def test_the_calibration_searches_from_the_largest_rate_down_and_stops_at_the_first_that_keeps_the_utility(
        sweep, tmp_path, monkeypatch):
    keeps_below = {"GradAscent": 1e-5, "NPO": 1e-4}   # the largest rate that keeps 90 % (others: every rate)
    call, launched = _train_like(sweep, lambda split, method, rate: 0.49 if rate <= keeps_below.get(method, 1) else 0.1)
    monkeypatch.setattr(sweep.subprocess, "call", call)
    grid = "1e-5,3e-5,1e-4,3e-4,1e-3"
    assert sweep.main(["--out", str(tmp_path), "--groups", "baseline", "--split", "forget10", "--calibrate", "forget10",
                       "--lr-grid", grid]) == 0
    tried = {}
    for argv in launched:
        if sweep.sweep_dir(argv).parts[-3] == "calibration":
            tried.setdefault(sweep.sweep_dir(argv).name, []).append(sweep.run_identity(argv)["trainer.training.learning_rate"])
    assert tried["GradAscent"] == [1e-3, 3e-4, 1e-4, 3e-5, 1e-5]
    assert tried["NPO"] == [1e-3, 3e-4, 1e-4] and tried["DPO"] == [1e-3]
    rows = sweep.read_calibration(tmp_path / "learning_rates.json")[1]["forget10"]
    assert rows["NPO"]["learning_rate"] == 1e-4 and rows["GradAscent"]["learning_rate"] == 1e-5 and rows["DPO"]["learning_rate"] == 1e-3
    assert "tried from the largest down" in sweep.read_calibration(tmp_path / "learning_rates.json")[0]["forget10"]
    # resumed on the same grid, nothing is redone; a larger rate on the grid is tried (and fails) before the kept ones
    launched.clear()
    assert sweep.main(["--out", str(tmp_path), "--groups", "calibration", "--split", "forget10", "--calibrate", "forget10",
                       "--lr-grid", grid, "--resume"]) == 0
    assert launched == []
    assert sweep.main(["--out", str(tmp_path), "--groups", "calibration", "--split", "forget10", "--calibrate", "forget10",
                       "--lr-grid", "3e-3," + grid, "--resume"]) == 0
    assert {sweep.run_name(argv) for argv in launched} == {"lr0.003_s0"} and len(launched) == 8


def test_the_rule_ignores_runs_at_rates_off_the_grid(sweep, tmp_path):
    for rate, utility in ((1e-4, 0.49), (3e-4, 0.48), (1e-3, 0.1)):   # yesterday's grid
        _calibration_run(tmp_path, "forget10", "NPO", rate, utility)
    assert sweep.choose_learning_rates(tmp_path, "forget10")["NPO"]["learning_rate"] == 3e-4
    assert sweep.choose_learning_rates(tmp_path, "forget10", (1e-4, 1e-3))["NPO"]["learning_rate"] == 1e-4


def test_calibrating_a_split_later_keeps_the_other_splits_rates_and_rules(sweep, tmp_path):
    path = tmp_path / "learning_rates.json"
    path.write_text(json.dumps({"rule": "old grid", "splits": {"forget01": {"NPO": {"learning_rate": 3e-4}}}}))
    sweep.write_calibration(path, "new grid", {"forget10": {"NPO": {"learning_rate": 1e-5}}})
    rules, splits = sweep.read_calibration(path)
    assert sweep.read_learning_rates(path) == {"forget01": {"NPO": 3e-4}, "forget10": {"NPO": 1e-5}}
    assert rules == {"forget01": "old grid", "forget10": "new grid"}
    sweep.write_calibration(path, "newer grid", {"forget01": {"NPO": {"learning_rate": 1e-4}}})   # a redo replaces
    assert sweep.read_learning_rates(path)["forget01"] == {"NPO": 1e-4}
    assert sweep.read_calibration(path)[0] == {"forget01": "newer grid", "forget10": "new grid"}


def test_each_method_is_filtered_by_the_grid_not_by_the_previous_methods_rates(sweep, tmp_path):
    """GradAscent (first in METHODS) ran at 1e-5 only; NPO at 1e-5 and 1e-3: NPO's 1e-3 is on the grid."""
    _calibration_run(tmp_path, "forget10", "GradAscent", 1e-5, 0.49)
    _calibration_run(tmp_path, "forget10", "GradAscent", 1e-3, 0.1)
    _calibration_run(tmp_path, "forget10", "NPO", 1e-5, 0.49)
    _calibration_run(tmp_path, "forget10", "NPO", 1e-3, 0.48)
    chosen = sweep.choose_learning_rates(tmp_path, "forget10", (1e-5, 1e-3))
    assert chosen["NPO"]["learning_rate"] == 1e-3 and chosen["NPO"]["grid"] == {"1e-05": 0.49, "0.001": 0.48}


def test_a_method_no_rate_keeps_falls_back_to_the_smallest_rate_flagged_and_warned(sweep, tmp_path, monkeypatch, capsys):
    call, _ = _train_like(sweep, lambda split, method, rate: 0.03 if method == "GradAscent" else 0.49)
    monkeypatch.setattr(sweep.subprocess, "call", call)
    assert sweep.main(["--out", str(tmp_path), "--groups", "baseline", "--split", "forget10",
                       "--calibrate", "forget10", "--lr-grid", "3e-5,1e-4"]) == 0
    rows = sweep.read_calibration(tmp_path / "learning_rates.json")[1]["forget10"]
    assert rows["GradAscent"]["learning_rate"] == 3e-5 and rows["GradAscent"]["passes"] is False
    assert rows["NPO"]["passes"] is True
    err = capsys.readouterr().err
    assert "no rate of the grid keeps GradAscent's model utility" in err and "NPO's" not in err


def test_a_calibration_cut_short_is_refused_not_applied(sweep, tmp_path, monkeypatch, capsys):
    """A crash at 3e-4 after 1e-3 failed the rule: the smallest rate tried (1e-3) must not be chosen."""
    _calibration_run(tmp_path, "forget10", "NPO", 1e-3, 0.1)
    with pytest.raises(ValueError, match="no finished run at 0.0001, 0.0003"):
        sweep.choose_learning_rates(tmp_path, "forget10", (1e-4, 3e-4, 1e-3))
    _calibration_run(tmp_path, "forget10", "NPO", 1e-4, 0.49)   # a pass below an untried rate decides nothing either
    with pytest.raises(ValueError, match="no finished run at 0.0003"):
        sweep.choose_learning_rates(tmp_path, "forget10", (1e-4, 3e-4, 1e-3))
    call, launched = _train_like(sweep, lambda split, method, rate: 0.49)
    monkeypatch.setattr(sweep.subprocess, "call", lambda argv, **kwargs: 1 if "trainer=NPO" in argv else call(argv))
    assert sweep.main(["--out", str(tmp_path / "crash"), "--groups", "baseline", "--split", "forget10", "--calibrate",
                       "forget10", "--lr-grid", "1e-4,1e-3"]) == 1
    assert "the sweep was not started" in capsys.readouterr().err
    assert not (tmp_path / "crash" / "learning_rates.json").exists()
    assert not (tmp_path / "crash" / "forget10").exists()


def test_archive_carries_finished_runs_to_another_machine_and_resume_redoes_only_the_rest(sweep, tmp_path, monkeypatch, capsys):
    archive, first, second = tmp_path / "archive", tmp_path / "first", tmp_path / "second"
    call, launched = _train_like(sweep, lambda split, method, rate: 0.5)
    monkeypatch.setattr(sweep.subprocess, "call", call)
    assert sweep.main(["--out", str(first), "--groups", "baseline", "--split", "forget10", "--seeds", "0",
                       "--archive", str(archive)]) == 0
    archived = sorted(path.relative_to(archive) for path in archive.rglob("run.json"))
    assert len(archived) == len(sweep.METHODS) == len(launched)   # one record per finished run, no weights
    assert archived == sorted(path.relative_to(first) for path in first.rglob("run.json"))
    assert not list(archive.rglob("*.tmp"))

    # another machine: OUT is empty but for one run cut short; the archive's runs are restored, not redone
    cut_short = second / "forget10" / "baseline" / "NPO" / "s0"
    cut_short.mkdir(parents=True)
    (cut_short / "run.json").write_text(json.dumps({"status": "running"}))
    launched.clear()
    assert sweep.main(["--out", str(second), "--groups", "baseline", "--split", "forget10", "--seeds", "0,1",
                       "--archive", str(archive), "--resume"]) == 0
    assert sorted(sweep.run_name(argv) for argv in launched) == ["s1"] * len(sweep.METHODS)
    assert json.loads((cut_short / "run.json").read_text())["status"] == "done"
    assert f"restored {cut_short} from {archive}" in capsys.readouterr().out
    assert len(list(archive.rglob("run.json"))) == 2 * len(sweep.METHODS)   # the new runs archived too

    # an OUT run is never replaced by the archive's record
    record = json.loads((cut_short / "run.json").read_text())
    record["summary"]["model_utility"] = 0.25
    (cut_short / "run.json").write_text(json.dumps(record))
    jobs = [argv for _, argv in sweep.commands(second, "0,1", sys.executable, ["baseline"])]
    assert sweep.restore_runs(archive, second, jobs) == []
    assert json.loads((cut_short / "run.json").read_text())["summary"]["model_utility"] == 0.25

    # a record of another setting (here a learning rate the sweep no longer runs) is never restored, even by
    # --report-only, which does not prune
    third = tmp_path / "third"
    (third / "learning_rates.json").parent.mkdir()
    (third / "learning_rates.json").write_text(json.dumps({"methods": {"NPO": {"learning_rate": 0.003}}}))
    rates = {"NPO": 0.003}
    jobs = [argv for _, argv in sweep.commands(third, "0", sys.executable, ["baseline"], learning_rates=rates)]
    assert sweep.restore_runs(archive, third, jobs) == [third / "forget10" / "baseline" / method / "s0"
                                                        for method in sorted(sweep.METHODS) if method != "NPO"]
    assert not (third / "forget10" / "baseline" / "NPO").exists()
    with pytest.raises(SystemExit):   # --overwrite would leave the archive's records for a later --resume
        sweep.main(["--out", str(third), "--groups", "baseline", "--split", "forget10", "--archive", str(archive),
                    "--overwrite"])
    assert "--overwrite removes OUT's runs but not their records" in capsys.readouterr().err


def test_a_committed_report_rebuilds_its_runs_so_resume_keeps_them_and_the_report_reads_the_same(sweep, tmp_path, monkeypatch,
                                                                                                    capsys):
    from mpu.experiments.report import report

    launched = []

    def call(argv, **kwargs):   # a stand-in for src/train.py writing what `mpu report` reads
        launched.append(argv)
        identity, folder = sweep.run_identity(argv), sweep.sweep_dir(argv)
        kappa, seed = identity.get("mpu.kappa"), int(identity["seed"])
        run = folder / sweep.run_name(argv)
        run.mkdir(parents=True)
        noise = 0 if kappa is None else kappa
        (run / "run.json").write_text(json.dumps({
            "status": "done", "experiment": "unlearn/tofu/default", "benchmark": "tofu", "forget_split": "forget10",
            "mode": "baseline" if kappa is None else "mpu", "method": folder.name, "kappa": kappa,
            "m": None if kappa is None else 3, "R": 2, "E": 5.0, "epochs_total": 10.0, "seed": seed,
            "training": {"learning_rate": 1e-4}, "seconds": {"total": 60.0}, "overrides": hydra_recorded(argv),
            "summary": {"model_utility": 0.6 - noise - seed / 100, "forget_quality": 10 ** -(5 + seed + 10 * noise),
                        "forget_Q_A_ROUGE": 0.3 + noise, "forget_Q_A_Prob": 0.2 + noise, "extraction_strength": 0.1},
            "target_and_retain": {"target": {"model_utility": 0.7}, "retain": {"model_utility": 0.69}}}))
        return 0

    monkeypatch.setattr(sweep.subprocess, "call", call)
    first, second, committed = tmp_path / "first", tmp_path / "second", tmp_path / "committed"
    common = ["--groups", "baseline,mpu-k0.1", "--split", "forget10"]
    calibration = json.dumps({"methods": {method: {"learning_rate": 1e-4} for method in sweep.METHODS}})
    for out in (first, second):
        out.mkdir()
        (out / "learning_rates.json").write_text(calibration)
    assert sweep.main(["--out", str(first), "--seeds", "0", *common]) == 0
    original, _ = report([first / "forget10"], committed)   # what docs/results/claim-*/ holds
    with open(committed / "runs.csv", encoding="utf-8") as handle:   # a control's row is not the paper's run
        header, *rows = handle.read().splitlines()
    control = next(row for row in rows if ",mpu," in row).replace(",,", ",sigma from the weights,", 1)
    fields = header.split(",")
    values = control.split(",")
    values[fields.index("model_utility")] = "0.01"
    (committed / "runs.csv").write_text("\n".join([header, ",".join(values), *rows]) + "\n", encoding="utf-8")

    launched.clear()
    assert sweep.main(["--out", str(second), "--seeds", "0,1", *common, "--archive", str(tmp_path / "archive"),
                       "--import-report", str(committed), "--resume"]) == 0
    assert {sweep.run_identity(argv)["seed"] for argv in launched} == {1.0}   # seed 0 kept, not redone
    imported = [json.loads(path.read_text()) for path in (second / "forget10").rglob("run.json")]
    assert sum(record.get("imported_from") == str(committed / "runs.csv") for record in imported) == 2 * len(sweep.METHODS)
    rebuilt, _ = report([second / "forget10"], tmp_path / "again")
    for before, after in zip(original.rows, rebuilt.rows, strict=True):
        assert after.seeds == [0, 1] and after.per_seed_average[0] == pytest.approx(before.average, rel=1e-12)
    assert rebuilt.target_and_retain == original.target_and_retain

    third = tmp_path / "third"
    third.mkdir()
    (third / "learning_rates.json").write_text(calibration)
    with pytest.raises(SystemExit):   # a report of other runs is refused, nothing imported
        sweep.main(["--out", str(third), "--seeds", "1", *common, "--archive", str(tmp_path / "a3"),
                    "--import-report", str(committed)])
    assert "is no run of this sweep" in capsys.readouterr().err and not (tmp_path / "a3").exists()
    (third / "learning_rates.json").unlink()
    with pytest.raises(SystemExit):   # without the calibration the redone runs would be at other rates than the kept
        sweep.main(["--out", str(third), "--seeds", "0,1", *common, "--archive", str(tmp_path / "a3"),
                    "--import-report", str(committed)])
    assert "no calibrated learning rates" in capsys.readouterr().err and not (tmp_path / "a3").exists()


def test_a_report_from_no_runs_is_refused_and_leaves_the_page(sweep, tmp_path, capsys):
    page = tmp_path / "results.md"
    page.write_text(f"{sweep.BEGIN}\nthe committed tables\n{sweep.END}\n")

    with pytest.raises(SystemExit) as exit_code:
        sweep.main(["--out", str(tmp_path / "empty"), "--split", "forget01,forget10", "--report-only", "--docs", str(page)])

    assert exit_code.value.code == 2
    assert page.read_text() == f"{sweep.BEGIN}\nthe committed tables\n{sweep.END}\n"
    err = capsys.readouterr().err
    assert "holds no finished runs of forget01, forget10; nothing was written" in err and "learning_rates.json" in err
