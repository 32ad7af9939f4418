"""run_mpu's per-phase timings (what benchmarks/client_overhead.py reports)."""

from __future__ import annotations

import time

from mpu.data.qa import load_qa_rows
from mpu.methods import training_options
from mpu.run import PHASES, run_mpu
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
