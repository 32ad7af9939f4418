"""Over several rounds the client can keep round 1's copies as the fixed reference of NPO/DPO/UNDIAL."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from mpu.client.unlearn import unlearn_copies
from mpu.data.qa import load_qa_rows
from mpu.errors import InputError
from mpu.methods import training_options
from mpu.experiments.two_party import run_mpu
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish

ONE_STEP = {"max_steps": 1, "logging_steps": 1, "learning_rate": 1e-2}
NPO_AT_THE_REFERENCE = 2 / 0.1 * math.log(2)  # -(2/beta) log sigmoid(0): the policy equals its reference


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_model_dir):
    """Round 1 published and aggregated (GradAscent), round 2 published. GradAscent at lr 1e-2 on the random
    tiny model changes the LM head by about its own norm, above the default per-block bound of 0.5."""
    from tests.conftest import FACTS

    root = tmp_path_factory.mktemp("reference")
    forget = [{"question": q, "answer": a} for q, a in FACTS[:3]]
    init_server(root / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, rounds=2, fixed_seed=5, max_update_ratio=4.0), progress=False)
    publish(root / "server", root / "round-1", progress=False)
    unlearn_copies(root / "round-1", forget, None, "GradAscent", {}, training_options({"epochs": 3, "learning_rate": 1e-2}), root / "returns-1")
    aggregate(root / "server", root / "returns-1", progress=False)
    publish(root / "server", root / "round-2", progress=False)
    return root, forget


def _first_npo_loss(root, forget, out, reference_model_inbox=None) -> float:
    (result,) = unlearn_copies(root / "round-2", forget, None, "NPO", {}, training_options(ONE_STEP), out,
                               copy_ids=[1], reference_model_inbox=reference_model_inbox)
    return result.loss["first"]


def test_without_a_reference_model_inbox_the_reference_is_this_rounds_copy(two_rounds, tmp_path):
    root, forget = two_rounds
    assert _first_npo_loss(root, forget, tmp_path / "default") == pytest.approx(NPO_AT_THE_REFERENCE, abs=1e-3)
    assert _first_npo_loss(root, forget, tmp_path / "same", root / "round-2") == pytest.approx(NPO_AT_THE_REFERENCE, abs=1e-3)


def test_round_ones_copy_is_the_reference_when_given(two_rounds, tmp_path):
    root, forget = two_rounds
    loss = _first_npo_loss(root, forget, tmp_path / "first", root / "round-1")
    # Round 1's GradAscent raised the forget NLL, so the round-2 copy sits above its round-1 reference:
    # the NPO loss starts below its value at the reference.
    assert loss < NPO_AT_THE_REFERENCE - 0.01
    manifest = json.loads((tmp_path / "first" / "update-1" / "update.json").read_text())
    assert manifest["round"] == 2 and manifest["reference_round"] == 1


def test_a_later_or_incomplete_reference_publication_is_refused(two_rounds, tmp_path):
    root, forget = two_rounds
    with pytest.raises(InputError, match="after this round") as err:
        unlearn_copies(root / "round-1", forget, None, "NPO", {}, training_options(ONE_STEP), tmp_path / "later",
                       reference_model_inbox=root / "round-2")
    assert "manifest.json" in str(err.value)

    partial = tmp_path / "partial"
    shutil.copytree(root / "round-1", partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["copies"] = [entry for entry in manifest["copies"] if entry["id"] == 1]
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="no copy"):
        unlearn_copies(root / "round-2", forget, None, "NPO", {}, training_options(ONE_STEP), tmp_path / "out",
                       copy_ids=[2], reference_model_inbox=partial)
    assert not (tmp_path / "out").exists()


def test_a_reference_of_another_architecture_is_refused(two_rounds, tmp_path):
    root, forget = two_rounds
    other = tmp_path / "other"
    shutil.copytree(root / "round-1", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["architecture"] = "qwen2"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="qwen2"):
        unlearn_copies(root / "round-2", forget, None, "NPO", {}, training_options(ONE_STEP), tmp_path / "out", reference_model_inbox=other)


@pytest.mark.parametrize("reference, expected_round", [("first", 1), ("round", 2)])
def test_run_mpu_passes_the_chosen_reference_to_the_client(tmp_path, tiny_model_dir, forget_file, reference, expected_round):
    config = ServerConfig(copies=2, kappa=0.01, rounds=2, fixed_seed=1)
    run_mpu(str(tiny_model_dir), None, config, load_qa_rows(forget_file), None, "NPO", {}, training_options(ONE_STEP),
            tmp_path / "server", tmp_path / "out", keep_exchange=True, progress=False, reference_model_round=reference)
    update = json.loads((tmp_path / "server-exchange" / "round-2" / "returns" / "update-2" / "update.json").read_text())
    assert update["reference_round"] == expected_round
    assert (tmp_path / "out" / "model.safetensors").is_file() or any((tmp_path / "out").glob("*.safetensors"))


def test_run_mpu_cleans_up_round_ones_copies_at_the_end(tmp_path, tiny_model_dir, forget_file):
    config = ServerConfig(copies=2, kappa=0.01, rounds=2, fixed_seed=1)
    run_mpu(str(tiny_model_dir), None, config, load_qa_rows(forget_file), None, "NPO", {}, training_options(ONE_STEP),
            tmp_path / "server", tmp_path / "out", progress=False, reference_model_round="first")
    assert not (tmp_path / "server-exchange").exists()
    with pytest.raises(ValueError, match="first or 'round'|'first' or 'round'"):
        run_mpu(str(tiny_model_dir), None, config, [], None, "NPO", {}, training_options(ONE_STEP),
                tmp_path / "server2", tmp_path / "out2", progress=False, reference_model_round="clean")


def test_copies_with_the_same_tokenizer_files_share_one_tokenizer(two_rounds):
    from mpu.client.inbox import read_publication
    from mpu.client.unlearn import _tokenizer
    from mpu.data.qa import tokenize

    root, _ = two_rounds
    round_1, round_2 = read_publication(root / "round-1").copies, read_publication(root / "round-2").copies
    first, second, later = _tokenizer(round_1[0]), _tokenizer(round_1[1]), _tokenizer(round_2[0])
    assert first is second is later
    assert tokenize(first, "Who wrote it?", False)[0]  # a working tokenizer (in the child process)


def test_the_cli_passes_the_reference_model_inbox(two_rounds, tmp_path, forget_file):
    from mpu.cli import main

    root, _ = two_rounds
    code = main(["client", "unlearn", "--inbox", str(root / "round-2"), "--forget", str(forget_file), "--method", "NPO",
                 "--max-steps", "1", "--copy", "1", "--reference-model-inbox", str(root / "round-1"), "--out", str(tmp_path / "u")])
    assert code == 0
    assert json.loads((tmp_path / "u" / "update-1" / "update.json").read_text())["reference_round"] == 1


@pytest.mark.parametrize("choice, expected_round", [([], 1), (["--reference-model-round", "round"], 2), (["--client-reference", "round"], 2)])
def test_mpu_run_cli_chooses_the_reference(tmp_path, tiny_model_dir, forget_file, choice, expected_round):
    from mpu.cli import main

    code = main(["run", "--model", str(tiny_model_dir), "--forget", str(forget_file), "--method", "NPO", "--max-steps", "1",
                 "--copies", "2", "--rounds", "2", "--kappa", "0.01", "--seed", "3", "--workdir", str(tmp_path / "server"),
                 "--keep-exchange", "--out", str(tmp_path / "out"), *choice])
    assert code == 0
    update = tmp_path / "server-exchange" / "round-2" / "returns" / "update-1" / "update.json"
    assert json.loads(update.read_text())["reference_round"] == expected_round


def test_a_reference_copy_with_other_shapes_is_refused(two_rounds, tmp_path, tiny_tokenizer):
    from mpu.checkpoint import dir_sha256
    from tests.conftest import build_tiny_llama

    root, forget = two_rounds
    other = tmp_path / "other"
    shutil.copytree(root / "round-1", other)
    shutil.rmtree(other / "copy-1")
    build_tiny_llama(tiny_tokenizer, intermediate_size=128).save_pretrained(other / "copy-1")
    tiny_tokenizer.save_pretrained(other / "copy-1")
    manifest = json.loads((other / "manifest.json").read_text())
    for entry in manifest["copies"]:
        if entry["id"] == 1:
            entry["sha256"] = dir_sha256(other / "copy-1")  # a consistent, but different, publication
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="does not have the parameters") as err:
        unlearn_copies(root / "round-2", forget, None, "NPO", {}, training_options(ONE_STEP), tmp_path / "out",
                       copy_ids=[1], reference_model_inbox=other)
    assert "copy-1" in str(err.value)
    assert not (tmp_path / "out").exists()
