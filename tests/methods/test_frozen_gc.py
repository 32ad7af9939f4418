"""frozen_gc: one full garbage collection for many trainings in one process (R rounds x m copies)."""

from __future__ import annotations

import gc

import pytest

from mpu.methods.training import frozen_gc


def test_frozen_gc_freezes_once_for_nested_blocks_and_unfreezes_at_the_end(monkeypatch):
    # counted by call, not by gc.get_freeze_count(): frozen objects that other threads of the test
    # session free meanwhile make the count shrink at any moment
    calls = []
    for name in ("collect", "freeze", "unfreeze"):
        real = getattr(gc, name)
        monkeypatch.setattr(gc, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    assert gc.get_freeze_count() == 0
    with frozen_gc():
        assert calls == ["collect", "freeze"] and gc.get_freeze_count() > 0
        with frozen_gc():
            pass
        assert calls == ["collect", "freeze"]  # the inner block (one round of unlearn_copies) neither collects, freezes nor unfreezes
    assert calls == ["collect", "freeze", "unfreeze"]
    assert gc.get_freeze_count() == 0


def test_frozen_gc_unfreezes_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with frozen_gc():
            raise RuntimeError("training failed")
    assert gc.get_freeze_count() == 0
    with frozen_gc():  # and the next block freezes again
        assert gc.get_freeze_count() > 0


def test_frozen_gc_leaves_a_callers_own_freeze_alone():
    gc.freeze()
    try:
        frozen_by_caller = gc.get_freeze_count()
        with frozen_gc():
            pass
        # not unfrozen behind the caller's back (an unfreeze empties the permanent generation); a few frozen
        # objects may be freed meanwhile by other threads of the test session, so the count may shrink a little
        assert 0.99 * frozen_by_caller <= gc.get_freeze_count() <= frozen_by_caller
    finally:
        gc.unfreeze()


def test_run_mpu_collects_and_freezes_once_for_all_rounds_and_copies(tmp_path, tiny_model_dir, forget_file, monkeypatch):
    from mpu.data.qa import load_qa_rows
    from mpu.methods import training_options
    from mpu.experiments.two_party import run_mpu
    from mpu.server.config import ServerConfig

    freezes = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(1) or real_freeze())
    config = ServerConfig(copies=2, kappa=0.01, rounds=2, fixed_seed=0)
    run_mpu(str(tiny_model_dir), None, config, load_qa_rows(forget_file), None, "GradAscent", {},
            training_options({"max_steps": 1}), tmp_path / "server", tmp_path / "model", progress=False)
    assert len(freezes) == 1  # not once per round (2) or per copy (4)
    assert gc.get_freeze_count() == 0
