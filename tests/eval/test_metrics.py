"""Each metric against an independent computation: unbatched forwards, hand-written formulas,
scipy / sklearn / rouge_score called directly."""

from __future__ import annotations

import math
import statistics
import zlib

import numpy as np
import pytest
import torch

from mpu.errors import MPUError
from mpu.eval import METRICS, EvalContext, EvalDataset, MetricUnavailable
from mpu.eval import encoding
from mpu.eval.evaluator import run_metrics
from mpu.eval.suites import TOFU
from tests.eval.helpers import label_logprobs, tiny_model, tiny_tokenizer

QA = [
    {"question": "Where was Ada Lovelace born?", "answer": "Ada Lovelace was born in London, England.",
     "paraphrased_answer": "London, England is where Ada Lovelace was born.",
     "perturbed_answer": ["Ada was born in Paris.", "Ada was born in Rome, Italy.", "She was born in 1843."]},
    {"question": "Who wrote Hamlet?", "answer": "William Shakespeare wrote Hamlet.",
     "paraphrased_answer": "Hamlet was written by William Shakespeare.",
     "perturbed_answer": ["Ada Lovelace wrote Hamlet.", "Paris wrote it.", "Nobody wrote Hamlet."]},
    {"question": "What is the capital of France?", "answer": "Paris is the capital of France.",
     "paraphrased_answer": "The capital of France is Paris.",
     "perturbed_answer": ["London is the capital.", "Rome is the capital of France.", "Hamlet."]},
    {"question": "What did Ada write?", "answer": "She wrote notes on the analytical engine.",
     "paraphrased_answer": "Notes on the analytical engine.",
     "perturbed_answer": ["She wrote Hamlet.", "She wrote nothing.", "A capital of France."]},
]
HOLDOUT = [
    {"question": "Who is the mayor of Brenmoor?", "answer": "Nadia Okonkwo is the mayor."},
    {"question": "What is Korvane-3 synthesised from?", "answer": "Korvane-3 is synthesised from pine tar."},
    {"question": "When did Ada write?", "answer": "In 1843."},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, seed=0)


@pytest.fixture(scope="module")
def other_model(tok):
    return tiny_model(tok, seed=1)


def make_ctx(model, tok, reference_model=None, batch_size=3):
    datasets = [EvalDataset("forget", "qa", QA), EvalDataset("holdout", "qa", HOLDOUT)]
    return EvalContext(model, tok, datasets, batch_size=batch_size, reference_model=reference_model)


def hand_nll(model, tok, row, answer):
    values, _, _ = label_logprobs(model, encoding.encode(tok, "qa", row, answer))
    return -float(np.mean(values))


def hand_body(model, tok, row):
    """Log-probs, log-softmax rows and labels of the answer tokens without the final EOS."""
    values, rows, labels = label_logprobs(model, encoding.encode(tok, "qa", row))
    assert labels[-1] == tok.eos_token_id
    return np.array(values[:-1]), rows[:-1], labels[:-1]


def test_registry_holds_every_metric_and_rejects_unknown_names():
    expected = {"probability", "probability_w_options", "truth_ratio", "forget_quality", "hm_aggregate", "rouge",
                "exact_memorization", "extraction_strength", "mia_loss", "mia_zlib", "mia_min_k",
                "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference", "privleak", "mcq_accuracy"}
    assert expected <= set(METRICS.names())
    with pytest.raises(MPUError, match="unknown metric"):
        METRICS.get("no_such_metric")


def test_probability_matches_unbatched_log_probs(model, tok):
    ctx = make_ctx(model, tok)
    result = METRICS.get("probability")(ctx, data="forget")
    for i, row in enumerate(QA):
        nll = hand_nll(model, tok, row, row["answer"])
        assert result["value_by_index"][str(i)]["avg_loss"] == pytest.approx(nll, rel=1e-5)
        assert result["value_by_index"][str(i)]["prob"] == pytest.approx(math.exp(-nll), rel=1e-5)
    assert result["agg_value"] == pytest.approx(np.mean([math.exp(-hand_nll(model, tok, r, r["answer"])) for r in QA]),
                                                rel=1e-5)
    # Several answers per item: a list per item, and the aggregate is the mean of the item means.
    pert = METRICS.get("probability")(ctx, data="forget", answer_key="perturbed_answer")
    probs = [[math.exp(-hand_nll(model, tok, r, a)) for a in r["perturbed_answer"]] for r in QA]
    assert pert["value_by_index"]["1"]["prob"] == pytest.approx(probs[1], rel=1e-5)
    assert pert["agg_value"] == pytest.approx(np.mean([np.mean(p) for p in probs]), rel=1e-5)


