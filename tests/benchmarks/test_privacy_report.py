"""benchmarks/privacy_report.py on fake benchmark outputs: every marked part of the page is filled and
both frontier plots are written; nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

PARTS = ("audit-table", "weights-frontier", "hardened-cost", "dp-frontier", "dp-large")


@pytest.fixture(scope="module")
def report():
    return load_benchmark("privacy_report")


def utility(forget=1.0, retain=0.1, mu=0.9):
    return {"forget_nll": forget, "retain_nll": retain, "holdout_nll": 3.5, "model_utility": mu}


def audit_setting(kappa, tau, gain):
    return {"label": f"hardened, kappa = {kappa}, tau = {tau}",
            "config": {"kappa": kappa, "independent_noise": tau, "noise_scope": "all", "reparam": {"vo": "haar"}},
            "audit": {"summary": {"single_copy": 0.02, "best_attack": "aligned-harmonic-estimated", "best_error": 0.02 * gain,
                                  "best_over_single_copy": gain},
                      "attacks": {"single-copy": {"logits": {"top1_agreement": 0.9}},
                                  "aligned-harmonic-estimated": {"logits": {"top1_agreement": 0.95, "mean_kl": 1e-3}}}},
            "stolen_nll": {"best_attack": 0.0043},
            "methods": {"GradDiff": {"utility": utility(1.2), "distance_to_noise_free": 0.52}}}


def fake_outputs(root: Path) -> dict[str, Path]:
    audit, cost, dp, large = (root / name for name in ("audit", "cost", "dp", "large"))
    for folder in (audit, cost, dp, large):
        folder.mkdir()
    settings = {f"hardened{'' if k == 0.01 else '-k0.1'}-tau{t:g}": audit_setting(k, t, g)
                for k in (0.01, 0.1) for t, g in ((1, 0.34), (2, 0.48), (4, 0.551))}
    (audit / "results.json").write_text(json.dumps({"m": 3, "settings": settings, "theta_utility": utility(0.004, 0.003),
                                                    "baselines": {"GradDiff": {"utility": utility(1.1)}}}))
    runs = [{"method": m, "preset": p, "kappa": k, "seed": s, "forget_nll": 1.0 + (p == "hardened") * 0.25, "retain_nll": 0.1,
             "forget_Q_A_ROUGE": 0.3, "model_utility": 0.8 - (p == "hardened") * 0.015}
            for m in ("GradDiff", "NPO") for p in ("default", "hardened") for k in (0.01, 0.1) for s in (0, 1)]
    (cost / "cost.json").write_text(json.dumps({"runs": runs, "theta_utility": {**utility(0.61, 0.02), "forget_Q_A_ROUGE": 0.98}}))
    for folder, auc in ((dp, 0.812), (large, 0.577)):
        results = [{"method": m, "epsilon": e, "dp": None if e == "inf" else {"noise_multiplier": 1.39}, "best_auc": auc if e != "inf" else 0.99,
                    "best_auc_by_test": {"lira": auc}, "forget_Q_A_ROUGE": 0.3, "forget_quality": None, "forget_nll": 2.0,
                    "model_utility": 0.15, "client_train_seconds": 10.0 if e == "inf" else 25.0}
                   for m in ("NPO", "GradDiff") for e in ("inf", "8", "1")]
        (folder / "results.json").write_text(json.dumps({"target": {"model_utility": 0.157, "forget_Q_A_ROUGE": 0.405, "forget_nll": 0.1},
                                                         "results": results}))
    return {"audit": audit, "cost": cost, "dp": dp, "large": large}


def page_text() -> str:
    body = ["# Privacy", "", "Prose that stays."]
    for name in PARTS:
        body += ["", f"## {name}", f"<!-- privacy-report:{name} -->", "stale table", f"<!-- /privacy-report:{name} -->", "after"]
    return "\n".join(body) + "\n"


def run(report, tmp_path, outputs, page, *extra):
    return report.main(["--reuse-only", "--page", str(page), "--figures", str(tmp_path / "figures"),
                        "--audit-out", str(outputs["audit"]), "--cost-out", str(outputs["cost"]),
                        "--dp-out", str(outputs["dp"]), "--dp-large-out", str(outputs["large"]), *extra])


def between(text: str, name: str) -> str:
    start, end = f"<!-- privacy-report:{name} -->", f"<!-- /privacy-report:{name} -->"
    return text[text.index(start) + len(start):text.index(end)]


def test_every_part_is_filled_and_both_plots_written(report, tmp_path):
    outputs = fake_outputs(tmp_path)
    page = tmp_path / "privacy.md"
    page.write_text(page_text())

    code = run(report, tmp_path, outputs, page)

    text = page.read_text()
    assert code == 0
    assert "stale table" not in text
    assert text.count("Prose that stays.") == 1 and text.count("\nafter") == len(PARTS)
    assert "| 0.1 | 4 | aligned-harmonic-estimated | 0.55 |" in between(text, "weights-frontier")
    assert "hardened_frontier.png" in between(text, "weights-frontier")
    assert "| hardened, kappa = 0.01, tau = 4 |" in between(text, "audit-table")
    assert "| GradDiff | 0.1 | 2 |" in between(text, "hardened-cost") and "+0.250 ± 0.000" in between(text, "hardened-cost")
    assert "-0.015 ± 0.000" in between(text, "hardened-cost")
    assert "θ before unlearning: forget NLL 0.61" in between(text, "hardened-cost")
    assert "| NPO | 8 | 1.39 | 0.812 | 0.812 |" in between(text, "dp-frontier")
    assert "| GradDiff | 1 | 1.39 | 0.577 | 0.577 |" in between(text, "dp-large")
    for name in ("hardened_frontier.png", "dp_frontier.png", "dp_large.png"):
        image = tmp_path / "figures" / name
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 5000


def test_a_rerun_gives_the_same_page(report, tmp_path):
    outputs = fake_outputs(tmp_path)
    page = tmp_path / "privacy.md"
    page.write_text(page_text())
    run(report, tmp_path, outputs, page)
    first = page.read_text()

    run(report, tmp_path, outputs, page)

    assert page.read_text() == first


def test_a_missing_marker_is_refused_and_the_page_left_alone(report, tmp_path, capsys):
    outputs = fake_outputs(tmp_path)
    page = tmp_path / "privacy.md"
    broken = page_text().replace("<!-- /privacy-report:dp-large -->", "")
    page.write_text(broken)

    code = run(report, tmp_path, outputs, page)

    assert code == 2
    assert page.read_text() == broken
    assert "privacy.md" in capsys.readouterr().err


def test_a_part_without_output_is_left_as_it_was(report, tmp_path):
    outputs = fake_outputs(tmp_path)
    (outputs["large"] / "results.json").unlink()
    page = tmp_path / "privacy.md"
    page.write_text(page_text())

    run(report, tmp_path, outputs, page)

    text = page.read_text()
    assert "stale table" in between(text, "dp-large") and "stale table" not in between(text, "dp-frontier")
