"""``mpu server export``: the current model as a plain Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from mpu.checkpoint import CheckpointReader, ShardedWriter, copy_model_files, layer_groups, staging_dir
from mpu.server.init import dtype_from_name
from mpu.server.workdir import Workdir


def export(workdir: str | Path, out_dir: str | Path, dtype: str | None = None, *, replace: bool = False, progress: bool = True) -> Path:
    work = Workdir(workdir)
    state = work.load()
    target = dtype_from_name(dtype or state.source_dtype)
    reader = CheckpointReader(work.model_path(state))
    with staging_dir(out_dir, replace=replace) as stage:
        writer = ShardedWriter(stage)
        for _, names in tqdm(layer_groups(reader.names()), desc="export", disable=not progress):
            writer.write_shard({name: reader.get(name).to(target) for name in names})
        writer.finish()
        copy_model_files(work.model_path(state), stage, {"dtype": str(target).removeprefix("torch.")})
    return Path(out_dir)
