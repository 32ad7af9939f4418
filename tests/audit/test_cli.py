"""``mpu audit`` end to end on a tiny published outbox."""

from __future__ import annotations

import json

from mpu.cli import main

ATTACKS = {"average", "harmonic-public", "harmonic-estimated", "aligned-average", "aligned-harmonic-public",
           "aligned-harmonic-estimated", "aligned-oracle", "single-copy"}


def test_audit_cli_writes_every_attack(tmp_path, tiny_model_dir, tiny_base_dir, capsys):
    server, outbox, out = tmp_path / "server", tmp_path / "outbox", tmp_path / "audit.json"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--base", str(tiny_base_dir), "--workdir", str(server),
                 "--privacy", "paper", "--kappa", "0.01", "--seed", "7"]) == 0
    assert main(["server", "publish", "--workdir", str(server), "--out", str(outbox)]) == 0
    capsys.readouterr()

    code = main(["audit", "--inbox", str(outbox), "--true-weights", str(tiny_model_dir), "--base", str(tiny_base_dir),
                 "--out", str(out), "--oracle-alphas", "1,1.5,2", "--logit-sequences", "4"])

    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["format"] == "mpu-audit/2" and report["round"] == 1 and report["copies"] == [1, 2, 3]
    assert report["true_weights"] == str(tiny_model_dir) and report["alphas"]["public_schedule"] == [1.0, 1.5, 2.0]
    assert report["alignment"]["anchor_copy"] == 1
    assert set(report["attacks"]) == ATTACKS
    for name, attack in report["attacks"].items():
        assert name in printed
        for metric in ("weights_error", "task_vector_error"):
            for view in ("raw", "scored", "base_aligned"):
                entry = attack[metric][view]
                assert entry["overall"] >= 0 and set(entry["blocks"]) >= {"layer.0", "layer.1", "lm_head.weight"}
        assert 0 <= attack["logits"]["top1_agreement"] <= 1 and attack["logits"]["mean_kl"] >= 0
    # The paper's setting (public alphas, plane rotations, FFN permutation) is recoverable by a client.
    best = report["attacks"]["aligned-harmonic-public"]["task_vector_error"]["scored"]["overall"]
    assert best < 1e-3 * report["attacks"]["single-copy"]["task_vector_error"]["scored"]["overall"]
    assert report["summary"]["best_over_single_copy"] < 1e-3


def test_audit_cli_without_base_scores_full_weights_only(tmp_path, tiny_model_dir, capsys):
    server, outbox, out = tmp_path / "server", tmp_path / "outbox", tmp_path / "audit.json"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(server), "--privacy", "hardened", "--seed", "2"]) == 0
    assert main(["server", "publish", "--workdir", str(server), "--out", str(outbox)]) == 0

    # --reference: --true-weights' old name, still accepted
    assert main(["audit", "--inbox", str(outbox), "--reference", str(tiny_model_dir), "--out", str(out), "--logit-sequences", "2"]) == 0

    report = json.loads(out.read_text())
    assert report["summary"]["metric"] == "weights_error (scored)"
    assert all(attack["task_vector_error"] is None for attack in report["attacks"].values())
    assert set(report["attacks"]["aligned-average"]["weights_error"]) == {"raw", "scored"}
    # hardened: tau leaves a floor, but the aligned combination still beats a single copy
    assert 0.2 < report["summary"]["best_over_single_copy"] < 0.9
    assert "TV scored" not in capsys.readouterr().out


def test_audit_cli_without_true_weights_runs_the_attacks_unscored(tmp_path, tiny_model_dir, capsys):
    server, outbox, out = tmp_path / "server", tmp_path / "outbox", tmp_path / "audit.json"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(server), "--copies", "2", "--seed", "1"]) == 0
    assert main(["server", "publish", "--workdir", str(server), "--out", str(outbox)]) == 0

    assert main(["audit", "--inbox", str(outbox), "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert not report["scored"] and "single-copy" not in report["attacks"]
    assert {"average", "aligned-harmonic-estimated"} <= set(report["attacks"])
    assert report["alphas"]["estimated_aligned"]["alphas"] is None  # m = 2: not identifiable
    assert "nothing is scored" in capsys.readouterr().out


def test_audit_cli_refuses_a_missing_or_tampered_inbox(tmp_path, tiny_model_dir, capsys):
    assert main(["audit", "--inbox", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a.json")]) == 2
    assert "manifest" in capsys.readouterr().err
    server, outbox = tmp_path / "server", tmp_path / "outbox"
    main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(server), "--copies", "2", "--seed", "1"])
    main(["server", "publish", "--workdir", str(server), "--out", str(outbox)])
    (outbox / "copy-2" / "config.json").write_text("{}")
    assert main(["audit", "--inbox", str(outbox), "--out", str(tmp_path / "a.json")]) == 2
    # the tampered file is named (its contents are refused, or its checksum, whichever check runs first)
    assert "copy-2/config.json" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_audit_cli_refuses_outputs_that_replace_a_report_or_an_input(tmp_path, tiny_model_dir, capsys):
    server, outbox, out = tmp_path / "server", tmp_path / "outbox", tmp_path / "audit.json"
    assert main(["server", "init", "--model", str(tiny_model_dir), "--workdir", str(server), "--copies", "2", "--seed", "1"]) == 0
    assert main(["server", "publish", "--workdir", str(server), "--out", str(outbox)]) == 0
    out.write_text("an earlier report")
    inbox_files = sorted(path.relative_to(outbox) for path in outbox.rglob("*"))
    capsys.readouterr()

    refused = {
        "existing report": ["--out", str(out)],
        "report inside the inbox": ["--out", str(outbox / "audit.json")],
        "report inside the true weights": ["--out", str(tiny_model_dir / "audit.json"), "--true-weights", str(tiny_model_dir)],
        "recovered models into the inbox": ["--out", str(tmp_path / "a.json"), "--keep-recovered", str(outbox), "--overwrite"],
        "recovered models into a copy": ["--out", str(tmp_path / "a.json"), "--keep-recovered", str(outbox / "copy-1" / "x"),
                                          "--overwrite"],
        "recovered models over a folder of files": ["--out", str(tmp_path / "b.json"), "--keep-recovered", str(server)],
        "report where the recovered models go": ["--out", str(tmp_path / "rec" / "average"), "--keep-recovered",
                                                 str(tmp_path / "rec")],
    }
    for case, arguments in refused.items():
        assert main(["audit", "--inbox", str(outbox), *arguments]) == 2, case
        err = capsys.readouterr().err
        assert arguments[1 if "recovered models" not in case else 3] in err, (case, err)
    assert out.read_text() == "an earlier report"
    assert sorted(path.relative_to(outbox) for path in outbox.rglob("*")) == inbox_files
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()

    assert main(["audit", "--inbox", str(outbox), "--out", str(out), "--overwrite", "--logit-sequences", "2"]) == 0
    assert json.loads(out.read_text())["format"] == "mpu-audit/2"
