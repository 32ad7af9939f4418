"""Every TOFU metric pinned to its definition: the whole TOFU suite run through ``run_metrics`` on a tiny
fixed model and items, each key checked against an independent computation (unbatched float64
forwards, greedy decoding by hand, numpy / scipy / sklearn / rouge_score called directly), and each
key's settings pinned. A metric, a setting or an aggregation that drifts fails here."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch

from mpu.eval import EvalContext, EvalDataset
from mpu.eval import encoding
from mpu.eval.evaluator import run_metrics
from mpu.eval.suites import TOFU
from tests.eval.helpers import tiny_model, tiny_tokenizer
from tests.eval.test_metrics import HOLDOUT, QA, hand_body, hand_greedy, hand_mia_scores, hand_nll

STEPS = 6           # greedy tokens per ROUGE generation (the suite's 200 cost minutes on a tiny random model)
EPS = 1e-10
RETAIN_TR = [0.9, 1.1, 0.7, 1.3, 0.95]   # the retain model's forget truth ratios (its logs)
RETAIN_MIN_K_AUC = 0.55
# TOFU's datasets: the four QA rows hold answer, paraphrased_answer and three perturbed answers. The
# `data` fixture puts the model's own greedy words into one answer per utility set, so that its ROUGE
# and hence model_utility are not 0 (a random model generates no answer word).
BASE = {"forget": QA, "holdout": HOLDOUT, "retain": QA[1:] + QA[:1], "ra": QA[:3], "wf": QA[1:]}

R = "rougeL_recall"
PIN = {  # key -> its settings; OpenUnlearning's tofu.yaml definitions
    "forget_Q_A_Prob": {"handler": "probability", "data": "forget"},
    "forget_Q_A_PARA_Prob": {"handler": "probability", "data": "forget", "answer_key": "paraphrased_answer"},
    "forget_Q_A_PERT_Prob": {"handler": "probability", "data": "forget", "answer_key": "perturbed_answer"},
    "forget_Q_A_ROUGE": {"handler": "rouge", "data": "forget", "rouge_type": R, "max_new_tokens": 200, "stopwords": []},
    "forget_truth_ratio": {"handler": "truth_ratio", "aggregator": "closer_to_1_better",
                           "pre_compute": {"forget_Q_A_PARA_Prob": "correct", "forget_Q_A_PERT_Prob": "wrong"}},
    "forget_quality": {"handler": "forget_quality", "pre_compute": {"forget_truth_ratio": "forget"},
                       "reference_logs": {"forget_truth_ratio": "retain"}},
    "retain_Q_A_Prob": {"handler": "probability", "data": "retain"},
    "retain_Q_A_PARA_Prob": {"handler": "probability", "data": "retain", "answer_key": "paraphrased_answer"},
    "retain_Q_A_PERT_Prob": {"handler": "probability", "data": "retain", "answer_key": "perturbed_answer"},
    "retain_Q_A_ROUGE": {"handler": "rouge", "data": "retain", "rouge_type": R, "max_new_tokens": 200, "stopwords": []},
    "retain_Truth_Ratio": {"handler": "truth_ratio", "aggregator": "true_better",
                           "pre_compute": {"retain_Q_A_PARA_Prob": "correct", "retain_Q_A_PERT_Prob": "wrong"}},
    "ra_Q_A_Prob": {"handler": "probability", "data": "ra"},
    "ra_Q_A_PERT_Prob": {"handler": "probability", "data": "ra", "answer_key": "perturbed_answer"},
    "ra_Q_A_Prob_normalised": {"handler": "probability_w_options",
                               "pre_compute": {"ra_Q_A_Prob": "correct", "ra_Q_A_PERT_Prob": "wrong"}},
    "ra_Q_A_ROUGE": {"handler": "rouge", "data": "ra", "rouge_type": R, "max_new_tokens": 200, "stopwords": []},
    "ra_Truth_Ratio": {"handler": "truth_ratio", "aggregator": "true_better",
                       "pre_compute": {"ra_Q_A_Prob": "correct", "ra_Q_A_PERT_Prob": "wrong"}},
    "wf_Q_A_Prob": {"handler": "probability", "data": "wf"},
    "wf_Q_A_PERT_Prob": {"handler": "probability", "data": "wf", "answer_key": "perturbed_answer"},
    "wf_Q_A_Prob_normalised": {"handler": "probability_w_options",
                               "pre_compute": {"wf_Q_A_Prob": "correct", "wf_Q_A_PERT_Prob": "wrong"}},
    "wf_Q_A_ROUGE": {"handler": "rouge", "data": "wf", "rouge_type": R, "max_new_tokens": 200, "stopwords": []},
    "wf_Truth_Ratio": {"handler": "truth_ratio", "aggregator": "true_better",
                       "pre_compute": {"wf_Q_A_Prob": "correct", "wf_Q_A_PERT_Prob": "wrong"}},
    "model_utility": {"handler": "hm_aggregate", "pre_compute": {k: k for k in (
        "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE",
        "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")}},
    "extraction_strength": {"handler": "extraction_strength", "data": "forget"},
    "exact_memorization": {"handler": "exact_memorization", "data": "forget"},
    "mia_loss": {"handler": "mia_loss", "data": {"forget": "forget", "holdout": "holdout"}},
    "mia_zlib": {"handler": "mia_zlib", "data": {"forget": "forget", "holdout": "holdout"}},
    "mia_min_k": {"handler": "mia_min_k", "data": {"forget": "forget", "holdout": "holdout"}, "k": 0.4},
    "mia_min_k_plus_plus": {"handler": "mia_min_k_plus_plus", "data": {"forget": "forget", "holdout": "holdout"},
                            "k": 0.4},
    "mia_gradnorm": {"handler": "mia_gradnorm", "data": {"forget": "forget", "holdout": "holdout"}, "p": 2},
    "mia_reference": {"handler": "mia_reference", "data": {"forget": "forget", "holdout": "holdout"}},
    "privleak": {"handler": "privleak", "ref_value": 0.5, "pre_compute": {"mia_min_k": "forget"},
                 "reference_logs": {"mia_min_k": "retain"}},
}


def test_every_tofu_metric_keeps_its_settings():
    assert TOFU["metrics"] == PIN
    assert len([k for k in PIN if not k.startswith("mia_") and k != "privleak"]) == 24


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    torch.set_num_threads(1)
    return tiny_model(tok, seed=0), tiny_model(tok, seed=1)


@pytest.fixture(scope="module")
def data(models, tok):
    model, _ = models
    out = {name: [dict(row) for row in rows] for name, rows in BASE.items()}
    for name in ("retain", "ra", "wf"):
        for row in out[name]:  # the first row whose generation has a word ROUGE counts
            generation = hand_greedy(model, tok, encoding.prompt_ids(tok, "qa", row), STEPS)
            if re.search(r"[a-z0-9]", generation.lower()):
                row["answer"] = f"{generation} {row['answer']}"
                break
        else:
            raise AssertionError(f"the tiny model generates no word on {name}")
    return out


@pytest.fixture(scope="module")
def logs(models, tok, data):
    model, reference = models
    metrics = copy.deepcopy(TOFU["metrics"])
    for spec in metrics.values():
        if spec["handler"] == "rouge":
            spec["max_new_tokens"] = STEPS
    datasets = [EvalDataset(name, "qa", rows) for name, rows in data.items()]
    ctx = EvalContext(model, tok, datasets, batch_size=3, reference_model=reference)
    retain_logs = {"forget_truth_ratio": {"value_by_index": {str(i): {"score": s} for i, s in enumerate(RETAIN_TR)}},
                   "mia_min_k": {"agg_value": RETAIN_MIN_K_AUC}}
    return run_metrics(ctx, metrics, reference_logs=retain_logs)


# --- independent computations ---------------------------------------------------------------------

def p(model, tok, row, answer):
    return math.exp(-hand_nll(model, tok, row, answer))


def prob(model, tok, rows, key="answer"):
    return float(np.mean([np.mean([p(model, tok, r, a) for a in (r[key] if isinstance(r[key], list) else [r[key]])])
                          for r in rows]))


def ratios(model, tok, rows, correct_key):
    out = []
    for r in rows:
        wrong = np.mean([hand_nll(model, tok, r, a) for a in r["perturbed_answer"]])
        out.append(math.exp(-wrong) / (p(model, tok, r, r[correct_key]) + EPS))
    return np.array(out)


def rouge_recall(model, tok, rows):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(r["answer"], hand_greedy(model, tok, encoding.prompt_ids(tok, "qa", r), STEPS))
                          ["rougeL"].recall for r in rows]))


def normalised(model, tok, rows):
    return float(np.mean([p(model, tok, r, r["answer"]) / (p(model, tok, r, r["answer"]) + sum(
        p(model, tok, r, a) for a in r["perturbed_answer"]) + EPS) for r in rows]))


def auc(forget, holdout):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score([0] * len(forget) + [1] * len(holdout), list(forget) + list(holdout))


def gradnorm(model, tok, row):
    example = encoding.encode(tok, "qa", row)
    model.zero_grad()
    logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0].double()
    terms = [torch.log_softmax(logits[t - 1], -1)[example["labels"][t]]
             for t in range(1, len(example["input_ids"])) if example["labels"][t] != -100][:-1]  # without EOS
    (-torch.stack(terms).mean()).backward()
    value = float(torch.stack([q.grad.norm() for q in model.parameters() if q.grad is not None]).mean())
    model.zero_grad(set_to_none=True)
    return value


def expected_values(models, tok, data) -> dict[str, float]:
    from scipy.stats import hmean, ks_2samp

    model, reference = models
    forget, retain, ra, wf, holdout = (data[k] for k in ("forget", "retain", "ra", "wf", "holdout"))
    out = {}
    for name, rows in (("forget", forget), ("retain", retain)):
        out[f"{name}_Q_A_Prob"] = prob(model, tok, rows)
        out[f"{name}_Q_A_PARA_Prob"] = prob(model, tok, rows, "paraphrased_answer")
        out[f"{name}_Q_A_PERT_Prob"] = prob(model, tok, rows, "perturbed_answer")
        out[f"{name}_Q_A_ROUGE"] = rouge_recall(model, tok, rows)
    tr = ratios(model, tok, forget, "paraphrased_answer")
    out["forget_truth_ratio"] = float(np.mean(np.minimum(tr, 1 / (tr + EPS))))
    out["forget_quality"] = float(ks_2samp(tr, RETAIN_TR).pvalue)
    out["retain_Truth_Ratio"] = float(np.mean(np.maximum(0, 1 - ratios(model, tok, retain, "paraphrased_answer"))))
    for name, rows in (("ra", ra), ("wf", wf)):
        out[f"{name}_Q_A_Prob"] = prob(model, tok, rows)
        out[f"{name}_Q_A_PERT_Prob"] = prob(model, tok, rows, "perturbed_answer")
        out[f"{name}_Q_A_Prob_normalised"] = normalised(model, tok, rows)
        out[f"{name}_Q_A_ROUGE"] = rouge_recall(model, tok, rows)
        out[f"{name}_Truth_Ratio"] = float(np.mean(np.maximum(0, 1 - ratios(model, tok, rows, "answer"))))
    nine = [out[k] for k in PIN["model_utility"]["pre_compute"]]
    out["model_utility"] = float(hmean(nine)) if min(nine) > 0 else 0.0
    em, es = [], []
    for r in forget:
        _, logp_rows, labels = hand_body(model, tok, r)
        hits = [int(logp_rows[t].argmax()) == labels[t] for t in range(len(labels))]
        em.append(np.mean(hits))
        k = next((k for k in range(len(hits)) if all(hits[k:])), len(hits) - 1)
        es.append(1 - k / len(hits))
    out["exact_memorization"], out["extraction_strength"] = float(np.mean(em)), float(np.mean(es))
    for key, kind in (("mia_loss", "loss"), ("mia_zlib", "zlib"), ("mia_min_k", "min_k"),
                      ("mia_min_k_plus_plus", "min_k++")):
        out[key] = auc(hand_mia_scores(model, tok, forget, kind), hand_mia_scores(model, tok, holdout, kind))
    out["mia_gradnorm"] = auc([gradnorm(model, tok, r) for r in forget], [gradnorm(model, tok, r) for r in holdout])
    ref = [[hand_nll(model, tok, r, r["answer"]) - hand_nll(reference, tok, r, r["answer"]) for r in rows]
           for rows in (forget, holdout)]
    out["mia_reference"] = auc(*ref)
    out["privleak"] = ((1 - out["mia_min_k"]) - (1 - RETAIN_MIN_K_AUC)) / (1 - RETAIN_MIN_K_AUC) * 100
    return out


def test_every_tofu_metric_matches_its_independent_computation(models, tok, data, logs):
    expected = expected_values(models, tok, data)
    assert set(expected) == set(PIN) == set(logs)
    for key, value in expected.items():
        assert logs[key]["agg_value"] == pytest.approx(value, rel=2e-5, abs=1e-7), key
    # the fixture is not degenerate: the numbers vary, so a wrong formula cannot pass by accident
    assert 0 < expected["forget_truth_ratio"] < 1 and 0 < expected["retain_Truth_Ratio"] < 1
    assert 0 < expected["forget_quality"] < 1 and expected["model_utility"] > 0
    assert len({round(expected[k], 6) for k in ("mia_loss", "mia_zlib", "mia_min_k", "mia_gradnorm")}) > 1


def test_per_item_truth_ratios_match(models, tok, logs):
    model, _ = models
    got = [logs["forget_truth_ratio"]["value_by_index"][str(i)]["score"] for i in range(len(QA))]
    np.testing.assert_allclose(got, ratios(model, tok, QA, "paraphrased_answer"), rtol=2e-5)

