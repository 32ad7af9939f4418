"""``mpu server export``: the current model as a plain Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from mpu.errors import MPUError
from mpu.checkpoint import CheckpointReader, ShardedWriter, copy_model_files, layer_groups, staging_dir
from mpu.checkpoint.files import CONFIG
from mpu.server.init import dtype_from_name
from mpu.server.workdir import Workdir


def export(workdir: str | Path, out_dir: str | Path, dtype: str | None = None, *, replace: bool = False, progress: bool = True,
           allow_unaggregated: bool = False, keep: tuple = ()) -> Path:
    """Write the current model to ``out_dir``. Before any round was aggregated that model is the
    original one, unlearned nothing: refused (MPUError, stating rounds done / planned) unless
    ``allow_unaggregated``. Rounds done / planned are in :func:`rounds_note`. ``out_dir`` may not be,
    hold or lie inside the work directory, its base or ``keep`` (InputError); ``replace`` replaces only
    an earlier exported model."""
    work = Workdir(workdir)
    state = work.load()
    if state.rounds_done == 0 and not allow_unaggregated:
        raise MPUError(f"no round aggregated yet (0 of {state.config.rounds} rounds done): the model in {work.path} is "
                       "still the original one. Run publish -> client -> aggregate first, or pass --allow-unaggregated "
                       "to export it anyway")
    target = dtype_from_name(dtype or state.source_dtype)
    reader = CheckpointReader(work.model_path(state))
    with staging_dir(out_dir, replace=replace, keep=(*work.inputs(state), *keep), marker=CONFIG, flag="--force") as stage:
        writer = ShardedWriter(stage)
        for _, names in tqdm(layer_groups(reader.names()), desc="export", disable=not progress):
            writer.write_shard({name: reader.get(name).to(target) for name in names})
        writer.finish()
        copy_model_files(work.model_path(state), stage, {"dtype": str(target).removeprefix("torch.")})
    return Path(out_dir)


def rounds_note(workdir: str | Path) -> str:
    """``after 1 of 2 rounds`` (``unaggregated: ...`` before the first) for the export message."""
    state = Workdir(workdir).load()
    note = f"after {state.rounds_done} of {state.config.rounds} rounds"
    return note if state.rounds_done else f"unaggregated, the original model ({note})"
