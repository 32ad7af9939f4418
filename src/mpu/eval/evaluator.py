"""Run a benchmark suite on a checkpoint and write ``<BENCH>_EVAL.json`` and ``<BENCH>_SUMMARY.json``.

``<BENCH>_EVAL.json`` maps every computed metric key (sub-metrics included, as OpenUnlearning's
evaluator logs them) to its result; ``<BENCH>_SUMMARY.json`` maps the headline keys to their
``agg_value``. ``<BENCH>_EVAL_CONFIG.json`` records what was evaluated.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpu.data.loaders import DataUnavailableError, ResolvedData, require_fields, resolve_source
from mpu.errors import InputError, MPUError
from mpu.eval.context import EvalContext, EvalDataset, MetricUnavailable, check_same_encoding
from mpu.eval.metrics import METRICS
from mpu.eval.provenance import model_data  # noqa: F401  (re-exported: mpu.eval.evaluator.model_data)
from mpu.eval.suites import default_suite, wmdp_metric_key

log = logging.getLogger(__name__)

REQUIRED_FIELDS = {
    "qa": ("question", "answer"),
    "icl_qa": ("question", "answer"),
    "completion": ("prompt", "gt"),
    "text": ("text",),
    "mcq": ("question", "choices", "answer"),
}


def _json_default(value):
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(_clean(json.loads(json.dumps(payload, default=_json_default))), handle, indent=4)
        handle.write("\n")
    os.replace(tmp, path)


def load_suite(benchmark: str, config: str | Path | dict | None) -> dict:
    suite = default_suite(benchmark)
    if config is None:
        return suite
    if not isinstance(config, dict):
        from omegaconf import OmegaConf

        path = Path(config)
        if not path.is_file():
            raise InputError(path, "no such config file")
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if config.get("benchmark", benchmark) != benchmark:
        raise MPUError(f"the config is for benchmark {config['benchmark']!r}, not {benchmark!r}")
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(suite.get(key), dict) and key != "metrics":
            suite[key] = {**suite[key], **value}
        else:
            suite[key] = value
    return suite


def _holdout_for(forget_split: str) -> str:
    match = re.fullmatch(r"forget(\d+)", forget_split)
    if not match:
        raise MPUError(f"cannot tell the holdout split for forget split {forget_split!r}; set holdout_split")
    return f"holdout{match.group(1)}"


def build_datasets(suite: dict, resolved: ResolvedData, missing: dict[str, str] | None = None) -> dict[str, EvalDataset]:
    """Load every dataset the suite names (TOFU/MUSE) from ``resolved``.

    A dataset the local copy does not have is left out and its reason put in ``missing`` (name ->
    why), so that the suite runs on the subsets that exist (MUSE-Books has no knowmem, say); the
    metrics that need it are then skipped with that reason. Without ``missing`` every dataset is
    required. A malformed or empty file is always an error. Raises DataUnavailableError when none
    of the datasets exists.
    """
    names = {}
    if suite["benchmark"] == "tofu":
        forget_split = suite["forget_split"]
        names = {"forget_split": forget_split, "holdout_split": suite.get("holdout_split") or _holdout_for(forget_split)}
    datasets = {}
    for name, spec in suite["datasets"].items():
        config = spec.get("config")
        config = config.format(**names) if config else config
        split = spec.get("split", "train")
        where = f"{resolved.description} [{config}/{split}]"
        try:
            rows = resolved.rows(config, split)
            icl = resolved.rows(config, spec["icl"]) if spec.get("icl") else []
        except DataUnavailableError as err:
            # A forget split the user named (or the suite's default) must exist: skipping its metrics
            # would report a run on nothing as a success.
            if missing is None or "{forget_split}" in (spec.get("config") or ""):
                raise
            missing[name] = str(err)
            continue
        rows = require_fields(rows, REQUIRED_FIELDS[spec["kind"]], where)   # present but malformed: an error
        datasets[name] = EvalDataset(name, spec["kind"], rows, icl=icl, source=where)
    if not datasets:
        reasons = "; ".join(f"{name}: {why}" for name, why in (missing or {}).items())
        raise DataUnavailableError(f"{resolved.description}: none of the suite's datasets exists ({reasons})")
    return datasets


def build_wmdp(suite: dict, resolved: ResolvedData, mmlu: str | None = "default") -> tuple[dict, dict]:
    """(datasets, metric specs) for the WMDP subsets and the MMLU-style utility set."""
    builtin = (resolved.builtin or {}).get("wmdp")
    subsets, mode, utility = suite["subsets"], suite.get("mode", "auto"), suite.get("utility")
    if builtin:
        subsets = builtin["subsets"]
        mode = builtin.get("mode", mode) if mode == "auto" else mode
        utility = {"data": None, "config": builtin["utility"], "split": suite.get("split", "test"), "key": "mmlu"}
    if mmlu is None:
        utility = None
    elif mmlu != "default" and utility is not None:
        utility = {**utility, "data": mmlu}
    limit = suite.get("limit")
    datasets, metrics = {}, {}
    for subset in subsets:
        where = f"{resolved.description} [{subset}/{suite.get('split', 'test')}]"
        rows = require_fields(resolved.rows(subset, suite.get("split", "test")), REQUIRED_FIELDS["mcq"], where)
        rows = rows[:limit] if limit else rows
        subject = {"bio": "biology", "chem": "chemistry", "cyber": "computer security"}.get(subset.split("-")[-1], "")
        datasets[subset] = EvalDataset(subset, "mcq", rows, mode=mode, subject=subject)
        metrics[wmdp_metric_key(subset)] = {"handler": "mcq_accuracy", "data": subset}
    if utility:
        source = resolved if utility.get("data") is None else resolve_source(utility["data"], "mmlu", flag="--mmlu")
        where = f"{source.description} [{utility['config']}/{utility['split']}]"
        rows = require_fields(source.rows(utility["config"], utility["split"]), REQUIRED_FIELDS["mcq"], where)
        rows = rows[:limit] if limit else rows
        datasets["utility"] = EvalDataset("utility", "mcq", rows, mode=mode)
        metrics[utility.get("key", "mmlu")] = {"handler": "mcq_accuracy", "data": "utility"}
    return datasets, metrics


def run_metrics(ctx: EvalContext, metrics: dict, keys: list[str] | None = None, reference_logs: dict | None = None,
                progress: bool = False, desc: str = "eval", skipped: dict[str, str] | None = None) -> dict:
    """Compute ``keys`` (default: all) with their pre-computes; returns {key: result} for every metric
    computed, skipping the ones that are unavailable (logged, and put in ``skipped``: key -> why)."""
    from tqdm.auto import tqdm

    keys = list(metrics) if keys is None else keys
    logs: dict[str, Any] = {}
    skipped = {} if skipped is None else skipped

    def compute(key: str):
        if key in logs:
            return logs[key]
        if key in skipped:
            raise MetricUnavailable(skipped[key])
        if key not in metrics:
            raise MPUError(f"metric {key!r} is not defined in the suite")
        spec = dict(metrics[key])
        handler = METRICS.get(spec.pop("handler"))
        pre = spec.pop("pre_compute", None)
        refs = spec.pop("reference_logs", None)
        if pre:
            spec["pre_compute"] = {access: compute(name) for name, access in pre.items()}
        if refs:
            spec["reference_logs"] = {access: (reference_logs or {}).get(name) for name, access in refs.items()}
        try:
            logs[key] = handler(ctx, **spec)
        except MetricUnavailable as err:
            skipped[key] = str(err)
            raise
        return logs[key]

    bar = tqdm(keys, desc=desc, disable=not progress, leave=False, unit="metric")
    for key in bar:
        bar.set_postfix_str(key)
        try:
            compute(key)
        except MetricUnavailable as err:
            log.info("skipping %s: %s", key, err)
    bar.close()
    return logs


def _reference_keys(metrics: dict) -> list[str]:
    return sorted({name for spec in metrics.values() for name in (spec.get("reference_logs") or {})})


def _load_retain_logs(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*_EVAL.json"))
        if len(found) != 1:
            raise InputError(path, "expected exactly one *_EVAL.json in this directory")
        path = found[0]
    try:
        logs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a JSON eval log ({err})") from None
    if not isinstance(logs, dict):
        raise InputError(path, "not a JSON object of metric results")
    return logs


def _retain_logs_encoding(path: str | Path) -> dict | None:
    """The encoding recorded next to retain logs (``<BENCH>_EVAL_CONFIG.json``), None when absent."""
    path = Path(path)
    configs = sorted(path.glob("*_EVAL_CONFIG.json")) if path.is_dir() else [path.with_name(path.name.replace("_EVAL.json", "_EVAL_CONFIG.json"))]
    for config in configs:
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("encoding")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _check_reference(logs: dict, ours: dict, source: str) -> None:
    """The retain model's logs must describe the same items (same forget split)."""
    for key, result in logs.items():
        if not isinstance(result, dict) or key not in ours:
            continue
        if key == "forget_truth_ratio":
            theirs, mine = len(result.get("value_by_index", {})), len(ours[key].get("value_by_index", {}))
            if theirs and mine and theirs != mine:
                raise MPUError(f"{source}: {key} has {theirs} items, this evaluation has {mine} "
                               "(was it computed on another forget split?)")


