"""A publication carries the weights, the architecture's config keys, the generation config and the
tokenizer, and nothing else from the owner's folder: markers planted in every other file and config
key never reach the outbox."""

from __future__ import annotations

import json
import shutil

from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish

MARKER = "OWNER-PRIVATE-7f3a"


def test_no_private_file_or_config_key_of_the_owner_is_published(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for name in ("trainer_state.json", "training_args.json", "all_results.json", "mpu_finetune.json", "notes.txt", "README.md", "eval.jsonl"):
        (model / name).write_text(json.dumps({"note": MARKER}))
    config = json.loads((model / "config.json").read_text())
    config.update({"_name_or_path": f"/home/owner/{MARKER}", "custom_owner_field": MARKER, "auto_map": {"AutoConfig": MARKER}})
    (model / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config.update({"name_or_path": f"/home/owner/{MARKER}", "auto_map": {"AutoTokenizer": [MARKER, None]},
                             # a local path the client would refuse (a file outside its copy), kept only when it is a file beside it
                             "tokenizer_file": f"/home/owner/{MARKER}/tokenizer.json", "fast_tokenizer_files": ["tokenizer.json"]})
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    init_server(tmp_path / "server", str(model), None, ServerConfig(copies=2, fixed_seed=1), progress=False)
    publish(tmp_path / "server", tmp_path / "outbox", progress=False)

    published = [path for path in (tmp_path / "outbox").rglob("*") if path.is_file()]
    assert {path.name for path in published if path.parent.name == "copy-1"} >= {"config.json", "tokenizer.json"}
    assert [path for path in published if MARKER.encode() in path.read_bytes()] == []
    assert json.loads((tmp_path / "outbox" / "copy-1" / "tokenizer_config.json").read_text())["fast_tokenizer_files"] == [
        "tokenizer.json"]
    assert [path for path in (tmp_path / "server").rglob("*") if path.is_file() and MARKER.encode() in path.read_bytes()] == []
