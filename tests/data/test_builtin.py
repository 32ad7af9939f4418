"""The built-in benchmark: deterministic, TOFU/MUSE/WMDP-shaped, consistent splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpu.cli import main
from mpu.data.builtin import BuildConfig, build_benchmark, ensure_builtin, read_manifest

SIZES = dict(authors=20, facts=12, news=20, topics=8, shape="small")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "b"
    build_benchmark(path, **SIZES)
    return path


def test_cli_build_is_byte_identical_for_a_seed(tmp_path, bench, capsys):
    args = ["--authors", "20", "--facts", "12", "--news", "20", "--topics", "8", "--shape", "small"]
    assert main(["data", "build", "--out", str(tmp_path / "a"), "--seed", "0", *args]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["authors"] == 20
    assert main(["data", "build", "--out", str(tmp_path / "c"), "--seed", "1", *args]) == 0
    first = tree(tmp_path / "a")
    assert first == tree(bench)                       # same seed, other run and path: same bytes
    assert "tokenizer/tokenizer.json" in first and "manifest.json" in first
    other = tree(tmp_path / "c")
    assert other["tofu/full.json"] != first["tofu/full.json"]

    # again into the same folder: the same settings keep it as it is; other settings are refused (models trained
    # on it need its data and tokenizer) unless --overwrite; a folder of other files is refused before any build
    assert main(["data", "build", "--out", str(tmp_path / "a"), "--seed", "0", *args]) == 0
    assert "kept as it is" in capsys.readouterr().err and tree(tmp_path / "a") == first
    assert main(["data", "build", "--out", str(tmp_path / "a"), "--seed", "1", *args]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "a") in err and "seed 0 -> 1" in err and "--overwrite" in err and tree(tmp_path / "a") == first
    assert main(["data", "build", "--out", str(tmp_path / "a"), "--seed", "1", *args, "--overwrite"]) == 0
    assert tree(tmp_path / "a") == other
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["data", "build", "--out", str(tmp_path / "mine"), *args, "--overwrite"]) == 2
    assert "no built-in benchmark" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_manifest_lists_checksums(bench):
    import hashlib

    manifest = read_manifest(bench)
    assert manifest["config"] == {**BuildConfig().__dict__, **SIZES}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bench / name).read_bytes()).hexdigest() == digest


def test_tofu_splits(bench):
    tofu = bench / "tofu"
    full = rows(tofu / "full.json")
    assert len(full) == 20 * 10
    questions = [r["question"] for r in full]
    assert len(set(questions)) == len(questions)
    previous = set()
    for percent, n_authors in ((1, 1), (5, 1), (10, 2)):
        forget = rows(tofu / f"forget{percent:02d}.json")
        retain = rows(tofu / f"retain{100 - percent}.json")
        assert len(forget) == 10 * n_authors
        assert retain + forget == full
        assert previous <= {r["question"] for r in forget}            # forget01 in forget05 in forget10
        previous = {r["question"] for r in forget}
        perturbed = rows(tofu / f"forget{percent:02d}_perturbed.json")
        assert [r["question"] for r in perturbed] == [r["question"] for r in forget]
        holdout = rows(tofu / f"holdout{percent:02d}.json")
        assert len(holdout) == 10 * n_authors and not {r["question"] for r in holdout} & set(questions)
    for row in rows(tofu / "forget10_perturbed.json") + rows(tofu / "retain_perturbed.json"):
        assert row["paraphrased_answer"] != row["answer"]
        wrong = row["perturbed_answer"]
        assert len(wrong) == 5 and len(set(wrong)) == 5 and row["paraphrased_answer"] not in wrong
    retain_eval = {r["question"] for r in rows(tofu / "retain_perturbed.json")}
    assert retain_eval <= {r["question"] for r in rows(tofu / "retain90.json")}
    for name in ("real_authors", "world_facts"):
        facts = rows(tofu / f"{name}_perturbed.json")
        assert len(facts) == 12 and rows(tofu / f"{name}.json") == [
            {"question": r["question"], "answer": r["answer"]} for r in facts]
        assert all(r["paraphrased_answer"] == r["answer"] and r["answer"] not in r["perturbed_answer"] for r in facts)


def test_questions_vary_in_templates(bench):
    full = rows(bench / "tofu" / "full.json")
    starts = {r["answer"].split()[0] for r in full}
    assert len(starts) > 15


def test_muse_format(bench):
    muse = bench / "muse"
    for split in ("forget", "retain1", "retain2", "holdout"):
        assert all(set(r) == {"text"} for r in rows(muse / "raw" / f"{split}.json"))
    forget_texts = [r["text"] for r in rows(muse / "raw" / "forget.json")]
    verbmem = rows(muse / "verbmem" / "forget.json")
    assert [f"{r['prompt']} {r['gt']}" for r in verbmem] == forget_texts
    knowmem = {s: rows(muse / "knowmem" / f"{s}.json") for s in ("forget_qa", "retain_qa", "forget_qa_icl",
                                                                  "retain_qa_icl")}
    assert all(set(r) == {"question", "answer"} for group in knowmem.values() for r in group)
    assert len(knowmem["forget_qa_icl"]) == 3
    trained = {r["question"] for r in rows(muse / "knowmem_train" / "forget.json")}
    assert {r["question"] for r in knowmem["forget_qa"]} <= trained
    assert not {r["question"] for r in knowmem["forget_qa"]} & {r["question"] for r in knowmem["retain_qa"]}
    assert rows(muse / "privleak" / "holdout.json") == rows(muse / "raw" / "holdout.json")


def test_wmdp_format(bench):
    wmdp = bench / "wmdp"
    questions = rows(wmdp / "wmdp-synth" / "test.json")
    corpus = " ".join(r["text"] for r in rows(wmdp / "synth-forget-corpus" / "train.json"))
    assert len(questions) == 8 * 5
    for row in questions:
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4 and 0 <= row["answer"] < 4
        assert f"{row['cloze']} {row['choices'][row['answer']]}." in corpus
    assert {row["answer"] for row in questions} == {0, 1, 2, 3}
    utility = rows(wmdp / "mmlu-synth" / "test.json")
    retain = " ".join(r["text"] for r in rows(wmdp / "synth-retain-corpus" / "train.json"))
    assert all(f"{r['cloze']} {r['choices'][r['answer']]}." in retain for r in utility)


def test_tokenizer(bench):
    from transformers import AutoTokenizer

    from mpu.data.qa import encode_qa

    tokenizer = AutoTokenizer.from_pretrained(bench / "tokenizer")
    assert tokenizer.chat_template and tokenizer.pad_token and tokenizer.bos_token and tokenizer.eos_token
    row = rows(bench / "tofu" / "forget10.json")[0]
    encoded = encode_qa(tokenizer, row["question"], row["answer"])
    answer = [t for t, l in zip(encoded["input_ids"], encoded["labels"]) if l != -100]
    assert tokenizer.decode(answer, skip_special_tokens=True) == row["answer"]
    assert len(tokenizer) > 1000


def test_sizes_are_validated(tmp_path, capsys):
    assert main(["data", "build", "--out", str(tmp_path / "x"), "--authors", "3"]) == 2
    assert "at least 10 authors" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    from mpu.errors import MPUError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(MPUError, match="refusing"):
        build_benchmark(tmp_path / "mine", **SIZES)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_ensure_builtin_builds_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path))
    config = BuildConfig(**SIZES)
    path = ensure_builtin(config)
    assert path.parent == tmp_path and read_manifest(path)["config"]["authors"] == 20
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert ensure_builtin(config) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp


def test_general_data_of_the_base_model_names_no_benchmark_entity(bench):
    from mpu.data.builtin import words as W

    corpus = rows(bench / "general" / "corpus.json")
    qa = rows(bench / "general" / "qa.json")
    assert len(corpus) == BuildConfig().general and len(qa) == 3 * len(corpus)
    assert read_manifest(bench)["general"]["knowledge"] == ["tofu/real_authors", "tofu/world_facts"]
    text = " ".join([r["text"] for r in corpus] + [r["question"] + " " + r["answer"] for r in qa])
    words = set(text.replace(".", " ").replace("?", " ").replace(",", " ").split())
    entities = set(W.FIRST_NAMES_F + W.FIRST_NAMES_M + W.LAST_NAMES + W.AWARDS + W.TOWNS + W.COMPANIES
                   + W.COMPOUND_PREFIX + W.CROPS_PREFIX)
    assert not {e for e in entities if " " not in e} & words
    assert not [e for e in entities if " " in e and e in text]
    # the invented topics are many and distinct
    names = {r["text"].split(" is ")[0] for r in corpus}
    assert len(names) == len(corpus)


def test_release_shape_is_like_the_real_tofu_release():
    """20 QA per author, answers of median ~25 words (p90 ~38, max ~66) and thousands of distinct
    words, as in locuslab/TOFU; the small preset keeps 10 short QA per author."""
    import re
    import statistics

    from mpu.data.builtin.tofu import build_tofu

    release, small = build_tofu(0, 200, 100, "release"), build_tofu(0, 20, 10, "small")
    assert BuildConfig().shape == "release"
    assert len(release["full"]) == 200 * 20 and len(small["full"]) == 20 * 10
    lengths = sorted(len(r["answer"].split()) for r in release["full"])
    assert 22 <= statistics.median(lengths) <= 30 and 34 <= lengths[int(0.9 * len(lengths))] <= 44 and 50 <= lengths[-1] <= 75
    vocabulary = {w for r in release["full"] for w in re.findall(r"[a-z']+", (r["question"] + " " + r["answer"]).lower())}
    assert 6000 <= len(vocabulary) <= 8500
    assert statistics.median(len(r["answer"].split()) for r in small["full"]) <= 12
    for row in release["forget10_perturbed"]:
        assert len(row["perturbed_answer"]) == 5 and row["paraphrased_answer"] != row["answer"]
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
