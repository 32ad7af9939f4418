"""Benchmark suites: which datasets each benchmark reads and which metrics it reports, under
OpenUnlearning's key names. ``configs/eval/<benchmark>.yaml`` mirrors these dictionaries (a test keeps
them equal); pass an edited copy as ``evaluate(..., config=...)`` to change a suite.

Dataset specs: ``kind`` (see :mod:`mpu.eval.encoding`), ``config`` and ``split`` in the hub layout
(``{forget_split}`` and ``{holdout_split}`` are filled in), ``icl`` (few-shot split, icl_qa only).
Metric specs: ``handler`` (a name in :data:`mpu.eval.metrics.METRICS`), its settings, ``pre_compute``
(metric key -> access name) and ``reference_logs`` (key in the retain model's logs -> access name).
"""

from __future__ import annotations

import copy


def _prob(data, answer_key=None):
    spec = {"handler": "probability", "data": data}
    if answer_key:
        spec["answer_key"] = answer_key
    return spec


def _tr(correct, wrong, aggregator):
    return {"handler": "truth_ratio", "aggregator": aggregator, "pre_compute": {correct: "correct", wrong: "wrong"}}


def _mia(handler, forget="forget", holdout="holdout", **settings):
    return {"handler": handler, "data": {"forget": forget, "holdout": holdout}, **settings}


TOFU_GENERATION = {"max_new_tokens": 200, "stopwords": []}

