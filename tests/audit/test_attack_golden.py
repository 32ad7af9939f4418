"""``run_audit``'s whole report, pinned: a refactoring of the audit must not change a single key or number.

The golden file holds the full report dicts of four seeded tiny rounds (paper transforms with an
oracle; hardened transforms without a base; two copies without true weights; alignment switched off)
and a checksum of every recovered model, written by the audit before ``run_audit`` was split into
steps. Paths (tmp folders) are replaced by placeholders. Floats are compared to a relative 1e-6: the
arithmetic is deterministic on one torch thread, the slack only absorbs BLAS differences between machines.

To rewrite the golden file after an intended change of the report:
``MPU_WRITE_AUDIT_GOLDEN=1 pytest -n 0 tests/audit/test_attack_golden.py`` (and say why in the commit;
one process: every case rewrites the shared file, so parallel workers would lose each other's entries).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from mpu.audit import run_audit
from mpu.checkpoint import CheckpointReader
from mpu.reparam import ReparamConfig
from mpu.server.config import ServerConfig
from tests.audit.helpers import publish_round, true_alphas

GOLDEN = Path(__file__).parent / "golden" / "attack_reports.json"
HARDENED = ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True)

# name -> (server config, audit arguments: which of theta/base to pass, and the rest)
CASES = {
    "paper-with-oracle": (ServerConfig(copies=3, kappa=0.01, fixed_seed=11, independent_noise=0.5),
                          {"truth": True, "base": True, "oracle": True}),
    "hardened-no-base": (ServerConfig(copies=3, kappa=0.01, fixed_seed=12, independent_noise=1.0, reparam=HARDENED),
                         {"truth": True, "base": False}),
    "two-copies-unscored": (ServerConfig(copies=2, kappa=0.01, fixed_seed=13),
                            {"truth": False, "base": True}),
    "alignment-off": (ServerConfig(copies=3, kappa=0.01, fixed_seed=14, alpha_mode="public", independent_noise=0.0),
                      {"truth": True, "base": True, "align": False}),
}


def _checksums(folder: Path) -> dict[str, list[float]]:
    """Per recovered model: [sum, sum of squares] over all its tensors, in float64."""
    out = {}
    for model in sorted(p for p in folder.iterdir() if p.is_dir()):
        reader = CheckpointReader(model)
        tensors = [reader.get(name).to(torch.float64) for name in sorted(reader.names())]
        out[model.name] = [float(sum(t.sum() for t in tensors)), float(sum(t.square().sum() for t in tensors))]
    return out


def _audit(name, tmp_path, tiny_model_dir, tiny_base_dir) -> dict:
    config, how = CASES[name]
    server, outbox = publish_round(tmp_path, tiny_model_dir, tiny_base_dir, config)
    recovered = tmp_path / "recovered"
    result = run_audit(
        outbox, tiny_model_dir if how["truth"] else None, tiny_base_dir if how["base"] else None,
        align=how.get("align", True), oracle_alphas=true_alphas(server) if how.get("oracle") else None,
        oracle_tau=config.independent_noise if how.get("oracle") else 0.0,
        logit_sequences=3, logit_length=16, seed=4, keep_recovered=recovered,
    )
    text = json.dumps(result.report, sort_keys=True)
    for path, placeholder in ((outbox, "<inbox>"), (tiny_model_dir, "<true_weights>"), (tiny_base_dir, "<base>")):
        text = text.replace(str(path), placeholder)
    return {"report": json.loads(text), "recovered": _checksums(recovered),
            "alignments": {str(k): sorted(v) for k, v in result.alignments.items()},
            "recovered_dir_kept": result.recovered_dir == recovered}


def _differences(got, want, where="") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for key in want for d in _differences(got[key], want[key], f"{where}/{key}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _differences(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12) else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{where}: {got!r} != {want!r}"]


@pytest.mark.parametrize("name", list(CASES))
def test_the_audit_report_matches_the_golden_file(name, tmp_path, tiny_model_dir, tiny_base_dir):
    got = _audit(name, tmp_path, tiny_model_dir, tiny_base_dir)

    if os.environ.get("MPU_WRITE_AUDIT_GOLDEN"):
        if os.environ.get("PYTEST_XDIST_WORKER"):
            pytest.fail("MPU_WRITE_AUDIT_GOLDEN rewrites one shared file: run it in one process (pytest -n 0)")
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden file written")
    want = json.loads(GOLDEN.read_text())[name]
    assert _differences(got, want) == []
