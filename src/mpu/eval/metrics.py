"""The metrics, one small function each, in one registry (OpenUnlearning's handler names).

A metric is called as ``fn(ctx, **settings)`` and returns ``{"agg_value": ..., "value_by_index":
{...}}`` (MIA metrics add ``forget``, ``holdout`` and ``auc``). Settings name datasets of the
:class:`~mpu.eval.context.EvalContext` (``data``), the answer field to score (``answer_key``),
results of other metrics (``pre_compute``: access name -> result) and results read from the retain
model's logs (``reference_logs``: access name -> result or None).

Definitions (SPEC §9, matching OpenUnlearning):
- p = exp(-mean NLL over the answer tokens, EOS included);
- token-wise metrics (exact_memorization, extraction_strength, MinK, MinK++, GradNorm) leave out a
  final EOS label, as OpenUnlearning does;
- MIA scores are "higher = less member-like"; AUC uses label 0 for forget (members) and 1 for
  holdout, so a model that memorised the forget set has AUC near 1.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import numpy as np

from mpu.eval.context import EvalContext, MetricUnavailable, mcq_answer_index, mcq_mode
from mpu.eval.engine import TokenStats
from mpu.registry import Registry

METRICS: Registry = Registry("metric")

logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs every scorer it builds

EPS = 1e-10


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _items_mean(value) -> float:
    """OpenUnlearning's aggregate_to_1D for one item: the mean when there are several answers."""
    return float(np.mean(value)) if isinstance(value, list) else float(value)


# --- probabilities -------------------------------------------------------------------------------

@METRICS.register("probability")
def probability(ctx: EvalContext, data: str, answer_key: str | None = None, **_) -> dict:
    """Q_A_Prob: the length-normalised answer probability exp(-mean NLL), per item and averaged."""
    by_index = {}
    for i, stats in enumerate(ctx.stats(data, answer_key)):
        if isinstance(stats, list):
            losses = [s.avg_loss for s in stats]
            by_index[str(i)] = {"prob": [math.exp(-x) for x in losses], "avg_loss": losses}
        else:
            by_index[str(i)] = {"prob": math.exp(-stats.avg_loss), "avg_loss": stats.avg_loss}
    return {"agg_value": _mean(_items_mean(v["prob"]) for v in by_index.values()), "value_by_index": by_index}


@METRICS.register("probability_w_options")
def probability_w_options(ctx: EvalContext, pre_compute: dict, **_) -> dict:
    """Normalised Prob: p_correct / (p_correct + sum of p_wrong)."""
    correct, wrong = pre_compute["correct"]["value_by_index"], pre_compute["wrong"]["value_by_index"]
    by_index = {}
    for index in correct:
        p_correct = _items_mean(correct[index]["prob"])
        p_wrong = float(np.sum(wrong[index]["prob"]))
        by_index[index] = {"prob": p_correct / (p_correct + p_wrong + EPS)}
    return {"agg_value": _mean(v["prob"] for v in by_index.values()), "value_by_index": by_index}


@METRICS.register("truth_ratio")
def truth_ratio(ctx: EvalContext, pre_compute: dict, aggregator: str = "closer_to_1_better", **_) -> dict:
    """TR = p_wrong / p_correct with p = exp(-mean NLL) and p_wrong from the mean of the perturbed
    answers' mean NLLs. Forget: mean(min(TR, 1/TR)); elsewhere: mean(max(0, 1 - TR))."""
    correct, wrong = pre_compute["correct"]["value_by_index"], pre_compute["wrong"]["value_by_index"]
    by_index = {}
    for index in correct:
        p_correct = math.exp(-_items_mean(correct[index]["avg_loss"]))
        p_wrong = math.exp(-_items_mean(wrong[index]["avg_loss"]))
        by_index[index] = {"score": p_wrong / (p_correct + EPS)}
    scores = np.array([v["score"] for v in by_index.values()])
    if aggregator == "closer_to_1_better":
        agg = float(np.mean(np.minimum(scores, 1 / (scores + EPS))))
    elif aggregator == "true_better":
        agg = float(np.mean(np.maximum(0, 1 - scores)))
    else:
        raise ValueError(f"unknown truth ratio aggregator {aggregator!r}")
    return {"agg_value": agg, "value_by_index": by_index}


@METRICS.register("forget_quality")
def forget_quality(ctx: EvalContext, pre_compute: dict, reference_logs: dict | None = None, **_) -> dict:
    """p-value of the two-sample KS test between this model's forget truth ratios and the retain
    model's (None without the retain model or its logs)."""
    from scipy.stats import ks_2samp

    reference = (reference_logs or {}).get("retain")
    if not reference:
        return {"agg_value": None, "note": "no retain model logs: pass --retain-model or --retain-logs"}
    ours = [v["score"] for v in pre_compute["forget"]["value_by_index"].values()]
    theirs = [v["score"] for v in reference["value_by_index"].values()]
    return {"agg_value": float(ks_2samp(ours, theirs).pvalue)}


