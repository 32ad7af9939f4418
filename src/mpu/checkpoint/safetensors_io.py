"""Read and write (sharded) safetensors checkpoints one tensor or one group at a time.

Pickled weights are never loaded: a directory that only has ``pytorch_model.bin`` is refused.
Everything read from a directory we did not write is validated (index paths stay inside the
folder, every file parses as safetensors, index and shard contents agree).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mpu.checkpoint.files import WEIGHT_INDEX, atomic_write_json
from mpu.errors import InputError

SINGLE_FILE = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointReader:
    """The tensors of a checkpoint directory, by name, loaded lazily one at a time."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise InputError(self.dir, "checkpoint directory not found")
        self._shard_of = self._map_shards()
        self._meta: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for shard in sorted(set(self._shard_of.values())):
            handle = _open(shard)
            for name in handle.keys():
                if self._shard_of.get(name) != shard:
                    raise InputError(shard, f"holds tensor {name!r} that the index does not assign to it")
                view = handle.get_slice(name)
                dtype = DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise InputError(shard, f"tensor {name!r} has unsupported dtype {view.get_dtype()}")
                self._meta[name] = (dtype, tuple(view.get_shape()))
        missing = sorted(set(self._shard_of) - set(self._meta))
        if missing:
            raise InputError(self.dir / WEIGHT_INDEX, f"names tensors that no shard holds: {', '.join(missing[:5])}")

    def _map_shards(self) -> dict[str, Path]:
        index = self.dir / WEIGHT_INDEX
        if index.is_file():
            return self._read_index(index)
        single = self.dir / SINGLE_FILE
        if single.is_file():
            self._check_inside(single, index)
            return {name: single for name in _open(single).keys()}
        pickles = [name for name in PICKLE_NAMES if (self.dir / name).exists()]
        if pickles:
            raise InputError(self.dir / pickles[0], "pickled weights are never loaded; convert the model to safetensors")
        raise InputError(self.dir, f"no {SINGLE_FILE} or {WEIGHT_INDEX}")

    def _read_index(self, index: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(index, f"truncated or malformed safetensors index ({type(err).__name__})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(index, "weight_map must be a non-empty object")
        shards = {}
        for name, file in weight_map.items():
            if not isinstance(file, str) or not file.endswith(".safetensors"):
                raise InputError(index, f"tensor {name!r} maps to {file!r}, which is not a .safetensors file")
            shard = self.dir / file
            self._check_inside(shard, index)
            shards[name] = shard
        return shards

    def _check_inside(self, shard: Path, source: Path) -> None:
        # The resolved file must sit directly in the folder: no "..", no absolute paths, no
        # symlinks pointing elsewhere (a hostile index could otherwise read any file).
        if shard.resolve().parent != self.dir.resolve():
            raise InputError(source, f"shard {shard.name!r} lies outside {self.dir}")
        if not shard.is_file():
            raise InputError(shard, "shard file missing")

    def __contains__(self, name: object) -> bool:
        return name in self._meta

    def names(self) -> list[str]:
        return sorted(self._meta)

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][1]

    def shard(self, name: str) -> Path:
        return self._shard_of[name]

    def numel(self) -> int:
        return sum(torch.Size(shape).numel() for _, shape in self._meta.values())

    def nbytes(self) -> int:
        return sum(torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size() for dtype, shape in self._meta.values())

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        if name not in self._meta:
            raise KeyError(name)
        # A handle per read: an open handle keeps every page it touched mapped (and counted in
        # RSS), which would grow to the whole checkpoint over a streaming pass.
        with _open(self._shard_of[name]) as handle:
            tensor = handle.get_tensor(name)
        return tensor.to(device) if str(device) != "cpu" else tensor

    def metadata(self, name: str) -> dict[str, str] | None:
        """The safetensors header metadata of the shard holding ``name``."""
        with _open(self._shard_of[name]) as handle:
            return handle.metadata()


def _open(shard: Path):
    try:
        return safe_open(str(shard), framework="pt")
    except (SafetensorError, OSError) as err:
        raise InputError(shard, f"not a valid safetensors file ({err})") from None


class ShardedWriter:
    """Writes a checkpoint one shard at a time, then its index (HF's sharded layout).

    Each ``write_shard`` call becomes one file, so memory holds at most one group of tensors.
    """

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._weight_map: dict[str, str] = {}
        self._files: list[str] = []
        self._total_size = 0

    def write_shard(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        duplicate = sorted(set(tensors) & set(self._weight_map))
        if duplicate:
            raise ValueError(f"tensors written twice: {duplicate}")
        file = f"model-{len(self._files) + 1:05d}.safetensors"
        cpu = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        save_file(cpu, str(self.dir / file), metadata={"format": "pt"})
        self._files.append(file)
        for name, tensor in cpu.items():
            self._weight_map[name] = file
            self._total_size += tensor.numel() * tensor.element_size()

    def finish(self) -> None:
        """A single shard becomes ``model.safetensors``; several get ``model.safetensors.index.json``."""
        if len(self._files) == 1:
            os.replace(self.dir / self._files[0], self.dir / SINGLE_FILE)
            return
        index = {"metadata": {"total_size": self._total_size}, "weight_map": dict(sorted(self._weight_map.items()))}
        atomic_write_json(self.dir / WEIGHT_INDEX, index)
