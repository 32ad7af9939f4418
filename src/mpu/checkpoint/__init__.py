"""Checkpoints in and out: streaming sharded safetensors, checksums, atomic writes.

Imports neither side of the protocol; both the server and the client use it.
"""

from mpu.checkpoint.files import (
    atomic_write_json,
    copy_model_files,
    dir_sha256,
    read_json,
    save_model,
    staging_dir,
)
from mpu.checkpoint.names import layer_index, layer_groups
from mpu.checkpoint.safetensors_io import DTYPES, CheckpointReader, ShardedWriter

__all__ = [
    "DTYPES",
    "CheckpointReader",
    "ShardedWriter",
    "atomic_write_json",
    "copy_model_files",
    "dir_sha256",
    "layer_groups",
    "layer_index",
    "read_json",
    "save_model",
    "staging_dir",
]
