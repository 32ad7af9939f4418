"""`mpu report` on fabricated run directories (issue 5, part 3): the degradation numbers, files and plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mpu.cli import main
from mpu.errors import MPUError

BASE = {"NPO": {"model_utility": 0.50, "forget_quality": 1e-3, "forget_Q_A_ROUGE": 0.40, "forget_Q_A_Prob": 0.20,
                "extraction_strength": 0.30, "privleak": -20.0},
        "GradAscent": {"model_utility": 0.40, "forget_quality": 1e-2, "forget_Q_A_ROUGE": 0.10, "forget_Q_A_Prob": 0.05,
                       "extraction_strength": 0.10, "privleak": 10.0}}


def fake_run(root: Path, name: str, method: str, seed: int, summary: dict, kappa=None, m=None, lr=1e-3,
             models_key="target_and_retain", **extra) -> Path:
    run = root / name
    run.mkdir(parents=True)
    mode = "baseline" if kappa is None else "mpu"
    record = {"format": "mpu-run/1", "status": "done", "experiment": "unlearn/tofu/default", "benchmark": "tofu",
              "forget_split": "forget10", "mode": mode, "method": method, "kappa": kappa, "m": m, "R": 1, "E": 10,
              "epochs_total": 10, "seed": seed, "training": {"learning_rate": lr},
              models_key: {"target": {"model_utility": 0.6, "forget_quality": 1e-6},
                           "retain": {"model_utility": 0.58, "forget_quality": 1.0}}, **extra}
    (run / "run.json").write_text(json.dumps(record))
    (run / "TOFU_SUMMARY.json").write_text(json.dumps(summary))  # the summary comes from the file
    return run


def scaled(summary: dict, factor: float) -> dict:
    return {key: value * factor for key, value in summary.items()}


def expected_degradation(metric: str, base: float, mpu: float) -> float:
    """The definition, written out independently of mpu.experiments.report."""
    if metric == "forget_quality":
        return (math.log10(base) - math.log10(mpu)) / abs(math.log10(base)) * 100
    if metric == "model_utility":
        return (base - mpu) / base * 100
    return (mpu - base) / base * 100  # lower is better


@pytest.fixture()
def sweep(tmp_path):
    root = tmp_path / "sweep"
    fake_run(root, "b-npo-0", "NPO", 0, BASE["NPO"])
    fake_run(root, "b-npo-1", "NPO", 1, scaled(BASE["NPO"], 1.1))
    fake_run(root, "b-ga-0", "GradAscent", 0, BASE["GradAscent"])
    npo_seed0 = {**BASE["NPO"], "model_utility": 0.49, "forget_quality": 1e-4, "forget_Q_A_ROUGE": 0.44}
    npo_seed1 = {**scaled(BASE["NPO"], 1.1), "model_utility": 0.55 * 1.02}
    fake_run(root, "mpu-npo-k0.1-0", "NPO", 0, npo_seed0, kappa=0.1, m=3)
    fake_run(root, "mpu-npo-k0.1-1", "NPO", 1, npo_seed1, kappa=0.1, m=3)
    fake_run(root, "mpu-ga-k0.01-0", "GradAscent", 0, scaled(BASE["GradAscent"], 0.5), kappa=0.01, m=3)
    fake_run(root, "mpu-ga-lr-0", "GradAscent", 0, BASE["GradAscent"], kappa=0.01, m=3, lr=5e-4)  # no baseline
    return root, {"npo0": npo_seed0, "npo1": npo_seed1}


def test_report_degradation_numbers_files_and_plots(sweep, tmp_path, capsys):
    root, runs = sweep
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out)]) == 0

    metrics = ["model_utility", "forget_quality", "forget_Q_A_ROUGE", "forget_Q_A_Prob", "extraction_strength"]
    rows = {(r["method"], r["kappa"], r["m"]): r for r in csv.DictReader(open(out / "report.csv"))}
    assert set(rows) == {("NPO", "0.1", "3"), ("GradAscent", "0.01", "3")}

    npo = rows[("NPO", "0.1", "3")]
    base1 = scaled(BASE["NPO"], 1.1)
    seed0 = [expected_degradation(m, BASE["NPO"][m], runs["npo0"][m]) for m in metrics]
    seed1 = [expected_degradation(m, base1[m], runs["npo1"][m]) for m in metrics]
    assert seed0[0] == pytest.approx(2.0) and seed0[1] == pytest.approx(100 / 3) and seed0[2] == pytest.approx(10.0)
    assert seed1[0] == pytest.approx(-2.0) and seed1[1:] == pytest.approx([0, 0, 0, 0], abs=1e-9)
    for i, metric in enumerate(metrics):
        assert float(npo[f"deg_{metric}"]) == pytest.approx((seed0[i] + seed1[i]) / 2)
    averages = [sum(seed0) / 5, sum(seed1) / 5]
    assert float(npo["avg_deg"]) == pytest.approx(sum(averages) / 2)
    assert float(npo["avg_deg_std"]) == pytest.approx(abs(averages[0] - averages[1]) / math.sqrt(2))
    assert npo["n_seeds"] == "2"
    assert float(npo["baseline_model_utility"]) == pytest.approx((0.5 + 0.55) / 2)

    ga = rows[("GradAscent", "0.01", "3")]  # MPU halves every value: better utility? no, worse; better forgetting
    expected = [expected_degradation(m, BASE["GradAscent"][m], BASE["GradAscent"][m] * 0.5) for m in metrics]
    assert expected[0] == pytest.approx(50.0) and expected[2] == pytest.approx(-50.0)
    assert float(ga["avg_deg"]) == pytest.approx(sum(expected) / 5)
    assert ga["avg_deg_std"] == ""  # one seed: no spread

    text = (out / "report.md").read_text()
    assert "| NPO | 0.1 | 3 | 0,1 |" in text and f"{sum(averages) / 2:+.2f}%" in text
    assert "no noise-free baseline" in text and "mpu-ga-lr-0" in text
    assert "(target model)" in text
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == 7
    for png in ("degradation_vs_kappa.png", "utility_vs_forget_quality.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "wrote" in capsys.readouterr().out


def test_runs_recorded_before_the_rename_still_give_the_target_and_retain_rows(tmp_path):
    """run.json called the target and retain models' summaries "reference" before issue 15."""
    root, out = tmp_path / "sweep", tmp_path / "report"
    fake_run(root, "b-npo-0", "NPO", 0, BASE["NPO"], models_key="reference")
    fake_run(root, "mpu-npo-k0.1-0", "NPO", 0, BASE["NPO"], kappa=0.1, m=3, models_key="reference")

    assert main(["report", str(root), "--out", str(out)]) == 0

    text = (out / "report.md").read_text()
    assert "| (target model) | - | 0.6 |" in text and "| (retain model) | - | 0.58 |" in text
    assert json.loads((out / "report.json").read_text())["target_and_retain"]["retain"]["model_utility"] == 0.58


