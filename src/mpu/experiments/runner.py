"""One run: prepare data and models -> noise-free baseline or MPU -> evaluate -> run.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mpu.errors import MPUError
from mpu.experiments.config import ExperimentConfig, settings_from_config, to_plain
from mpu.experiments.sources import Prepared, prepare

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_FORMAT = "mpu-run/1"
MODEL_DIR = "model"


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _baseline(settings: ExperimentConfig, prepared: Prepared, out: Path) -> dict[str, Any]:
    """The method on the target itself, R*E epochs: exactly what ``mpu unlearn`` runs."""
    from mpu.methods.job import UnlearnJob, unlearn_model

    job = UnlearnJob(settings.method, settings.hparams, settings.training, prepared.forget_rows, prepared.retain_rows)
    result = unlearn_model(prepared.target, job, out)   # allow-listed files only: no metadata of the target
    losses = result.losses
    return {"steps": result.steps, "train_seconds": round(result.seconds, 3),
            "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None}}


def _mpu(settings: ExperimentConfig, prepared: Prepared, out: Path, run_dir: Path) -> dict[str, Any]:
    """R rounds of publish -> client -> aggregate through files (:func:`mpu.experiments.two_party.run_mpu`)."""
    from mpu.experiments.two_party import run_mpu
    from mpu.server.workdir import Workdir

    keep = settings.keep_server or settings.keep_exchange
    scratch = None if keep else tempfile.TemporaryDirectory(prefix="mpu-experiment-")
    workdir = (run_dir if keep else Path(scratch.name)) / "server"
    try:
        base = prepared.base if settings.sigma_from == "task-vector" else None
        run_mpu(prepared.target, base, settings.server, prepared.forget_rows, prepared.retain_rows,
                settings.method, settings.hparams, settings.training, workdir, out,
                keep_exchange=settings.keep_exchange, progress=settings.progress,
                reference_model_round=settings.reference_model_round, overwrite=True)   # the run's own folder
        state = Workdir(workdir).load()
        history = [dict(entry) for entry in state.history]
    finally:
        if scratch is not None:
            scratch.cleanup()
        elif not settings.keep_server:
            shutil.rmtree(workdir, ignore_errors=True)  # holds the round secrets: only kept on request
    return {"rounds": history, "copies_per_round": [len(entry.get("update_norms", [])) for entry in history]}


def sigma_label(settings: ExperimentConfig) -> str:
    """run.json's statement of what the noise scale was a fraction of."""
    if settings.sigma_from == "task-vector":
        return "task-vector: sigma_l = kappa * RMS(theta_l - theta_base,l) (the paper)"
    return "weights: sigma_l = kappa * RMS(theta_l), no base (CONTROL, harsher than the paper)"


def check_device(settings: ExperimentConfig) -> None:
    """Fail before any download or training when the config needs a GPU this machine lacks: bf16
    mixed precision (the real-model experiments) or evaluation.device=cuda. The message names the
    option to change."""
    import torch

    if torch.cuda.is_available():
        return
    if settings.training.bf16:
        raise MPUError("trainer.training.bf16=true needs a CUDA GPU and this machine has none; to run on the CPU add "
                       "trainer.training.bf16=false (float32; a 1B-parameter model is then very slow), or run on a GPU machine")
    if str(settings.evaluation.get("device") or "").startswith("cuda"):
        raise MPUError(f"evaluation.device={settings.evaluation['device']} needs a CUDA GPU and this machine has none; "
                       "set evaluation.device=cpu (or null)")


def _set_threads(settings: ExperimentConfig) -> None:
    from mpu.threads import apply_threads

    apply_threads(settings.threads)   # None: $MPU_THREADS or the measured default; 0: torch's own


def _fingerprint(path: str | None) -> str | None:
    if path is None:
        return None
    record = Path(path) / "mpu_finetune.json"
    if record.is_file():
        try:
            return json.loads(record.read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError):
            return None
    return None