@METRICS.register("hm_aggregate")
def hm_aggregate(ctx: EvalContext, pre_compute: dict, **_) -> dict:
    """model_utility: the harmonic mean of the pre-computed metrics' aggregate values."""
    from scipy.stats import hmean

    values = [result["agg_value"] for result in pre_compute.values()]
    if any(v is None for v in values):
        return {"agg_value": None}
    if min(values) <= 0:
        return {"agg_value": 0.0}
    return {"agg_value": float(hmean(values))}


# --- generation ---------------------------------------------------------------------------------

@METRICS.register("rouge")
def rouge(ctx: EvalContext, data: str, rouge_type: str = "rougeL_recall", answer_key: str | None = None,
          max_new_tokens: int = 200, stopwords: list[str] | tuple = (), **_) -> dict:
    """ROUGE of greedy generations against the ground truth (rouge_score with the stemmer)."""
    from rouge_score import rouge_scorer

    from mpu.eval.encoding import ground_truth

    dataset = ctx.dataset(data)
    generations = ctx.generations(data, max_new_tokens, tuple(stopwords))
    prompts = ctx.prompts(data)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    by_index = {}
    for i, (row, generation) in enumerate(zip(dataset.rows, generations)):
        truth = ground_truth(dataset.kind, row, answer_key)
        if isinstance(truth, list):
            truth = truth[0]
        scores = scorer.score(truth, generation)
        by_index[str(i)] = {
            "rouge1_recall": scores["rouge1"].recall,
            "rougeL_f1": scores["rougeL"].fmeasure,
            "rougeL_recall": scores["rougeL"].recall,
            "input": ctx.decode(prompts[i]),
            "ground_truth": truth,
            "generation": generation,
        }
    return {"agg_value": _mean(v[rouge_type] for v in by_index.values()), "value_by_index": by_index}


# --- memorisation -------------------------------------------------------------------------------

def _body(ctx: EvalContext, stats: TokenStats) -> TokenStats:
    return stats.body(ctx.eos_ids)


@METRICS.register("exact_memorization")
def exact_memorization(ctx: EvalContext, data: str, answer_key: str | None = None, **_) -> dict:
    """Fraction of answer tokens whose teacher-forced argmax equals the label."""
    by_index = {}
    for i, stats in enumerate(ctx.stats(data, answer_key)):
        body = _body(ctx, stats)
        by_index[str(i)] = {"score": float(body.correct.mean()) if len(body.correct) else None}
    return {"agg_value": _mean(v["score"] for v in by_index.values()), "value_by_index": by_index}


def extraction_strength_of(correct: np.ndarray) -> float:
    """1 - k/n for the smallest k whose suffix is predicted exactly. As in OpenUnlearning, k stops at
    n-1 when no suffix matches (so a wrong last token gives 1/n, not 0)."""
    n = len(correct)
    if n == 0:
        return 0.0
    k = 0
    for k in range(n):
        if correct[k:].all():
            break
    return 1 - k / n


@METRICS.register("extraction_strength")
def extraction_strength(ctx: EvalContext, data: str, answer_key: str | None = None, **_) -> dict:
    by_index = {}
    for i, stats in enumerate(ctx.stats(data, answer_key)):
        by_index[str(i)] = {"score": extraction_strength_of(_body(ctx, stats).correct)}
    return {"agg_value": _mean(v["score"] for v in by_index.values()), "value_by_index": by_index}


# --- membership inference -----------------------------------------------------------------------

def min_k_score(logprobs: np.ndarray, k: float) -> float:
    """Negative mean of the lowest k-fraction of token log-probs (at least one token)."""
    if len(logprobs) == 0:
        return 0.0
    count = max(1, int(len(logprobs) * k))
    return float(-np.mean(np.sort(logprobs)[:count]))


def min_k_plus_plus_score(stats: TokenStats, k: float) -> float:
    """Min-K on log-probs z-scored by the model's own next-token mean and variance."""
    if len(stats.logprobs) == 0:
        return 0.0
    z = (stats.logprobs - stats.mu) / np.sqrt(np.maximum(stats.var, 1e-6))
    return min_k_score(z, k)


