"""The readers of the other party's folders: an operating-system error (a permission, an I/O error,
an entry removed meanwhile) is an error naming the folder or file, exit 2, not a traceback."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from mpu.checkpoint import CheckpointReader
from mpu.checkpoint import safetensors_io
from mpu.checkpoint.files import check_data_folder
from mpu.errors import InputError
from mpu.server.validate import _update_folders


def _denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def test_a_folder_that_cannot_be_listed_is_an_input_error_naming_it(tmp_path, monkeypatch):
    (tmp_path / "copy-1").mkdir()
    (tmp_path / "update-1").mkdir()
    monkeypatch.setattr(os, "scandir", _denied)
    with pytest.raises(InputError, match="copy-1: published copy cannot be read \\(Permission denied\\)"):
        check_data_folder(tmp_path / "copy-1", tmp_path, "published copy", lambda name: True)
    with pytest.raises(InputError, match="the returns folder cannot be read \\(Permission denied\\)") as error:
        _update_folders(tmp_path)
    assert error.value.path == str(tmp_path)


def test_a_weight_file_that_cannot_be_opened_is_an_input_error_naming_it(tmp_path, monkeypatch):
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    monkeypatch.setattr(safetensors_io, "open", _denied, raising=False)
    with pytest.raises(InputError, match="model.safetensors: the safetensors file cannot be read"):
        CheckpointReader(tmp_path)