def _evaluate(settings: ExperimentConfig, prepared: Prepared, model_dir: str, out_dir: Path | None, retain: str | None) -> dict:
    from mpu.eval import evaluate

    evaluation = settings.evaluation
    return evaluate(
        model_dir, settings.benchmark, data=prepared.eval_data,
        forget_split=settings.data.get("forget_split") if settings.benchmark == "tofu" else None,
        retain_model=retain, out_dir=out_dir, batch_size=evaluation.get("batch_size"), config=settings.suite,
        device=evaluation.get("device"), dtype=evaluation.get("dtype", "auto"), progress=settings.progress,
    )


def target_and_retain_summaries(settings: ExperimentConfig, prepared: Prepared) -> dict[str, dict]:
    """The target's and retain model's summaries on the same suite, evaluated once and cached under
    ``$MPU_CACHE/evals`` (keyed by model, its fingerprint, data, split and suite)."""
    from mpu.data.builtin import cache_root

    out: dict[str, dict] = {}
    for name, model in (("target", prepared.target), ("retain", prepared.retain)):
        if model is None:
            continue
        retain = prepared.retain if name == "target" else None
        key = json.dumps({"model": model, "fingerprint": _fingerprint(model), "retain": retain,
                          "retain_fingerprint": _fingerprint(retain), "data": prepared.data_description,
                          "split": settings.data.get("forget_split"), "suite": settings.suite,
                          "benchmark": settings.benchmark}, sort_keys=True, default=str)
        folder = cache_root() / "evals" / hashlib.sha256(key.encode()).hexdigest()[:20]
        summary_file = folder / f"{settings.benchmark.upper()}_SUMMARY.json"
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
        else:
            summary = _evaluate(settings, prepared, model, folder, retain)
            (folder / "key.json").write_text(key + "\n")
        if name == "retain" and settings.benchmark == "tofu" and summary.get("forget_quality") is None:
            summary = {**summary, "forget_quality": 1.0}  # the retain model against itself (KS p-value of identical samples)
        out[name] = summary
    return out


