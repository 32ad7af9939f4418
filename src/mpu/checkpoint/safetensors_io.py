"""Read and write (sharded) safetensors checkpoints one tensor or one group at a time.

Pickled weights are never loaded: a directory that only has ``pytorch_model.bin`` is refused.
Everything read from a directory we did not write is validated (index paths name regular files
directly in the folder, every file parses as safetensors, index and shard contents agree). Before a
shard is handed to the safetensors library its header is size-checked and counted against
``max_tensors`` (the number of tensors the reader expects), so a crafted header (a million empty
entries, an absurd length) is refused in milliseconds instead of being parsed.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mpu.checkpoint.files import PARTY_FILE_MODE, WEIGHT_INDEX, atomic_write_json, is_shard_name, parse_json, read_json
from mpu.errors import NAME_CHARS, InputError, shown

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


# Bytes a header may spend per tensor entry (a long name, dtype, a 4-d shape and offsets take ~200),
# plus room for the ``__metadata__`` block.
HEADER_BYTES_PER_TENSOR = 512
HEADER_SLACK_BYTES = 1 << 16
# Without an expectation, the safetensors library's own limit.
MAX_HEADER_BYTES = 100_000_000


class CheckpointReader:
    """The tensors of a checkpoint directory, by name, loaded lazily one at a time.

    ``max_tensors``: the most tensor entries the whole checkpoint may declare (every shard's header
    and the index are checked against it, and header sizes against ``HEADER_BYTES_PER_TENSOR`` per
    entry, before anything is parsed). ``None`` (our own or the owner's checkpoints) only applies the
    safetensors limit of 100 MB per header. Raises InputError naming the file.
    """

    def __init__(self, model_dir: str | Path, max_tensors: int | None = None):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise InputError(self.dir, "checkpoint directory not found")
        self.max_tensors = max_tensors
        self._shard_of = self._map_shards()
        self._files = set(self._shard_of.values()) or {self.dir / SINGLE_FILE}  # a model.safetensors of no tensors is still read
        self._meta: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        declared = 0
        for shard in sorted(set(self._shard_of.values())):
            declared += _check_header(shard, max_tensors, declared)
            handle = _open(shard)
            for name in handle.keys():
                if self._shard_of.get(name) != shard:
                    raise InputError(shard, f"holds tensor {shown(name, NAME_CHARS)} that the index does not assign to it")
                view = handle.get_slice(name)
                dtype = DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise InputError(shard, f"tensor {shown(name, NAME_CHARS)} has unsupported dtype {view.get_dtype()}")
                self._meta[name] = (dtype, tuple(view.get_shape()))
        missing = sorted(set(self._shard_of) - set(self._meta))
        if missing:
            raise InputError(self.dir / WEIGHT_INDEX, f"names tensors that no shard holds: "
                                                      f"{', '.join(shown(name, NAME_CHARS) for name in missing[:5])}")

    def _map_shards(self) -> dict[str, Path]:
        index = self.dir / WEIGHT_INDEX
        if os.path.lexists(index):
            return self._read_index(index)
        single = self.dir / SINGLE_FILE
        if os.path.lexists(single):
            self._check_inside(single, index)
            _check_header(single, self.max_tensors, 0)
            return {name: single for name in _open(single).keys()}
        pickles = [name for name in PICKLE_NAMES if (self.dir / name).exists()]
        if pickles:
            raise InputError(self.dir / pickles[0], "pickled weights are never loaded; convert the model to safetensors")
        raise InputError(self.dir, f"no {SINGLE_FILE} or {WEIGHT_INDEX}")

    def _read_index(self, index: Path) -> dict[str, Path]:
        limit = None if self.max_tensors is None else self.max_tensors * HEADER_BYTES_PER_TENSOR + HEADER_SLACK_BYTES
        data = read_json(index, "safetensors index", limit)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(index, "truncated or malformed safetensors index: weight_map must be a non-empty object")
        if self.max_tensors is not None and len(weight_map) > self.max_tensors:
            raise InputError(index, f"names {len(weight_map)} tensors, more than the {self.max_tensors} expected")
        shards = {}
        for name, file in weight_map.items():
            if not is_shard_name(file):   # before it becomes a path: no separator, NUL or over-long name
                raise InputError(index, f"tensor {str(name)[:200]!r} maps to {str(file)[:200]!r}, which is not the name of a "
                                        ".safetensors file of this folder (ASCII letters, digits, '.', '_', '-')")
            shard = self.dir / file
            self._check_inside(shard, index)
            shards[name] = shard
        return shards

    def _check_inside(self, shard: Path, source: Path) -> None:
        # The file must sit directly in the folder: no "..", no absolute paths, no symlinks (a
        # hostile index could otherwise read any file), and be a regular file (a FIFO would block).
        if shard.parent != self.dir or shard.name in ("", ".", ".."):
            raise InputError(source, f"shard {shard.relative_to(self.dir) if shard.is_relative_to(self.dir) else shard} lies outside {self.dir}")
        try:
            info = os.lstat(shard)
        except FileNotFoundError:
            raise InputError(shard, "shard file missing") from None
        except (OSError, ValueError) as err:   # unreadable, or a name the file system refuses
            raise InputError(shard, f"shard cannot be read ({getattr(err, 'strerror', None) or err})") from None
        if stat.S_ISLNK(info.st_mode):
            raise InputError(shard, f"shard is a symbolic link; links are never followed (it could lie outside {self.dir})")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(shard, "shard is not a regular file (a FIFO, device or folder)")

    def __contains__(self, name: object) -> bool:
        return name in self._meta

    def names(self) -> list[str]:
        """Every tensor name of the checkpoint, sorted."""
        return sorted(self._meta)

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor ``name`` (from the header; KeyError for an unknown name)."""
        return self._meta[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of tensor ``name`` (from the header; KeyError for an unknown name)."""
        return self._meta[name][1]

    def shard(self, name: str) -> Path:
        """The weight file that holds tensor ``name`` (for error messages)."""
        return self._shard_of[name]

    def shards(self) -> list[Path]:
        """Every weight file the checkpoint reads (the index's shards, or ``model.safetensors``)."""
        return sorted(self._files)

    def numel(self) -> int:
        """The number of elements over all tensors."""
        return sum(torch.Size(shape).numel() for _, shape in self._meta.values())

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """Tensor ``name`` in its stored dtype on ``device``, read from its shard. KeyError for an unknown name."""
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


def _check_header(shard: Path, max_tensors: int | None, declared: int) -> int:
    """Size-check and count the JSON header of ``shard`` before the safetensors library parses it.

    The format: an 8-byte little-endian header length N, N bytes of JSON (one entry per tensor,
    plus ``__metadata__``), then the data. ``declared``: entries already counted in earlier shards.
    Returns this shard's entry count.
    """
    limit = MAX_HEADER_BYTES if max_tensors is None else min(MAX_HEADER_BYTES, max_tensors * HEADER_BYTES_PER_TENSOR + HEADER_SLACK_BYTES)
    try:   # PermissionError, EIO, an entry removed meanwhile: the other party's files, so exit 2
        with open(shard, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise InputError(shard, "not a valid safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8:
                raise InputError(shard, f"not a valid safetensors file (header length {length} exceeds the file size {size})")
            if length > limit:
                raise InputError(shard, f"safetensors header of {length} bytes is larger than the {limit} allowed"
                                        + (f" for {max_tensors} tensors" if max_tensors is not None else ""))
            raw = handle.read(length)
    except OSError as err:
        raise InputError(shard, f"the safetensors file cannot be read ({err.strerror or err})") from None
    header = parse_json(raw, shard, "safetensors header")
    if not isinstance(header, dict):
        raise InputError(shard, "not a valid safetensors file (header is not a JSON object)")
    count = len(header) - ("__metadata__" in header)
    if max_tensors is not None and declared + count > max_tensors:
        raise InputError(shard, f"safetensors header declares {declared + count} tensors, more than the {max_tensors} expected")
    _check_layout(shard, header, size - 8 - length)
    return count


ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _check_layout(shard: Path, header: dict, data_bytes: int) -> None:
    """Every tensor entry of a parsed header: a known dtype, a shape of non-negative integers, and
    ``data_offsets`` that give it exactly its own bytes: the entries, sorted by offset, tile the data
    section with no gap, no overlap (two tensors reading the same bytes) and nothing past its end."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise InputError(shard, "not a valid safetensors file (__metadata__ must map names to strings)")
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InputError(shard, f"not a valid safetensors file (entry {name[:80]!r} needs exactly dtype, shape, data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in ITEM_BYTES:
            raise InputError(shard, f"tensor {name[:80]!r} has unsupported dtype {str(dtype)[:20]}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and d >= 0 for d in shape):
            raise InputError(shard, f"not a valid safetensors file (tensor {name[:80]!r} has shape {str(shape)[:60]})")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise InputError(shard, f"not a valid safetensors file (tensor {name[:80]!r} has data_offsets {str(offsets)[:60]})")
        numel = 1
        for dim in shape:
            numel *= dim
        if offsets[1] - offsets[0] != numel * ITEM_BYTES[dtype]:
            raise InputError(shard, f"not a valid safetensors file (tensor {name[:80]!r}: data_offsets {offsets} do not hold "
                                    f"its {numel * ITEM_BYTES[dtype]} bytes)")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            raise InputError(shard, f"not a valid safetensors file (tensor {name[:80]!r} at byte {begin} {what})")
        end = stop
    if end != data_bytes:
        raise InputError(shard, f"not a valid safetensors file (tensors cover {end} bytes of a {data_bytes}-byte data section)")


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
        """Write ``tensors`` (moved to the CPU) as the next shard; nothing for an empty dict. Raises
        ValueError for a name an earlier shard already holds."""
        if not tensors:
            return
        duplicate = sorted(set(tensors) & set(self._weight_map))
        if duplicate:
            raise ValueError(f"tensors written twice: {duplicate}")
        file = f"model-{len(self._files) + 1:05d}.safetensors"
        cpu = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        save_file(cpu, str(self.dir / file), metadata={"format": "pt"})
        os.chmod(self.dir / file, PARTY_FILE_MODE)
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
        atomic_write_json(self.dir / WEIGHT_INDEX, index, mode=PARTY_FILE_MODE)
