"""No evaluation item of a benchmark appears in any training split of that benchmark.

For every benchmark (the built-in TOFU, MUSE and WMDP, and release-shaped TOFU and MUSE copies) and
every split finetune trains (full, retainNN), the texts the model trains on are checked against
the items the evaluation suite scores:

- never trained: TOFU's holdout, real_authors and world_facts items; MUSE's knowmem QA (forget and
  retain) and privleak holdout texts; WMDP's multiple-choice questions and the utility set;
- trained only by the full model (never by a retain model): the forget items (TOFU forget split,
  MUSE verbmem/privleak/knowmem forget).
TOFU's retain items and MUSE's retain texts are trained by design (the target knows them).

The base model (``mpu finetune --split base``) is the one exception, by design: its general data holds
TOFU's real_authors and world_facts QA, the "pretraining knowledge" that model utility's ra/wf parts
test (TOFU's targets know it from Llama's pretraining). ra/wf are allowed there and only there: the
target/retain FINE-TUNING splits above never contain them, and the base data contains no forget,
retain or holdout item (test_base_data_holds_no_fictitious_item).
"""

from __future__ import annotations

import pytest

from mpu.data.builtin import build_benchmark
from mpu.data.loaders import resolve_source
from mpu.eval.evaluator import build_datasets, build_wmdp, load_suite
from mpu.experiments.finetune import base_training_data, training_data
from tests.data.releases import make_muse_release, make_tofu_release

# suite dataset -> (key field, never trained / only by the full model)
TOFU_ITEMS = {"holdout": "never", "ra": "never", "wf": "never", "forget": "full only"}
MUSE_ITEMS = {"forget_knowmem": "never", "retain_knowmem": "never", "mia_holdout": "never",
              "forget_verbmem": "full only", "mia_forget": "full only"}
KEYS = {"qa": "question", "icl_qa": "question", "completion": "gt", "text": "text", "mcq": "question"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    build_benchmark(root / "builtin", authors=10, facts=5, news=20, topics=8, general=30, shape="small")
    build_benchmark(root / "builtin_release", authors=10, facts=5, news=20, topics=8, general=30, shape="release")
    return {"builtin": root / "builtin", "builtin_release": root / "builtin_release", "tofu_release": make_tofu_release(root / "tofu"),
            "muse_release": make_muse_release(root / "muse")}


def _training_corpus(resolved, benchmark: str, split: str) -> str:
    manifest = (resolved.builtin or None)
    data = training_data(resolved.source, benchmark, split, manifest)
    texts = []
    for row in data.rows:
        for item in row.get("pairs", [row]):
            texts += [str(item[key]) for key in ("question", "answer", "text") if key in item]
    assert texts, "nothing to train on"
    return "\n".join(texts)


def _leaks(items: dict, datasets: dict, corpus: str, split: str) -> list[str]:
    found = []
    for name, when in items.items():
        if when == "full only" and split == "full":
            continue
        dataset = datasets[name]
        for row in dataset.rows:
            key = str(row[KEYS[dataset.kind]]).strip()
            if key and key in corpus:
                found.append(f"{name}: {key[:60]!r}")
    return found


@pytest.mark.parametrize("where, benchmark", [("builtin", "tofu"), ("builtin_release", "tofu"), ("tofu_release", "tofu"), ("builtin", "muse"),
                                              ("muse_release", "muse")])
def test_no_evaluation_item_is_trained(dirs, where, benchmark):
    resolved = resolve_source(dirs[where], benchmark)
    items = TOFU_ITEMS if benchmark == "tofu" else MUSE_ITEMS
    splits = ("full", "retain90", "retain95", "retain99") if benchmark == "tofu" else ("full", "retain")
    for forget_split in (("forget01", "forget05", "forget10") if benchmark == "tofu" else (None,)):
        suite = load_suite(benchmark, None)
        if forget_split:
            suite["forget_split"] = forget_split
        datasets = build_datasets(suite, resolved)
        assert set(items) <= set(datasets)
        for split in splits:
            if benchmark == "tofu" and split.startswith("retain") and int(split[-2:]) + int(forget_split[-2:]) != 100:
                continue   # forgetNN is evaluated against the model trained without it, retain(100-NN)
            corpus = _training_corpus(resolved, benchmark, split)
            assert _leaks(items, datasets, corpus, split) == [], (where, benchmark, forget_split, split)
    # the check itself sees a leak: the full model does train on the forget items
    if benchmark == "tofu":
        assert _leaks({"forget": "never"}, datasets, _training_corpus(resolved, benchmark, "full"), "full")
    else:
        assert _leaks({"mia_forget": "never"}, datasets, _training_corpus(resolved, benchmark, "full"), "full")


def test_no_wmdp_question_is_trained(dirs):
    resolved = resolve_source(dirs["builtin"], "wmdp")
    datasets, _ = build_wmdp(load_suite("wmdp", None), resolved)
    assert "utility" in datasets
    for split in ("full", "retain"):
        corpus = _training_corpus(resolved, "wmdp", split)
        for dataset in datasets.values():
            for row in dataset.rows:
                # the item as evaluated: the question followed by its choices
                choices = " ".join(str(choice) for choice in row["choices"])
                assert f"{row['question']} {choices}" not in corpus
                assert not all(str(choice) in corpus for choice in row["choices"]) or row.get("cloze")


@pytest.mark.parametrize("where", ["builtin", "builtin_release", "tofu_release"])
def test_base_data_holds_no_fictitious_item(dirs, where):
    resolved = resolve_source(dirs[where], "tofu")
    base = base_training_data(dirs[where], "tofu", resolved.source, resolved.builtin or None)
    corpus = "\n".join(str(item[key]) for item in base.rows for key in ("question", "answer", "text") if key in item)
    suite = load_suite("tofu", None)
    datasets = build_datasets(suite, resolved)
    assert _leaks({"forget": "never", "retain": "never", "holdout": "never"}, datasets, corpus, "base") == []
    # ... while ra/wf are there on purpose (and the check sees them)
    assert len(_leaks({"ra": "never", "wf": "never"}, datasets, corpus, "base")) == \
        len(datasets["ra"].rows) + len(datasets["wf"].rows)
