"""Evaluation: one function per metric (:data:`METRICS`), benchmark suites with OpenUnlearning's key
names, and :func:`evaluate`, which writes ``<BENCH>_EVAL.json`` and ``<BENCH>_SUMMARY.json``."""

from mpu.eval.context import EvalContext, EvalDataset, MetricUnavailable
from mpu.eval.evaluator import evaluate, run_metrics
from mpu.eval.metrics import METRICS

__all__ = ["METRICS", "EvalContext", "EvalDataset", "MetricUnavailable", "evaluate", "run_metrics"]