def _tokenizer_mismatch(tokenizer, reference_tokenizer, model_dir, retain_model) -> str | None:
    """Why the retain model cannot be mia_reference's reference (None when it can): the attack
    subtracts per-token losses, which only compare under one tokenizer."""
    ours, theirs = tokenizer.get_vocab(), reference_tokenizer.get_vocab()
    if ours == theirs:
        return None
    shared = sum(1 for token, index in ours.items() if theirs.get(token) == index)
    return (f"mia_reference needs the retain model to share the model's tokenizer, but {retain_model} and "
            f"{model_dir} have different ones ({shared} of {len(ours)} tokens agree); train both on one "
            f"dataset's tokenizer (mpu finetune does: docs/data.md)")


@dataclass
class _SuiteData:
    """A suite resolved against the data: the datasets that exist, the metrics to compute, the keys
    the summary keeps, and the suite datasets the local copy lacks (name -> why)."""

    suite: dict
    resolved: ResolvedData
    datasets: dict[str, EvalDataset]
    metrics: dict
    summary_keys: list[str]
    missing: dict[str, str]


@dataclass
class _RetainReference:
    """What the retain model (a checkpoint never trained on the forget set) contributes: its logs of
    the metrics that compare against it (forget_quality, privleak; ``{}`` without one), the model
    itself for mia_reference (None when not given or unusable: ``unavailable`` says why), and the
    encoding its logs were computed with (None when unknown)."""

    logs: dict = field(default_factory=dict)
    model: Any = None
    unavailable: str | None = None
    encoding: dict | None = None


