"""A client's update records how its rows were encoded (prompt format, length policy, truncation)."""

from __future__ import annotations

import json

from mpu.client.unlearn import unlearn_copies
from mpu.data.qa import load_qa_rows
from mpu.methods import training_options
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from tests.conftest import write_jsonl


def test_update_manifest_records_the_encoding(tmp_path, tiny_model_dir, forget_file):
    init_server(tmp_path / "server", str(tiny_model_dir), None, ServerConfig(copies=2, kappa=0.05, fixed_seed=4), progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    rows = load_qa_rows(forget_file)
    long = write_jsonl(tmp_path / "long.jsonl", [dict(rows[0]), {"question": rows[1]["question"], "answer": " ".join([rows[1]["answer"]] * 12)}])
    training = training_options({"max_steps": 1, "prompt_format": "plain", "date_string": "1 Jan 2024",
                                 "max_length": 40, "truncate": True})
    unlearn_copies(tmp_path / "outbox", load_qa_rows(long), None, "GradAscent", {}, training, tmp_path / "out", copy_ids=[1])
    manifest = json.loads(next((tmp_path / "out").rglob("update.json")).read_text())
    assert manifest["encoding"]["prompt_format"] == {"format": "plain", "system_text": "", "user_start": "Question: ",
                                                     "user_end": "\n", "assistant_start": "Answer: "}
    assert (manifest["encoding"]["max_length"], manifest["encoding"]["truncate"], manifest["encoding"]["rows_truncated"]) == (40, True, 1)
    assert manifest["training"]["prompt_format"] == "plain" and manifest["training"]["truncate"] is True
