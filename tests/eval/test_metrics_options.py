"""The metric options OpenUnlearning has: ROUGE over a list of answers, paraphrased questions as the
prompt (``question_key``), the truth ratio's ``prob_mean`` aggregation and ``rel_diff`` — each against an
independent computation (unbatched forwards, greedy decoding by hand, rouge_score and numpy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mpu.eval import METRICS, EvalContext, EvalDataset, MetricUnavailable
from mpu.eval import encoding
from mpu.eval.evaluator import run_metrics
from tests.eval.helpers import tiny_model, tiny_tokenizer
from tests.eval.test_metrics import QA, hand_greedy, hand_nll

PARAPHRASED = ["In which city was Ada Lovelace born?", "Who is the author of Hamlet?",
               "Which city is the capital of France?", "What were Ada's writings?"]
ROWS = [{**row, "paraphrased_question": q} for row, q in zip(QA, PARAPHRASED)]
STEPS = 10


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, seed=0)


def make_ctx(model, tok, rows=ROWS):
    return EvalContext(model, tok, [EvalDataset("forget", "qa", rows)], batch_size=3)


def asked(row, question_key):
    return {**row, "question": row[question_key]} if question_key else row


def test_rouge_against_a_list_of_answers_averages_over_all_of_them(model, tok):
    from rouge_score import rouge_scorer

    result = METRICS.get("rouge")(make_ctx(model, tok), data="forget", answer_key="perturbed_answer",
                                  rouge_type="rougeL_recall", max_new_tokens=STEPS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    per_item = []
    for i, row in enumerate(ROWS):
        generation = hand_greedy(model, tok, encoding.prompt_ids(tok, "qa", row), STEPS)
        recalls = [scorer.score(answer, generation)["rougeL"].recall for answer in row["perturbed_answer"]]
        f1 = [scorer.score(answer, generation)["rougeL"].fmeasure for answer in row["perturbed_answer"]]
        entry = result["value_by_index"][str(i)]
        assert entry["generation"] == generation and entry["ground_truth"] == row["perturbed_answer"]
        np.testing.assert_allclose(entry["rougeL_recall"], recalls)
        np.testing.assert_allclose(entry["rougeL_f1"], f1)
        per_item.append(np.mean(recalls))
    assert result["agg_value"] == pytest.approx(np.mean(per_item))


def test_rouge_over_lists_differs_from_scoring_the_first_answer_only(model, tok):
    """First answer = the model's own generation (recall 1), second one never generated (recall 0):
    the mean over both answers is 1/2 per item, the first answer alone would give 1."""
    generations = [hand_greedy(model, tok, encoding.prompt_ids(tok, "qa", row), STEPS) for row in ROWS]
    rows = [{**row, "perturbed_answer": [generation, "zzz qqq"]} for row, generation in zip(ROWS, generations)
            if generation.strip()]
    assert len(rows) >= 2
    result = METRICS.get("rouge")(make_ctx(model, tok, rows), data="forget", answer_key="perturbed_answer",
                                  max_new_tokens=STEPS)
    for i in range(len(rows)):
        assert result["value_by_index"][str(i)]["rougeL_recall"] == pytest.approx([1.0, 0.0])
    assert result["agg_value"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown rouge_type"):
        METRICS.get("rouge")(make_ctx(model, tok), data="forget", rouge_type="rougeL_precision", max_new_tokens=2)


def test_question_key_asks_the_paraphrased_question(model, tok):
    ctx = make_ctx(model, tok)
    result = METRICS.get("probability")(ctx, data="forget", question_key="paraphrased_question")
    plain = METRICS.get("probability")(ctx, data="forget")
    for i, row in enumerate(ROWS):
        nll = hand_nll(model, tok, asked(row, "paraphrased_question"), row["answer"])
        assert result["value_by_index"][str(i)]["avg_loss"] == pytest.approx(nll, rel=1e-5)
        assert plain["value_by_index"][str(i)]["avg_loss"] == pytest.approx(hand_nll(model, tok, row, row["answer"]),
                                                                            rel=1e-5)
    assert result["agg_value"] != pytest.approx(plain["agg_value"], rel=1e-4)
    assert ctx.datasets["forget"].rows[0]["question"] == QA[0]["question"]  # the dataset itself is unchanged


def test_question_key_in_generation_and_memorisation(model, tok):
    ctx = make_ctx(model, tok)
    rouge = METRICS.get("rouge")(ctx, data="forget", question_key="paraphrased_question", max_new_tokens=STEPS)
    em = METRICS.get("exact_memorization")(ctx, data="forget", question_key="paraphrased_question")
    es = METRICS.get("extraction_strength")(ctx, data="forget", question_key="paraphrased_question")
    from tests.eval.helpers import label_logprobs

    for i, row in enumerate(ROWS):
        prompt = encoding.prompt_ids(tok, "qa", asked(row, "paraphrased_question"))
        assert rouge["value_by_index"][str(i)]["generation"] == hand_greedy(model, tok, prompt, STEPS)
        assert PARAPHRASED[i] in rouge["value_by_index"][str(i)]["input"]
        _, logp_rows, labels = label_logprobs(model, encoding.encode(tok, "qa", asked(row, "paraphrased_question")))
        hits = [int(logp_rows[t].argmax()) == labels[t] for t in range(len(labels) - 1)]  # without EOS
        assert em["value_by_index"][str(i)]["score"] == pytest.approx(np.mean(hits))
        k = next((k for k in range(len(hits)) if all(hits[k:])), len(hits) - 1)
        assert es["value_by_index"][str(i)]["score"] == pytest.approx(1 - k / len(hits))


def test_question_key_missing_from_a_row_names_the_row_and_key(model, tok):
    rows = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "paraphrased_question"}]
    with pytest.raises(MetricUnavailable, match="forget row 1 has no 'paraphrased_question' question"):
        METRICS.get("probability")(make_ctx(model, tok, rows), data="forget", question_key="paraphrased_question")


def test_truth_ratio_prob_mean_averages_the_perturbed_probabilities(model, tok):
    ctx = make_ctx(model, tok)
    prob = METRICS.get("probability")
    pre = {"correct": prob(ctx, data="forget", answer_key="paraphrased_answer"),
           "wrong": prob(ctx, data="forget", answer_key="perturbed_answer")}
    ratios, geometric = [], []
    for row in ROWS:
        p_correct = math.exp(-hand_nll(model, tok, row, row["paraphrased_answer"]))
        wrong_nll = np.array([hand_nll(model, tok, row, a) for a in row["perturbed_answer"]])
        ratios.append(np.mean(np.exp(-wrong_nll)) / p_correct)
        geometric.append(math.exp(-wrong_nll.mean()) / p_correct)
    ratios = np.array(ratios)
    result = METRICS.get("truth_ratio")(ctx, pre_compute=pre, aggregator="true_better", aggregation="prob_mean")
    got = np.array([result["value_by_index"][str(i)]["score"] for i in range(len(ROWS))])
    np.testing.assert_allclose(got, ratios, rtol=1e-4)
    assert result["agg_value"] == pytest.approx(np.mean(np.maximum(0, 1 - ratios)), rel=1e-4, abs=1e-9)
    forget = METRICS.get("truth_ratio")(ctx, pre_compute=pre, aggregation="prob_mean")
    assert forget["agg_value"] == pytest.approx(np.mean(np.minimum(ratios, 1 / ratios)), rel=1e-4)
    # the arithmetic mean exceeds the geometric one (loss_mean, the default) wherever the answers differ
    default = METRICS.get("truth_ratio")(ctx, pre_compute=pre)
    np.testing.assert_allclose([default["value_by_index"][str(i)]["score"] for i in range(len(ROWS))], geometric,
                               rtol=1e-4)
    assert np.all(ratios > np.array(geometric) * (1 + 1e-3))
    with pytest.raises(ValueError, match="unknown truth ratio aggregation 'median'"):
        METRICS.get("truth_ratio")(ctx, pre_compute=pre, aggregation="median")


def test_rel_diff_formula_and_its_default_reference():
    pre = {"forget": {"agg_value": 0.3}}
    result = METRICS.get("rel_diff")(None, pre_compute=pre, reference_logs={"retain": {"agg_value": 0.2}})
    assert result["agg_value"] == pytest.approx((0.3 - 0.2) / 0.2 * 100) and "note" not in result
    default = METRICS.get("rel_diff")(None, pre_compute=pre, reference_logs={"retain": None}, ref_value=0.6)
    assert default["agg_value"] == pytest.approx((0.3 - 0.6) / 0.6 * 100) and "0.6" in default["note"]
    assert METRICS.get("rel_diff")(None, pre_compute={"forget": {"agg_value": None}})["agg_value"] is None


def test_rel_diff_in_a_suite_reads_the_retain_models_logs(model, tok):
    metrics = {"forget_Q_A_Prob": {"handler": "probability", "data": "forget"},
               "prob_rel_diff": {"handler": "rel_diff", "pre_compute": {"forget_Q_A_Prob": "forget"},
                                 "reference_logs": {"forget_Q_A_Prob": "retain"}}}
    retain_logs = {"forget_Q_A_Prob": {"agg_value": 0.01}}
    logs = run_metrics(make_ctx(model, tok), metrics, reference_logs=retain_logs)
    p = np.mean([math.exp(-hand_nll(model, tok, row, row["answer"])) for row in ROWS])
    assert logs["prob_rel_diff"]["agg_value"] == pytest.approx((p - 0.01) / 0.01 * 100, rel=1e-4)


def test_a_row_without_the_answer_key_skips_the_metric_with_the_reason(model, tok):
    rows = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "perturbed_answer"}]
    metric = {"pert": {"handler": "probability", "data": "forget", "answer_key": "perturbed_answer"},
              "prob": {"handler": "probability", "data": "forget"}}
    skipped: dict = {}
    logs = run_metrics(make_ctx(model, tok, rows), metric, skipped=skipped)
    assert set(logs) == {"prob"} and skipped == {"pert": "forget row 1 has no 'perturbed_answer' (keys: "
                                                         "question, answer, paraphrased_answer, paraphrased_question)"}


def test_perturbed_answers_from_a_csv_cell_are_refused_not_scored_as_one_string(model, tok, tmp_path):
    """CSV cells are strings: a list written into one is refused with the row and key, for every
    metric that scores answers, instead of scoring the brackets and quotes as one answer."""
    import csv

    from mpu.data.files import read_rows
    from mpu.errors import MPUError

    path = tmp_path / "forget10_perturbed.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer", "perturbed_answer"])
        writer.writeheader()
        for row in QA[:2]:
            writer.writerow({"question": row["question"], "answer": row["answer"],
                             "perturbed_answer": json.dumps(row["perturbed_answer"])})
    rows = read_rows(path)
    assert isinstance(rows[0]["perturbed_answer"], str)
    for handler in ("probability", "rouge", "exact_memorization", "extraction_strength"):
        with pytest.raises(MPUError, match=r"forget row 0: 'perturbed_answer' is a list written as text"):
            METRICS.get(handler)(make_ctx(model, tok, rows), data="forget", answer_key="perturbed_answer",
                                 max_new_tokens=2)
    ok = [{**row, "perturbed_answer": "[citation needed] is not a list"} for row in rows]
    METRICS.get("probability")(make_ctx(model, tok, ok), data="forget", answer_key="perturbed_answer")
    empty = [{**rows[0], "perturbed_answer": []}]
    with pytest.raises(MPUError, match="must be a string or a non-empty list of strings"):
        METRICS.get("probability")(make_ctx(model, tok, empty), data="forget", answer_key="perturbed_answer")


def test_memorisation_over_several_answers_is_a_list_per_item(model, tok):
    from tests.eval.helpers import label_logprobs

    em = METRICS.get("exact_memorization")(make_ctx(model, tok), data="forget", answer_key="perturbed_answer")
    means = []
    for i, row in enumerate(ROWS):
        expected = []
        for answer in row["perturbed_answer"]:
            _, logp_rows, labels = label_logprobs(model, encoding.encode(tok, "qa", row, answer))
            expected.append(np.mean([int(logp_rows[t].argmax()) == labels[t] for t in range(len(labels) - 1)]))
        np.testing.assert_allclose(em["value_by_index"][str(i)]["score"], expected)
        means.append(np.mean(expected))
    assert em["agg_value"] == pytest.approx(np.mean(means))