def evaluate(
    model_dir: str | Path,
    benchmark: str = "tofu",
    data: str | Path | None = None,
    forget_split: str | None = None,
    retain_model: str | Path | None = None,
    retain_logs: str | Path | None = None,
    out_dir: str | Path | None = None,
    batch_size: int | None = None,
    config: str | Path | dict | None = None,
    device: str | None = None,
    dtype: str = "auto",
    progress: bool = True,
    mmlu: str | None = "default",
    prompt_format=None,
    max_length: int | None = None,
    truncate: bool = False,
) -> dict:
    """Evaluate ``model_dir`` on ``benchmark`` and return the summary (headline key -> value).

    ``forget_split`` (TOFU): forget01, forget05 or forget10 (default: the suite's, forget10).
    ``data``: None for the built-in benchmark (built and cached on first use), a local directory in
    the hub layout, or a hub dataset name. ``retain_model`` (a checkpoint never trained on the forget
    set) or ``retain_logs`` (its ``<BENCH>_EVAL.json``) give forget_quality and privleak their
    reference; ``retain_model`` also enables mia_reference. ``mmlu`` (WMDP only): the utility data
    ("default": the suite's, None: skip). ``prompt_format`` (default ``auto``: a known target's shipped
    settings, else the chat template), ``max_length`` (default: the model's context) and ``truncate``
    are the encoding (docs/encoding.md); it is recorded in ``<BENCH>_EVAL_CONFIG.json`` and retain
    logs or a retain model evaluated with another one are refused (MPUError), as is giving both.
    """
    from mpu.eval.engine import load_model

    if retain_model is not None and retain_logs is not None:
        raise MPUError("give --retain-model or --retain-logs, not both")
    started = time.perf_counter()
    suite_data = _suite_data(benchmark, config, forget_split, data, mmlu)
    batch_size = batch_size or suite_data.suite.get("batch_size", 32)
    model, tokenizer = load_model(model_dir, device=device, dtype=dtype)
    encoding = dict(prompt_format=_prompt_format(prompt_format, model_dir), max_length=max_length, truncate=truncate)
    if retain_logs is not None:
        retain = _RetainReference(_load_retain_logs(retain_logs))
    elif retain_model is not None:
        retain = _evaluate_retain_model(retain_model, suite_data, batch_size, encoding, device, dtype, progress,
                                        model_dir, tokenizer, benchmark)
    else:
        retain = _RetainReference()

    ctx = EvalContext(model, tokenizer, suite_data.datasets, batch_size, reference_model=retain.model, **encoding)
    # One encoding for the model and its reference, else their losses do not compare.
    if retain_logs is not None:
        check_same_encoding(ctx.encoding_record(), _retain_logs_encoding(retain_logs), str(retain_logs))
    elif retain_model is not None:
        check_same_encoding(ctx.encoding_record(), retain.encoding, str(retain_model))
    ctx.missing = suite_data.missing
    if retain.unavailable:
        ctx.reference_unavailable = retain.unavailable
    logs, skipped = _run_suite(ctx, suite_data, retain.logs, progress, benchmark)
    if retain_logs is not None:
        _check_reference(retain.logs, logs, str(retain_logs))
    summary = {key: logs[key]["agg_value"] for key in suite_data.summary_keys if key in logs}
    summary = _clean(json.loads(json.dumps(summary, default=_json_default)))
    elapsed = time.perf_counter() - started

    if out_dir is not None:
        _write_outputs(Path(out_dir), benchmark, logs, summary, {
            "model": str(model_dir), "benchmark": benchmark, "data": suite_data.resolved.description,
            "forget_split": suite_data.suite.get("forget_split") if benchmark == "tofu" else None,
            "retain_model": str(retain_model) if retain_model else None,
            "retain_logs": str(retain_logs) if retain_logs else None,
            "batch_size": batch_size, "device": str(next(model.parameters()).device), "dtype": dtype,
            "seconds": round(elapsed, 2), "suite": {**suite_data.suite, "metrics": suite_data.metrics},
            "missing_data": suite_data.missing, "skipped_metrics": skipped, "encoding": ctx.encoding_record(),
        })
    log.info("%s evaluation of %s took %.1f s", benchmark, model_dir, elapsed)
    return summary