def run_experiment(cfg, run_dir: str | Path, experiment: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run the baseline or MPU as ``cfg`` says, evaluate, and write the run directory. Returns run.json's content."""
    started = time.perf_counter()
    settings = settings_from_config(cfg)
    check_device(settings)
    _set_threads(settings)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    step = time.perf_counter()
    prepared = prepare(settings)
    seconds["prepare"] = time.perf_counter() - step

    record: dict[str, Any] = {
        "format": RUN_FORMAT,
        "status": "running",
        "experiment": experiment,
        "overrides": list(overrides or []),
        "mode": settings.mode,
        "method": settings.method,
        "kappa": settings.kappa,
        "m": settings.copies,
        "R": settings.rounds,
        "E": settings.epochs_per_round,
        "epochs_total": settings.epochs_total,
        "seed": settings.seed,
        "benchmark": settings.benchmark,
        "forget_split": None if settings.data.get("forget_file") else settings.data.get("forget_split"),
        "data": {**settings.data, "description": prepared.data_description,
                 "forget_rows": len(prepared.forget_rows), "retain_rows": len(prepared.retain_rows or [])},
        "models": {"target": prepared.target, "retain": prepared.retain, "base": prepared.base},
        "hparams": dataclasses.asdict(settings.hparams),
        "training": dataclasses.asdict(settings.training),
        "server": settings.server.to_dict() if settings.server is not None else None,
        "reference_model_round": settings.reference_model_round if settings.server is not None else None,
        "sigma_from": sigma_label(settings) if settings.server is not None else None,
        "config": to_plain(cfg),
    }
    _write_json(run_dir / RUN_FILE, record)

    model_dir = run_dir / MODEL_DIR
    scratch = None
    if not settings.save_model:
        scratch = tempfile.TemporaryDirectory(prefix="mpu-model-")
        model_dir = Path(scratch.name) / MODEL_DIR
    try:
        step = time.perf_counter()
        if settings.mode == "mpu":
            log.info("MPU: %s, m=%d, kappa=%g, R=%d x E=%g epochs", settings.method, settings.copies, settings.kappa,
                     settings.rounds, settings.epochs_per_round)
            record["unlearning"] = _mpu(settings, prepared, model_dir, run_dir)
        else:
            log.info("noise-free baseline: %s, %g epochs", settings.method, settings.epochs_total)
            record["unlearning"] = _baseline(settings, prepared, model_dir)
        seconds["unlearn"] = time.perf_counter() - step
        record["model_dir"] = MODEL_DIR if settings.save_model else None
        record["status"] = "unlearned"
        record["seconds"] = {key: round(value, 2) for key, value in seconds.items()}
        _write_json(run_dir / RUN_FILE, record)

        if settings.evaluation.get("enabled", True):
            step = time.perf_counter()
            record["summary"] = _evaluate(settings, prepared, str(model_dir), run_dir, prepared.retain)
            seconds["eval"] = time.perf_counter() - step
            if settings.evaluation.get("target_and_retain", True):
                step = time.perf_counter()
                record["target_and_retain"] = target_and_retain_summaries(settings, prepared)
                seconds["eval_target_and_retain"] = time.perf_counter() - step
    finally:
        if scratch is not None:
            scratch.cleanup()
    seconds["total"] = time.perf_counter() - started
    record["seconds"] = {key: round(value, 2) for key, value in seconds.items()}
    record["status"] = "done"
    _write_json(run_dir / RUN_FILE, record)
    return record


def _resolve_model_path(value: str, prepared: Prepared) -> str:
    if value == "target":
        return prepared.target
    if value == "retain":
        if prepared.retain is None:
            raise MPUError("model_path=retain, but the experiment has no retain model")
        return prepared.retain
    path = Path(value).expanduser()
    if (path / RUN_FILE).is_file():
        record = json.loads((path / RUN_FILE).read_text())
        if not record.get("model_dir"):
            raise MPUError(f"{path}: the run did not save its model (save_model=false)")
        return str(path / record["model_dir"])
    return value


def evaluate_experiment(cfg, out_dir: str | Path) -> dict:
    """``src/eval.py``: evaluate ``cfg.model_path`` (a run dir, a checkpoint, a hub id, or the
    experiment's ``target``/``retain``) with the experiment's data, retain model and suite."""
    plain = to_plain(cfg)
    model_path = plain.get("model_path")
    if not model_path:
        raise MPUError("set model_path=... (a run directory, a model directory, a hub id, target or retain)")
    settings = settings_from_config({key: value for key, value in plain.items() if key != "model_path"})
    if not settings.evaluation.get("enabled", True):
        raise MPUError("evaluation.enabled is false: nothing to do")
    check_device(settings)
    _set_threads(settings)
    prepared = prepare(settings)
    model = _resolve_model_path(str(model_path), prepared)
    retain = prepared.retain if model != prepared.retain else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = _evaluate(settings, prepared, model, out, retain)
    _write_json(out / "eval.json", {"model": model, "retain": retain, "benchmark": settings.benchmark,
                                    "forget_split": settings.data.get("forget_split"), "summary": summary})
    return summary


def read_run(run_dir: str | Path) -> dict:
    """run.json of a run directory, with ``summary`` filled from ``<BENCH>_SUMMARY.json`` when needed."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise MPUError(f"{path}: unreadable run record ({err})") from None
    if not isinstance(record, dict):
        raise MPUError(f"{path}: not a run record")
    if not record.get("summary"):
        bench = str(record.get("benchmark") or "tofu").upper()
        summary_path = run_dir / f"{bench}_SUMMARY.json"
        if summary_path.is_file():
            try:
                record["summary"] = json.loads(summary_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise MPUError(f"{summary_path}: unreadable summary ({err})") from None
    return record