TOFU = {
    "benchmark": "tofu",
    "forget_split": "forget10",
    "holdout_split": None,  # None: holdoutNN for forgetNN
    "batch_size": 32,
    "datasets": {
        "forget": {"kind": "qa", "config": "{forget_split}_perturbed", "split": "train"},
        "holdout": {"kind": "qa", "config": "{holdout_split}", "split": "train"},
        "retain": {"kind": "qa", "config": "retain_perturbed", "split": "train"},
        "ra": {"kind": "qa", "config": "real_authors_perturbed", "split": "train"},
        "wf": {"kind": "qa", "config": "world_facts_perturbed", "split": "train"},
    },
    "metrics": {
        "forget_Q_A_Prob": _prob("forget"),
        "forget_Q_A_PARA_Prob": _prob("forget", "paraphrased_answer"),
        "forget_Q_A_PERT_Prob": _prob("forget", "perturbed_answer"),
        "forget_Q_A_ROUGE": {"handler": "rouge", "data": "forget", "rouge_type": "rougeL_recall", **TOFU_GENERATION},
        "forget_truth_ratio": _tr("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "closer_to_1_better"),
        "forget_quality": {"handler": "forget_quality", "pre_compute": {"forget_truth_ratio": "forget"},
                           "reference_logs": {"forget_truth_ratio": "retain"}},
        "retain_Q_A_Prob": _prob("retain"),
        "retain_Q_A_PARA_Prob": _prob("retain", "paraphrased_answer"),
        "retain_Q_A_PERT_Prob": _prob("retain", "perturbed_answer"),
        "retain_Q_A_ROUGE": {"handler": "rouge", "data": "retain", "rouge_type": "rougeL_recall", **TOFU_GENERATION},
        "retain_Truth_Ratio": _tr("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "true_better"),
        "ra_Q_A_Prob": _prob("ra"),
        "ra_Q_A_PERT_Prob": _prob("ra", "perturbed_answer"),
        "ra_Q_A_Prob_normalised": {"handler": "probability_w_options",
                                   "pre_compute": {"ra_Q_A_Prob": "correct", "ra_Q_A_PERT_Prob": "wrong"}},
        "ra_Q_A_ROUGE": {"handler": "rouge", "data": "ra", "rouge_type": "rougeL_recall", **TOFU_GENERATION},
        "ra_Truth_Ratio": _tr("ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "true_better"),
        "wf_Q_A_Prob": _prob("wf"),
        "wf_Q_A_PERT_Prob": _prob("wf", "perturbed_answer"),
        "wf_Q_A_Prob_normalised": {"handler": "probability_w_options",
                                   "pre_compute": {"wf_Q_A_Prob": "correct", "wf_Q_A_PERT_Prob": "wrong"}},
        "wf_Q_A_ROUGE": {"handler": "rouge", "data": "wf", "rouge_type": "rougeL_recall", **TOFU_GENERATION},
        "wf_Truth_Ratio": _tr("wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "true_better"),
        "model_utility": {"handler": "hm_aggregate", "pre_compute": {
            key: key for key in ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
                                 "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
                                 "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")}},
        "extraction_strength": {"handler": "extraction_strength", "data": "forget"},
        "exact_memorization": {"handler": "exact_memorization", "data": "forget"},
        "mia_loss": _mia("mia_loss"),
        "mia_zlib": _mia("mia_zlib"),
        "mia_min_k": _mia("mia_min_k", k=0.4),
        "mia_min_k_plus_plus": _mia("mia_min_k_plus_plus", k=0.4),
        "mia_gradnorm": _mia("mia_gradnorm", p=2),
        "mia_reference": _mia("mia_reference"),
        "privleak": {"handler": "privleak", "ref_value": 0.5, "pre_compute": {"mia_min_k": "forget"},
                     "reference_logs": {"mia_min_k": "retain"}},
    },
    "summary": [
        "forget_quality", "model_utility", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio",
        "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "privleak", "extraction_strength",
        "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm",
        "mia_reference",
    ],
}

KNOWMEM_GENERATION = {"max_new_tokens": 32, "stopwords": ["\n\n", "\nQuestion", "Question:"]}

MUSE = {
    "benchmark": "muse",
    "batch_size": 16,
    "datasets": {
        "forget_knowmem": {"kind": "icl_qa", "config": "knowmem", "split": "forget_qa", "icl": "forget_qa_icl"},
        "retain_knowmem": {"kind": "icl_qa", "config": "knowmem", "split": "retain_qa", "icl": "retain_qa_icl"},
        "forget_verbmem": {"kind": "completion", "config": "verbmem", "split": "forget"},
        "mia_forget": {"kind": "text", "config": "privleak", "split": "forget"},
        "mia_holdout": {"kind": "text", "config": "privleak", "split": "holdout"},
    },
    "metrics": {
        "forget_knowmem_ROUGE": {"handler": "rouge", "data": "forget_knowmem", "rouge_type": "rougeL_f1",
                                 **KNOWMEM_GENERATION},
        "retain_knowmem_ROUGE": {"handler": "rouge", "data": "retain_knowmem", "rouge_type": "rougeL_f1",
                                 **KNOWMEM_GENERATION},
        "forget_verbmem_ROUGE": {"handler": "rouge", "data": "forget_verbmem", "rouge_type": "rougeL_f1",
                                 "max_new_tokens": 128, "stopwords": []},
        "extraction_strength": {"handler": "extraction_strength", "data": "forget_verbmem"},
        "exact_memorization": {"handler": "exact_memorization", "data": "forget_verbmem"},
        "mia_loss": _mia("mia_loss", "mia_forget", "mia_holdout"),
        "mia_zlib": _mia("mia_zlib", "mia_forget", "mia_holdout"),
        "mia_min_k": _mia("mia_min_k", "mia_forget", "mia_holdout", k=0.4),
        "mia_min_k_plus_plus": _mia("mia_min_k_plus_plus", "mia_forget", "mia_holdout", k=0.4),
        "mia_gradnorm": _mia("mia_gradnorm", "mia_forget", "mia_holdout", p=2),
        "mia_reference": _mia("mia_reference", "mia_forget", "mia_holdout"),
        "privleak": {"handler": "privleak", "ref_value": 0.5, "pre_compute": {"mia_min_k": "forget"},
                     "reference_logs": {"mia_min_k": "retain"}},
    },
    "summary": [
        "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE", "privleak",
        "extraction_strength", "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k",
        "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference",
    ],
}

WMDP = {
    "benchmark": "wmdp",
    "batch_size": 32,
    # Hub defaults; the built-in benchmark's manifest replaces subsets, utility and mode.
    "subsets": ["wmdp-bio", "wmdp-chem", "wmdp-cyber"],
    "split": "test",
    "mode": "auto",  # cloze when rows carry a `cloze` prefix, else lm-eval's lettered prompt
    "utility": {"data": "cais/mmlu", "config": "all", "split": "test", "key": "mmlu"},
    "limit": None,   # evaluate at most this many rows per subset (None: all)
}

SUITES = {"tofu": TOFU, "muse": MUSE, "wmdp": WMDP}


def default_suite(benchmark: str) -> dict:
    from mpu.errors import MPUError

    try:
        return copy.deepcopy(SUITES[benchmark])
    except KeyError:
        raise MPUError(f"unknown benchmark {benchmark!r}; known: {', '.join(SUITES)}") from None


def wmdp_metric_key(subset: str) -> str:
    """lm-eval's task name for a WMDP subset: wmdp-bio -> wmdp_bio."""
    return subset.replace("-", "_")