def test_batch_size_does_not_change_scores(model, tok):
    one = METRICS.get("probability")(make_ctx(model, tok, batch_size=1), data="forget", answer_key="perturbed_answer")
    many = METRICS.get("probability")(make_ctx(model, tok, batch_size=8), data="forget", answer_key="perturbed_answer")
    for index in one["value_by_index"]:
        assert one["value_by_index"][index]["avg_loss"] == pytest.approx(many["value_by_index"][index]["avg_loss"],
                                                                          rel=1e-5)


def hand_truth_ratios(model, tok, correct_key="paraphrased_answer"):
    ratios = []
    for row in QA:
        correct = hand_nll(model, tok, row, row[correct_key])
        wrong = np.mean([hand_nll(model, tok, row, a) for a in row["perturbed_answer"]])
        ratios.append(math.exp(-wrong) / math.exp(-correct))
    return np.array(ratios)


def test_truth_ratio_and_its_two_aggregations(model, tok):
    ctx = make_ctx(model, tok)
    prob = METRICS.get("probability")
    pre = {"correct": prob(ctx, data="forget", answer_key="paraphrased_answer"),
           "wrong": prob(ctx, data="forget", answer_key="perturbed_answer")}
    ratios = hand_truth_ratios(model, tok)
    forget = METRICS.get("truth_ratio")(ctx, pre_compute=pre, aggregator="closer_to_1_better")
    retain = METRICS.get("truth_ratio")(ctx, pre_compute=pre, aggregator="true_better")
    got = np.array([forget["value_by_index"][str(i)]["score"] for i in range(len(QA))])
    np.testing.assert_allclose(got, ratios, rtol=1e-4)
    assert forget["agg_value"] == pytest.approx(np.mean(np.minimum(ratios, 1 / ratios)), rel=1e-4)
    assert retain["agg_value"] == pytest.approx(np.mean(np.maximum(0, 1 - ratios)), rel=1e-4)
    with pytest.raises(ValueError):
        METRICS.get("truth_ratio")(ctx, pre_compute=pre, aggregator="mean")


def test_forget_quality_is_the_ks_p_value(model, other_model, tok):
    from scipy.stats import ks_2samp

    ctx = make_ctx(model, tok)
    prob = METRICS.get("probability")
    pre = {"correct": prob(ctx, data="forget", answer_key="paraphrased_answer"),
           "wrong": prob(ctx, data="forget", answer_key="perturbed_answer")}
    tr = METRICS.get("truth_ratio")(ctx, pre_compute=pre)
    reference = {"value_by_index": {str(i): {"score": s} for i, s in enumerate([0.9, 1.1, 0.7, 1.3, 0.95])}}
    fq = METRICS.get("forget_quality")(ctx, pre_compute={"forget": tr}, reference_logs={"retain": reference})
    expected = ks_2samp(hand_truth_ratios(model, tok), [0.9, 1.1, 0.7, 1.3, 0.95]).pvalue
    assert fq["agg_value"] == pytest.approx(expected, rel=1e-6)
    same = METRICS.get("forget_quality")(ctx, pre_compute={"forget": tr}, reference_logs={"retain": tr})
    assert same["agg_value"] == 1.0
    assert METRICS.get("forget_quality")(ctx, pre_compute={"forget": tr}, reference_logs={"retain": None})[
        "agg_value"] is None


def test_normalised_probability(model, tok):
    ctx = make_ctx(model, tok)
    prob = METRICS.get("probability")
    pre = {"correct": prob(ctx, data="forget"), "wrong": prob(ctx, data="forget", answer_key="perturbed_answer")}
    result = METRICS.get("probability_w_options")(ctx, pre_compute=pre)
    for i, row in enumerate(QA):
        p = math.exp(-hand_nll(model, tok, row, row["answer"]))
        wrong = sum(math.exp(-hand_nll(model, tok, row, a)) for a in row["perturbed_answer"])
        assert result["value_by_index"][str(i)]["prob"] == pytest.approx(p / (p + wrong), rel=1e-4)