# Steps of evaluate -------------------------------------------------------------------------------


def _suite_data(benchmark: str, config, forget_split: str | None, data, mmlu: str | None) -> _SuiteData:
    """Load the suite (``config`` over the benchmark's default), fix TOFU's forget split (the
    argument, else the suite's, else forget10), resolve ``data`` and load the datasets. WMDP builds
    its metrics from the subsets the data holds, and all of them are headline keys."""
    suite = load_suite(benchmark, config)
    if benchmark == "tofu":
        suite["forget_split"] = forget_split or suite.get("forget_split") or "forget10"
    resolved = resolve_source(data, benchmark)
    missing: dict[str, str] = {}
    if benchmark == "wmdp":
        datasets, metrics = build_wmdp(suite, resolved, mmlu)
        return _SuiteData(suite, resolved, datasets, metrics, list(metrics), missing)
    datasets = build_datasets(suite, resolved, missing)
    return _SuiteData(suite, resolved, datasets, suite["metrics"], suite["summary"], missing)


def _prompt_format(prompt_format, model_dir: str | Path):
    """The prompt format for the model and its retain model alike: a PromptFormat is kept; a name
    (None: ``auto``) resolves to the one the model records (mpu unlearn's summary) when ``auto``, else
    to the model's shipped settings (by its name or directory), else its chat template."""
    if prompt_format is not None and not isinstance(prompt_format, str):
        return prompt_format
    from mpu.data.templates import recorded_format, resolve_format

    spec = prompt_format or "auto"
    return (spec == "auto" and recorded_format(model_dir)) or resolve_format(spec, model_name=str(model_dir))


