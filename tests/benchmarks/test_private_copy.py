"""benchmarks/private_copy.py: the private copy's cost, timed against the checks in place."""

from __future__ import annotations

import re

from tests.conftest import load_benchmark


def test_it_times_both_paths_and_prints_their_ratio(capsys, monkeypatch):
    from mpu.client import inbox

    private_copy = load_benchmark("private_copy")
    checked = []
    verify = inbox.Publication.verify
    monkeypatch.setattr(inbox.Publication, "verify", lambda publication, copies: checked.append(publication.inbox) or verify(publication, copies))
    assert private_copy.main(["--hidden-size", "64", "--layers", "1", "--vocab-size", "256", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"publication: 2 copies, [\d.]+ GB", out)
    assert len(re.findall(r"repeat \d: in place [\d.]+ s, private [\d.]+ s \(copy [\d.]+ s\)", out)) == 2
    assert re.search(r"ratio private / in place: [\d.]+", out)
    # per repeat: in place (the outbox), then the private path: the outbox again and the copy
    outbox = checked[0]
    assert [path == outbox for path in checked] == [True, True, False] * 2