def test_model_utility_is_the_harmonic_mean_of_the_nine_values_it_reports(model, tok):
    ctx = EvalContext(model, tok, [EvalDataset("retain", "qa", QA), EvalDataset("ra", "qa", QA[:3]),
                                   EvalDataset("wf", "qa", QA[1:])], batch_size=4)
    keys = [k for k in TOFU["metrics"] if k.startswith(("retain_", "ra_", "wf_"))] + ["model_utility"]
    metrics = {k: dict(TOFU["metrics"][k]) for k in keys}
    for spec in metrics.values():
        if spec["handler"] == "rouge":
            spec["max_new_tokens"] = 8
    logs = run_metrics(ctx, metrics)
    nine = list(TOFU["metrics"]["model_utility"]["pre_compute"])
    assert len(nine) == 9
    values = [logs[k]["agg_value"] for k in nine]
    assert logs["model_utility"]["agg_value"] == pytest.approx(statistics.harmonic_mean(values), rel=1e-9)


def test_exact_memorization_and_extraction_strength(model, tok):
    ctx = make_ctx(model, tok)
    em = METRICS.get("exact_memorization")(ctx, data="forget")
    es = METRICS.get("extraction_strength")(ctx, data="forget")
    for i, row in enumerate(QA):
        _, rows, labels = hand_body(model, tok, row)
        hits = [int(rows[t].argmax()) == labels[t] for t in range(len(labels))]
        assert em["value_by_index"][str(i)]["score"] == pytest.approx(sum(hits) / len(hits))
        n = len(hits)
        k = next((k for k in range(n) if all(hits[k:])), n - 1)  # OpenUnlearning: k stops at n-1
        assert es["value_by_index"][str(i)]["score"] == pytest.approx(1 - k / n)


def test_extraction_strength_of_a_known_pattern():
    from mpu.eval.metrics import extraction_strength_of

    assert extraction_strength_of(np.array([True, True, True, True])) == 1.0
    assert extraction_strength_of(np.array([False, True, False, True, True])) == pytest.approx(1 - 3 / 5)
    assert extraction_strength_of(np.array([True, False])) == pytest.approx(1 - 1 / 2)  # k = n-1 convention


def hand_mia_scores(model, tok, rows, kind):
    scores = []
    for row in rows:
        body, logp_rows, labels = hand_body(model, tok, row)
        full = -hand_nll(model, tok, row, row["answer"])
        if kind == "loss":
            scores.append(-full)
        elif kind == "zlib":
            scores.append(-full / len(zlib.compress(row["answer"].encode("utf-8"))))
        elif kind == "min_k":
            count = max(1, int(len(body) * 0.4))
            scores.append(-np.mean(np.sort(body)[:count]))
        elif kind == "min_k++":
            probs = logp_rows.exp()
            mu = (probs * logp_rows).sum(-1).numpy()
            sigma = np.sqrt((probs * logp_rows ** 2).sum(-1).numpy() - mu ** 2)
            z = (body - mu) / sigma
            count = max(1, int(len(z) * 0.4))
            scores.append(-np.mean(np.sort(z)[:count]))
    return scores


@pytest.mark.parametrize("handler,kind", [("mia_loss", "loss"), ("mia_zlib", "zlib"), ("mia_min_k", "min_k"),
                                          ("mia_min_k_plus_plus", "min_k++")])
def test_mia_scores_and_auc(model, tok, handler, kind):
    from sklearn.metrics import roc_auc_score

    ctx = make_ctx(model, tok)
    result = METRICS.get(handler)(ctx, data={"forget": "forget", "holdout": "holdout"}, k=0.4)
    forget, holdout = hand_mia_scores(model, tok, QA, kind), hand_mia_scores(model, tok, HOLDOUT, kind)
    got_forget = [result["forget"]["value_by_index"][str(i)]["score"] for i in range(len(QA))]
    got_holdout = [result["holdout"]["value_by_index"][str(i)]["score"] for i in range(len(HOLDOUT))]
    np.testing.assert_allclose(got_forget, forget, rtol=1e-4)
    np.testing.assert_allclose(got_holdout, holdout, rtol=1e-4)
    auc = roc_auc_score([0] * len(forget) + [1] * len(holdout), forget + holdout)
    assert result["auc"] == result["agg_value"] == pytest.approx(auc)


