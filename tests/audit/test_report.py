"""The audit's table reads reports written under the old key names (mpu-audit/1) and the new ones."""

from __future__ import annotations

import pytest

from mpu.audit import format_table, public_alphas

OLD = {"schedule": "reference_schedule", "anchor": "reference_copy"}
NEW = {"schedule": "public_schedule", "anchor": "anchor_copy"}


def unscored_report(keys: dict) -> dict:
    return {"round": 1, "copies": [1, 2, 3], "architecture": "LlamaForCausalLM", "dtype": "float32", "scored": False,
            "alphas": {keys["schedule"]: [1.0, 1.5, 2.0], "estimated_unaligned": {"alphas": [1.0, 1.4, 2.1]}},
            "alignment": {"available": True, keys["anchor"]: 1,
                          "per_copy": {"2": {"residual_before": 0.5, "residual_after": 0.01}}},
            "attacks": {}}


@pytest.mark.parametrize("keys", [OLD, NEW], ids=["mpu-audit/1", "mpu-audit/2"])
def test_the_table_reads_old_and_new_key_names(keys):
    text = format_table(unscored_report(keys))

    assert "public schedule [1.000, 1.500, 2.000]" in text
    assert "alignment copy 2 -> copy 1: relative misfit 0.5 -> 0.01" in text
    assert "no --true-weights given" in text


def test_the_public_schedule_is_evenly_spaced_on_one_to_two():
    assert public_alphas(3) == [1.0, 1.5, 2.0]
    assert public_alphas(5) == [1.0, 1.25, 1.5, 1.75, 2.0]
