"""The metrics, one small function each, in one registry (OpenUnlearning's handler names).

A metric is called as ``fn(ctx, **settings)`` and returns ``{"agg_value": ..., "value_by_index":
{...}}`` (MIA metrics add ``forget``, ``holdout`` and ``auc``). Settings name datasets of the
:class:`~mpu.eval.context.EvalContext` (``data``), the answer field to score (``answer_key``),
results of other metrics (``pre_compute``: access name -> result) and results read from the retain
model's logs (``reference_logs``: access name -> result or None).

Definitions (matching OpenUnlearning):
- p = exp(-mean NLL over the answer tokens, EOS included);
- token-wise metrics (exact_memorization, extraction_strength, MinK, MinK++, GradNorm) leave out a
  final EOS label, as OpenUnlearning does;
- MIA scores are "higher = less member-like"; AUC uses label 0 for forget (members) and 1 for
  holdout, so a model that memorised the forget set has AUC near 1;
- a metric over several answers per item (``answer_key`` naming a list, e.g. the perturbed answers)
  first averages over the item's answers, then over items (OpenUnlearning's ``aggregate_to_1D``);
- ``question_key`` (probability, rouge, exact_memorization, extraction_strength) asks the row's
  ``question_key`` field instead of its ``question`` (e.g. ``paraphrased_question``).
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import numpy as np

from mpu.eval.context import EvalContext, EvalDataset, MetricUnavailable, mcq_answer_index, mcq_mode
from mpu.eval.engine import TokenStats
from mpu.errors import MPUError
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


def with_question(ctx: EvalContext, data: str, question_key: str | None) -> str:
    """The name of ``data`` with each row's ``question`` replaced by its ``question_key`` field (the
    dataset itself when ``question_key`` is None or ``"question"``). The variant is added to the
    context once, so its passes are cached like any dataset's.

    Raises MetricUnavailable naming the dataset, the row and the key when a row lacks a non-empty
    string under ``question_key``.
    """
    if not question_key or question_key == "question":
        return data
    name = f"{data}[question={question_key}]"
    if name not in ctx.datasets:
        dataset = ctx.dataset(data)
        rows = []
        for i, row in enumerate(dataset.rows):
            question = row.get(question_key)
            if not isinstance(question, str) or not question.strip():
                raise MetricUnavailable(f"{data} row {i} has no {question_key!r} question (keys: {', '.join(row)})")
            rows.append({**row, "question": question})
        ctx.datasets[name] = EvalDataset(name, dataset.kind, rows, icl=dataset.icl, mode=dataset.mode,
                                         subject=dataset.subject)
    return name


def check_answers(ctx: EvalContext, data: str, answer_key: str | None) -> None:
    """Every row of ``data`` holds a usable ``answer_key``: a string, or a non-empty list of strings.

    Raises MetricUnavailable when a row lacks the field (a copy without perturbed answers: the metric is
    skipped with the reason), and MPUError naming the dataset, row and key when the value is not text,
    an empty list, or a list written as text (a CSV cell ``["a", "b"]`` is one string: scoring it would
    silently score the brackets and quotes as one answer).
    """
    if not answer_key:
        return
    for i, row in enumerate(ctx.dataset(data).rows):
        if answer_key not in row or row[answer_key] is None:
            raise MetricUnavailable(f"{data} row {i} has no {answer_key!r} (keys: {', '.join(row)})")
        value = row[answer_key]
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]") and _parses_as_list(text):
                raise MPUError(f"{data} row {i}: {answer_key!r} is a list written as text ({text[:40]}...); "
                               "store the file as JSON lines, a JSON array or parquet so that it stays a list")
        elif not isinstance(value, list) or not value or not all(isinstance(one, str) for one in value):
            raise MPUError(f"{data} row {i}: {answer_key!r} must be a string or a non-empty list of strings, "
                           f"got {type(value).__name__} {str(value)[:40]!r}")


def _parses_as_list(text: str) -> bool:
    import ast
    import json

    for parse in (json.loads, ast.literal_eval):
        try:
            return isinstance(parse(text), list)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return False


# --- probabilities -------------------------------------------------------------------------------

@METRICS.register("probability")
def probability(ctx: EvalContext, data: str, answer_key: str | None = None, question_key: str | None = None,
                **_) -> dict:
    """Q_A_Prob: the length-normalised answer probability exp(-mean NLL), per item and averaged (an item
    with several answers under ``answer_key`` counts with the mean of its answers' probabilities)."""
    data = with_question(ctx, data, question_key)
    check_answers(ctx, data, answer_key)
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


TRUTH_RATIO_AGGREGATIONS = ("loss_mean", "prob_mean")


def _answers_prob(result: dict, aggregation: str) -> float:
    """One item's probability from its answers' results: exp(-mean of the mean NLLs) (``loss_mean``,
    OpenUnlearning's default: the geometric mean of the probabilities) or the arithmetic mean of the
    probabilities exp(-mean NLL) (``prob_mean``). Identical for a single answer."""
    losses = result["avg_loss"] if isinstance(result["avg_loss"], list) else [result["avg_loss"]]
    if aggregation == "loss_mean":
        return math.exp(-float(np.mean(losses)))
    return float(np.mean(np.exp(-np.asarray(losses, dtype=float))))


@METRICS.register("truth_ratio")
def truth_ratio(ctx: EvalContext, pre_compute: dict, aggregator: str = "closer_to_1_better",
                aggregation: str = "loss_mean", **_) -> dict:
    """TR = p_wrong / (p_correct + 1e-10) per item, with p = exp(-mean NLL) and, over an item's several
    (perturbed) answers, ``aggregation``: ``loss_mean`` (default) p = exp(-mean of their mean NLLs),
    ``prob_mean`` p = mean of their p. ``aggregator``: ``closer_to_1_better`` (forget)
    mean(min(TR, 1/(TR + 1e-10))); ``true_better`` (elsewhere) mean(max(0, 1 - TR)).

    Raises ValueError on an unknown ``aggregator`` or ``aggregation``."""
    if aggregation not in TRUTH_RATIO_AGGREGATIONS:
        raise ValueError(f"unknown truth ratio aggregation {aggregation!r}; known: {', '.join(TRUTH_RATIO_AGGREGATIONS)}")
    correct, wrong = pre_compute["correct"]["value_by_index"], pre_compute["wrong"]["value_by_index"]
    by_index = {}
    for index in correct:
        p_correct = _answers_prob(correct[index], aggregation)
        p_wrong = _answers_prob(wrong[index], aggregation)
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

    retain = (reference_logs or {}).get("retain")  # the retain model's logs
    if not retain:
        return {"agg_value": None, "note": "no retain model logs: pass --retain-model or --retain-logs"}
    ours = [v["score"] for v in pre_compute["forget"]["value_by_index"].values()]
    theirs = [v["score"] for v in retain["value_by_index"].values()]
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

ROUGE_TYPES = ("rouge1_recall", "rougeL_f1", "rougeL_recall")


@METRICS.register("rouge")
def rouge(ctx: EvalContext, data: str, rouge_type: str = "rougeL_recall", answer_key: str | None = None,
          max_new_tokens: int = 200, stopwords: list[str] | tuple = (), question_key: str | None = None,
          **_) -> dict:
    """ROUGE of greedy generations against the ground truth (rouge_score with the stemmer).

    When ``answer_key`` names a list of answers (e.g. the perturbed answers), the one generation is
    scored against each and the item's score is their mean (lists in ``value_by_index``), as
    OpenUnlearning does. Raises ValueError on an unknown ``rouge_type``."""
    from rouge_score import rouge_scorer

    from mpu.eval.encoding import ground_truth

    if rouge_type not in ROUGE_TYPES:
        raise ValueError(f"unknown rouge_type {rouge_type!r}; known: {', '.join(ROUGE_TYPES)}")
    data = with_question(ctx, data, question_key)
    check_answers(ctx, data, answer_key)
    dataset = ctx.dataset(data)
    generations = ctx.generations(data, max_new_tokens, tuple(stopwords))
    prompts = ctx.prompts(data, max_new_tokens)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    by_index = {}
    for i, (row, generation) in enumerate(zip(dataset.rows, generations)):
        truth = ground_truth(dataset.kind, row, answer_key)
        scored = [scorer.score(one, generation) for one in (truth if isinstance(truth, list) else [truth])]
        values = {
            "rouge1_recall": [s["rouge1"].recall for s in scored],
            "rougeL_f1": [s["rougeL"].fmeasure for s in scored],
            "rougeL_recall": [s["rougeL"].recall for s in scored],
        }
        if not isinstance(truth, list):
            values = {key: value[0] for key, value in values.items()}
        by_index[str(i)] = {**values, "input": ctx.decode(prompts[i]), "ground_truth": truth, "generation": generation}
    return {"agg_value": _mean(_items_mean(v[rouge_type]) for v in by_index.values() if v[rouge_type] != []),
            "value_by_index": by_index}


# --- memorisation -------------------------------------------------------------------------------

def _body(ctx: EvalContext, stats: TokenStats) -> TokenStats:
    return stats.body(ctx.eos_ids)


@METRICS.register("exact_memorization")
def exact_memorization(ctx: EvalContext, data: str, answer_key: str | None = None, question_key: str | None = None,
                       **_) -> dict:
    """Fraction of answer tokens whose teacher-forced argmax equals the label (per answer; a list of
    answers gives a list, averaged per item)."""
    def em(stats: TokenStats) -> float | None:
        body = _body(ctx, stats)
        return float(body.correct.mean()) if len(body.correct) else None

    return _per_answer(ctx, data, answer_key, question_key, em)


def _per_answer(ctx: EvalContext, data: str, answer_key: str | None, question_key: str | None, score) -> dict:
    """``score(TokenStats)`` per row (a list for a row with several answers), and the mean over rows
    of each row's mean (rows without a score left out)."""
    data = with_question(ctx, data, question_key)
    check_answers(ctx, data, answer_key)
    by_index = {}
    for i, stats in enumerate(ctx.stats(data, answer_key)):
        by_index[str(i)] = {"score": [score(s) for s in stats] if isinstance(stats, list) else score(stats)}

    def item(value):
        return _mean(value) if isinstance(value, list) else value

    return {"agg_value": _mean(item(v["score"]) for v in by_index.values()), "value_by_index": by_index}


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
def extraction_strength(ctx: EvalContext, data: str, answer_key: str | None = None, question_key: str | None = None,
                        **_) -> dict:
    """Per item :func:`extraction_strength_of` the teacher-forced argmax hits, averaged."""
    return _per_answer(ctx, data, answer_key, question_key, lambda stats: extraction_strength_of(_body(ctx, stats).correct))


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
    retain = (reference_logs or {}).get("retain")  # the retain model's logs
    ref = retain["agg_value"] if retain else ref_value
    result = {"agg_value": ((1 - score) - (1 - ref)) / ((1 - ref) + EPS) * 100}
    if not retain:
        result["note"] = f"no retain model logs; AUC_retain taken as {ref_value}"
    return result


@METRICS.register("rel_diff")
def rel_diff(ctx: EvalContext, pre_compute: dict, reference_logs: dict | None = None, ref_value: float = 0.5,
             **_) -> dict:
    """(score - ref) / (ref + 1e-10) * 100: the relative difference, in percent, of a pre-computed
    aggregate (``pre_compute`` access name ``forget``) from the retain model's (``reference_logs``
    access name ``retain``); without the retain model's logs ref = ``ref_value``. privleak is this on
    1 - AUC (MUSE reports MIA AUCs that way round). None when the score is None."""
    score = pre_compute["forget"]["agg_value"]
    retain = (reference_logs or {}).get("retain")  # the retain model's logs
    ref = retain["agg_value"] if retain else ref_value
    result = {"agg_value": None if score is None or ref is None else (score - ref) / (ref + EPS) * 100}
    if not retain:
        result["note"] = f"no retain model logs; the retain value taken as {ref_value}"
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