def _auc(forget: list[float], holdout: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    labels = [0] * len(forget) + [1] * len(holdout)
    return float(roc_auc_score(labels, list(forget) + list(holdout)))


def _mia(ctx: EvalContext, data: dict, score_fn) -> dict:
    output: dict[str, Any] = {}
    for split in ("forget", "holdout"):
        scores = score_fn(data[split])
        output[split] = {"agg_value": _mean(scores),
                         "value_by_index": {str(i): {"score": s} for i, s in enumerate(scores)}}
    auc = _auc([v["score"] for v in output["forget"]["value_by_index"].values()],
               [v["score"] for v in output["holdout"]["value_by_index"].values()])
    output["auc"] = output["agg_value"] = auc
    return output


@METRICS.register("mia_loss")
def mia_loss(ctx: EvalContext, data: dict, **_) -> dict:
    """LOSS attack: the mean NLL of the answer."""
    return _mia(ctx, data, lambda name: [s.avg_loss for s in ctx.stats(name)])


@METRICS.register("mia_zlib")
def mia_zlib(ctx: EvalContext, data: dict, **_) -> dict:
    """ZLib attack: mean NLL divided by the zlib-compressed length of the scored text."""
    def scores(name):
        return [s.avg_loss / len(zlib.compress(ctx.decode(s.labels.tolist()).encode("utf-8")))
                for s in ctx.stats(name)]
    return _mia(ctx, data, scores)


@METRICS.register("mia_min_k")
def mia_min_k(ctx: EvalContext, data: dict, k: float = 0.4, **_) -> dict:
    return _mia(ctx, data, lambda name: [min_k_score(_body(ctx, s).logprobs, k) for s in ctx.stats(name)])


@METRICS.register("mia_min_k_plus_plus")
def mia_min_k_plus_plus(ctx: EvalContext, data: dict, k: float = 0.4, **_) -> dict:
    return _mia(ctx, data, lambda name: [min_k_plus_plus_score(_body(ctx, s), k) for s in ctx.stats(name)])


@METRICS.register("mia_gradnorm")
def mia_gradnorm(ctx: EvalContext, data: dict, p: float = 2, **_) -> dict:
    """GradNorm attack: the (mean per-parameter) p-norm of the gradient of the answer NLL."""
    return _mia(ctx, data, lambda name: ctx.gradnorms(name, p))


@METRICS.register("mia_reference")
def mia_reference(ctx: EvalContext, data: dict, **_) -> dict:
    """Reference attack: NLL minus the reference (retain) model's NLL."""
    if ctx.reference_model is None:
        # The evaluator says why when a retain model was given but cannot serve as the reference.
        raise MetricUnavailable(getattr(ctx, "reference_unavailable", None)
                                or "mia_reference needs a reference model (--retain-model)")
    return _mia(ctx, data, lambda name: [s.avg_loss - r.avg_loss
                                         for s, r in zip(ctx.stats(name), ctx.reference_stats(name))])


@METRICS.register("privleak")
def privleak(ctx: EvalContext, pre_compute: dict, reference_logs: dict | None = None, ref_value: float = 0.5,
             **_) -> dict:
    """((1 - AUC) - (1 - AUC_retain)) / (1 - AUC_retain) * 100 from the MinK attack; without the
    retain model's logs AUC_retain = ``ref_value`` (OpenUnlearning's default, 0.5)."""
    score = pre_compute["forget"]["agg_value"]
    reference = (reference_logs or {}).get("retain")
    ref = reference["agg_value"] if reference else ref_value
    result = {"agg_value": ((1 - score) - (1 - ref)) / ((1 - ref) + EPS) * 100}
    if not reference:
        result["note"] = f"no retain model logs; AUC_retain taken as {ref_value}"
    return result


# --- multiple choice ----------------------------------------------------------------------------

@METRICS.register("mcq_accuracy")
def mcq_accuracy(ctx: EvalContext, data: str, mode: str | None = None, **_) -> dict:
    """Multiple-choice accuracy by comparing choice log-likelihoods (lm-eval's acc; acc_norm divides
    each log-likelihood by the choice's length in bytes)."""
    dataset = ctx.dataset(data)
    mode = mode or dataset.mode
    by_index, norm_hits = {}, []
    logliks = ctx.choice_logliks(data, mode)
    for i, (row, scored) in enumerate(zip(dataset.rows, logliks)):
        answer = mcq_answer_index(row)
        pred = int(np.argmax(scored["logliks"]))
        normed = [ll / max(1, n) for ll, n in zip(scored["logliks"], scored["lengths"])]
        norm_hits.append(int(np.argmax(normed)) == answer)
        by_index[str(i)] = {"score": float(pred == answer), "pred": pred, "answer": answer,
                            "logliks": scored["logliks"], "mode": mcq_mode(row, mode)}
    return {"agg_value": _mean(v["score"] for v in by_index.values()),
            "acc_norm": _mean(float(h) for h in norm_hits), "value_by_index": by_index}
