"""The loopback federation helper: one federation at a time per machine (xdist workers included)."""

import pytest
from filelock import FileLock, Timeout

from tests.flower import cluster


def test_a_federation_holds_the_machine_wide_lock_until_it_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "ONE_AT_A_TIME", tmp_path / "federation.lock")
    monkeypatch.setattr(cluster.LoopbackFederation, "_start_federation", lambda self: self)
    monkeypatch.setattr(cluster.LoopbackFederation, "stop", lambda self: None)
    other_worker = FileLock(str(tmp_path / "federation.lock"))

    with cluster.LoopbackFederation(tmp_path, []):
        with pytest.raises(Timeout):
            other_worker.acquire(timeout=0)
    other_worker.acquire(timeout=0)   # released on exit
    other_worker.release()


def test_a_federation_that_fails_to_start_releases_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "ONE_AT_A_TIME", tmp_path / "federation.lock")

    def fail(self):
        raise RuntimeError("nothing listens")

    monkeypatch.setattr(cluster.LoopbackFederation, "_start_federation", fail)
    federation = cluster.LoopbackFederation(tmp_path, [])   # kept alive: its lock is not freed by garbage collection
    with pytest.raises(RuntimeError, match="nothing listens"):
        with federation:
            pass
    lock = FileLock(str(tmp_path / "federation.lock"))
    lock.acquire(timeout=0)
    lock.release()
