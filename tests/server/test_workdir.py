"""The server state's ``published`` record: typed in memory, the same JSON on disk as before."""

from __future__ import annotations

import json

from mpu.server.config import ServerConfig
from mpu.server.workdir import PublishedRound, ServerState, Workdir

SHA1, SHA2 = "1" * 64, "2" * 64
# ``published`` exactly as state.json held it before it was typed (commit 0c3312f)
ON_DISK = {"round": 2, "publication_id": "00aa11bb22cc33dd", "copies": [{"id": 1, "sha256": SHA1}, {"id": 2, "sha256": SHA2}],
           "model_norm": 12.5}


def state(published) -> ServerState:
    return ServerState(ServerConfig(copies=2), "models/round-1", "float32", "llama", rounds_done=1, published=published)


def test_published_reads_the_previous_state_json_and_writes_it_unchanged(tmp_path):
    data = state(None).to_dict()
    data["published"] = ON_DISK
    (tmp_path / "state.json").write_text(json.dumps(data))
    (tmp_path / "state.json").chmod(0o600)

    loaded = Workdir(tmp_path).load()

    assert loaded.published == PublishedRound(2, "00aa11bb22cc33dd", {1: SHA1, 2: SHA2}, 12.5)
    assert loaded.to_dict()["published"] == ON_DISK


def test_nothing_published_is_none_on_disk_and_in_memory():
    assert state(None).to_dict()["published"] is None
    assert ServerState.from_dict(json.loads(json.dumps(state(None).to_dict()))).published is None


def test_optional_fields_of_early_states():
    assert PublishedRound.from_dict({"round": 1, "copies": [{"id": 1, "sha256": SHA1}]}) == PublishedRound(1, None, {1: SHA1}, None)