def test_report_with_chosen_metrics_and_privleak(sweep, tmp_path):
    root, runs = sweep
    out = tmp_path / "report"
    assert main(["report", str(root / "b-npo-0"), str(root / "mpu-npo-k0.1-0"), "--out", str(out), "--metrics", "privleak,model_utility"]) == 0
    (row,) = list(csv.DictReader(open(out / "report.csv")))
    assert float(row["deg_privleak"]) == pytest.approx(0.0)
    assert float(row["deg_model_utility"]) == pytest.approx(2.0)
    assert float(row["avg_deg"]) == pytest.approx(1.0)


def test_controls_are_separate_rows_with_their_variant(sweep, tmp_path):
    root, runs = sweep
    no_reparam = {"reparam": {"enabled": False}}
    fake_run(root, "mpu-npo-k0.1-0-plain", "NPO", 0, BASE["NPO"], kappa=0.1, m=3, server=no_reparam)
    # client_reference: reference_model_round's name in runs recorded before the rename, still read
    fake_run(root, "mpu-npo-k0.1-0-moving", "NPO", 0, BASE["NPO"], kappa=0.1, m=3, client_reference="round")
    fake_run(root, "mpu-npo-k0.1-0-first", "NPO", 0, runs["npo0"], kappa=0.1, m=3, reference_model_round="first",
             server={"reparam": {"enabled": True}})
    fake_run(root, "mpu-npo-k0.1-0-weights", "NPO", 0, BASE["NPO"], kappa=0.1, m=3,
             sigma_from="weights: sigma_l = kappa * RMS(theta_l), no base (CONTROL)")
    fake_run(root, "mpu-npo-k0.1-1-paper", "NPO", 1, BASE["NPO"], kappa=0.1, m=3,
             sigma_from="task-vector: sigma_l = kappa * RMS(theta_l - theta_base,l) (the paper)")
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out)]) == 0
    rows = {(r["method"], r["kappa"], r["variant"]): r for r in csv.DictReader(open(out / "report.csv"))}
    assert set(rows) == {("NPO", "0.1", ""), ("NPO", "0.1", "no reparam"), ("NPO", "0.1", "reference model per round"),
                         ("NPO", "0.1", "sigma from the weights"), ("GradAscent", "0.01", "")}
    assert rows[("NPO", "0.1", "sigma from the weights")]["seeds"] == "0"
    assert float(rows[("NPO", "0.1", "no reparam")]["avg_deg"]) == pytest.approx(0.0)  # identical to its baseline
    assert rows[("NPO", "0.1", "")]["seeds"] == "0 0 1 1"  # the explicit defaults join the unlabelled runs
    text = (out / "report.md").read_text()
    assert "| NPO | 0.1 | 3 | no reparam | 0 |" in text and "MPU κ=0.1 m=3 (reference model per round)" in text
    assert {row["variant"] for row in csv.DictReader(open(out / "runs.csv"))} == {
        "", "no reparam", "reference model per round", "sigma from the weights"}


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no run.json" in capsys.readouterr().err
    fake_run(tmp_path / "s", "b", "NPO", 0, BASE["NPO"])
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--metrics", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_degradation_edge_cases():
    from mpu.experiments.report import degradation

    assert degradation("model_utility", 0.0, 0.1) is None
    assert degradation("forget_quality", 1.0, 0.5) is None  # log10(1) = 0
    assert degradation("forget_quality", 0.0, 0.5) is None
    assert degradation("forget_Q_A_ROUGE", None, 0.5) is None
    assert degradation("privleak", -10.0, 5.0) == pytest.approx(-50.0)
    with pytest.raises(MPUError):
        degradation("nonsense", 1, 1)