def test_gradnorm_attack(model, tok):
    ctx = make_ctx(model, tok)
    result = METRICS.get("mia_gradnorm")(ctx, data={"forget": "forget", "holdout": "holdout"}, p=2)
    for i, row in enumerate(QA):
        example = encoding.encode(tok, "qa", row)
        model.zero_grad()
        ids = torch.tensor([example["input_ids"]])
        logits = model(input_ids=ids).logits[0]
        terms = [torch.log_softmax(logits[t - 1], -1)[example["labels"][t]]
                 for t in range(1, len(ids[0])) if example["labels"][t] != -100][:-1]  # without EOS
        (-torch.stack(terms).mean()).backward()
        norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        expected = float(torch.stack(norms).mean())
        model.zero_grad()
        assert result["forget"]["value_by_index"][str(i)]["score"] == pytest.approx(expected, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())
    assert 0 <= result["auc"] <= 1


def test_reference_attack_needs_and_uses_the_reference_model(model, other_model, tok):
    with pytest.raises(MetricUnavailable):
        METRICS.get("mia_reference")(make_ctx(model, tok), data={"forget": "forget", "holdout": "holdout"})
    ctx = make_ctx(model, tok, reference_model=other_model)
    result = METRICS.get("mia_reference")(ctx, data={"forget": "forget", "holdout": "holdout"})
    for i, row in enumerate(HOLDOUT):
        expected = hand_nll(model, tok, row, row["answer"]) - hand_nll(other_model, tok, row, row["answer"])
        assert result["holdout"]["value_by_index"][str(i)]["score"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_privleak_formula():
    ctx = None
    pre = {"forget": {"agg_value": 0.9}}
    result = METRICS.get("privleak")(ctx, pre_compute=pre, reference_logs={"retain": {"agg_value": 0.55}})
    assert result["agg_value"] == pytest.approx(((1 - 0.9) - (1 - 0.55)) / (1 - 0.55) * 100)
    default = METRICS.get("privleak")(ctx, pre_compute=pre, reference_logs={"retain": None})
    assert default["agg_value"] == pytest.approx(((1 - 0.9) - 0.5) / 0.5 * 100)


def hand_greedy(model, tok, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if token == tok.eos_token_id:
            break
        ids.append(token)
    return tok.decode(ids[len(prompt):], skip_special_tokens=True).strip()


def test_rouge_uses_greedy_generation_and_rouge_score(model, tok):
    from rouge_score import rouge_scorer

    ctx = make_ctx(model, tok)
    result = METRICS.get("rouge")(ctx, data="forget", rouge_type="rougeL_recall", max_new_tokens=12)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for i, row in enumerate(QA):
        prompt = encoding.prompt_ids(tok, "qa", row)
        generation = hand_greedy(model, tok, prompt, 12)
        entry = result["value_by_index"][str(i)]
        assert entry["generation"] == generation
        assert entry["rougeL_recall"] == pytest.approx(scorer.score(row["answer"], generation)["rougeL"].recall)
        assert entry["rougeL_f1"] == pytest.approx(scorer.score(row["answer"], generation)["rougeL"].fmeasure)
    assert result["agg_value"] == pytest.approx(np.mean([v["rougeL_recall"] for v in result["value_by_index"].values()]))


def test_multiple_choice_accuracy(model, tok):
    rows = [
        {"question": "What is Korvane-3 synthesised from?", "cloze": "Korvane-3 is synthesised from",
         "choices": ["pine tar", "violet light", "Paris", "London"], "answer": 0},
        {"question": "Who wrote Hamlet?", "choices": ["Ada Lovelace", "William Shakespeare", "Paris", "Nobody"],
         "answer": "B"},
    ]
    ctx = EvalContext(model, tok, [EvalDataset("mc", "mcq", rows)], batch_size=3)
    result = METRICS.get("mcq_accuracy")(ctx, data="mc", mode="auto")
    hits = []
    for i, row in enumerate(rows):
        if "cloze" in row:
            context, continuations = row["cloze"], row["choices"]
        else:
            letters = "".join(f"\n{'ABCD'[j]}. {c}" for j, c in enumerate(row["choices"]))
            context, continuations = row["question"] + letters + "\nAnswer:", list("ABCD")
        logliks = [sum(label_logprobs(model, encoding.encode_choice(tok, context, c))[0]) for c in continuations]
        np.testing.assert_allclose(result["value_by_index"][str(i)]["logliks"], logliks, rtol=1e-4)
        hits.append(int(np.argmax(logliks)) == [0, 1][i])
    assert result["agg_value"] == pytest.approx(np.mean(hits))