def _evaluate_retain_model(retain_model, suite_data: _SuiteData, batch_size: int, encoding: dict, device, dtype: str,
                           progress: bool, model_dir, tokenizer, benchmark: str) -> _RetainReference:
    """Load the retain model and compute the metrics the suite compares against it, on the same
    datasets and encoding. It serves mia_reference only when it shares the model's tokenizer (the
    attack subtracts per-token losses); otherwise a warning says why and the model is dropped."""
    from mpu.eval.engine import load_model

    model, retain_tokenizer = load_model(retain_model, device=device, dtype=dtype)
    ctx = EvalContext(model, retain_tokenizer, suite_data.datasets, batch_size, **encoding)
    logs = run_metrics(ctx, suite_data.metrics, keys=_reference_keys(suite_data.metrics), progress=progress,
                       desc=f"{benchmark} retain model")
    unavailable = _tokenizer_mismatch(tokenizer, retain_tokenizer, model_dir, retain_model)
    if unavailable:
        log.warning("%s", unavailable)
        model = None
    return _RetainReference(logs, model, unavailable, ctx.encoding_record())


def _run_suite(ctx: EvalContext, suite_data: _SuiteData, reference_logs: dict, progress: bool, benchmark: str) -> tuple[dict, dict]:
    """Every metric of the suite on ``ctx``: (logs: key -> result, skipped: key -> why), with a
    warning per dataset the data lacks and one listing the skipped metrics."""
    skipped: dict[str, str] = {}
    logs = run_metrics(ctx, suite_data.metrics, reference_logs=reference_logs, progress=progress,
                       desc=f"{benchmark} eval", skipped=skipped)
    for name, why in suite_data.missing.items():
        log.warning("no %s data: %s", name, why)
    if skipped:
        log.warning("skipped %d metric(s): %s", len(skipped), "; ".join(f"{key}: {why}" for key, why in skipped.items()))
    return logs, skipped


def output_names(benchmark: str) -> tuple[str, str, str]:
    """The files an evaluation of ``benchmark`` writes: ``<BENCH>_EVAL.json``, ``_SUMMARY.json``, ``_EVAL_CONFIG.json``."""
    name = benchmark.upper()
    return f"{name}_EVAL.json", f"{name}_SUMMARY.json", f"{name}_EVAL_CONFIG.json"


def _write_outputs(out: Path, benchmark: str, logs: dict, summary: dict, record: dict) -> None:
    """``<BENCH>_EVAL.json`` (every result), ``<BENCH>_SUMMARY.json`` (headline values) and
    ``<BENCH>_EVAL_CONFIG.json`` (``record``: what was evaluated, how), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for file, data in zip(output_names(benchmark), (logs, summary, record)):
        write_json(out / file, data)
