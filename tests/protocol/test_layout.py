"""The shared file layout: folder names, LoRA factor names, copy ids from 1."""

from __future__ import annotations

import pytest

from mpu.protocol import LORA_A, LORA_B, copy_folder, lora_names, lora_weight, update_folder, update_folder_copy_id


def test_folder_names_round_trip():
    assert copy_folder(3) == "copy-3"
    assert update_folder(12) == "update-12"
    assert update_folder_copy_id(update_folder(12)) == 12


@pytest.mark.parametrize("name", ["update-", "update-x", "update-1234567", "update-1/", "updates-1", "copy-1", ".update-1"])
def test_other_names_state_no_copy(name):
    assert update_folder_copy_id(name) is None


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.0])
def test_copy_ids_start_at_one(bad):
    with pytest.raises(ValueError):
        copy_folder(bad)
    with pytest.raises(ValueError):
        update_folder(bad)


def test_lora_factor_names():
    weight = "model.layers.0.mlp.up_proj.weight"

    name_a, name_b = lora_names(weight)

    assert (name_a, name_b) == (weight + ".lora_A", weight + ".lora_B") == (weight + LORA_A, weight + LORA_B)
    assert lora_weight(name_a) == lora_weight(name_b) == weight
    assert lora_weight(weight) is None
    assert lora_weight(".lora_A") is None
