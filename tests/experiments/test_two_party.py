"""run_mpu's per-phase timings (what benchmarks/client_overhead.py reports)."""

from __future__ import annotations

import time

from mpu.data.qa import load_qa_rows
from mpu.methods import training_options
from mpu.experiments.two_party import PHASES, run_mpu
from mpu.server.config import ServerConfig


def test_run_mpu_reports_the_seconds_of_each_phase_and_the_clients_steps(tmp_path, tiny_model_dir, forget_file):
    timings: dict[str, float] = {}
    config = ServerConfig(copies=2, kappa=0.01, rounds=2, fixed_seed=0)
    started = time.perf_counter()
    run_mpu(str(tiny_model_dir), None, config, load_qa_rows(forget_file), None, "GradAscent", {},
            training_options({"max_steps": 2}), tmp_path / "server", tmp_path / "model", progress=False, timings=timings)
    total = time.perf_counter() - started
    assert set(timings) == {*PHASES, "client_train", "steps"}
    assert timings["steps"] == 2 * 2 * 2  # rounds x copies x max_steps
    assert all(timings[phase] > 0 for phase in PHASES)
    assert 0 < timings["client_train"] < timings["client"]
    assert sum(timings[phase] for phase in PHASES) <= total
    assert any((tmp_path / "model").glob("*.safetensors"))


def test_sigma_base_is_given_recorded_or_a_labelled_fallback(tmp_path):
    """mpu run's noise scale basis (issue 13): --base, else the base mpu finetune recorded, else the
    whole weights with a label saying so; --sigma-from weights is the labelled control."""
    import json

    from mpu.experiments.two_party import resolve_sigma_base

    model, base = tmp_path / "model", tmp_path / "base"
    model.mkdir()
    base.mkdir()
    assert resolve_sigma_base(str(model), str(base))[0] == str(base)
    fallback, label = resolve_sigma_base(str(model), None)
    assert fallback is None and "no base model" in label
    (model / "mpu_finetune.json").write_text(json.dumps({"base": str(base)}))
    recorded, label = resolve_sigma_base(str(model), None)
    assert recorded == str(base) and "task vector" in label
    control, label = resolve_sigma_base(str(model), str(base), "weights")
    assert control is None and "control" in label
