"""Load TOFU, MUSE and WMDP rows from the Hugging Face hub or from a local copy in the same format.

A *source* answers ``rows(config, split)`` with a list of dicts:

- :class:`HubSource` calls ``datasets.load_dataset(repo, config, split=split)``. Before it does, it
  checks in a few milliseconds that the hub is reachable; when it is not (or ``HF_HUB_OFFLINE`` is
  set) it only looks in the local ``datasets`` cache and otherwise fails at once with a message that
  says how to point at a local copy, instead of retrying for half a minute.
- :class:`LocalSource` reads a directory laid out like the hub repository (for example a
  ``huggingface-cli download --repo-type dataset`` snapshot), like a benchmark's own release (TOFU's
  ``forget10.json`` ..., MUSE's ``raw/forget.txt``, ``knowmem/forget_qa.json`` ...) or like the
  built-in benchmark. For ``(config, split)`` it tries, in order: ``<config>/<split>.<ext>``,
  ``<config>/<split>-*.parquet`` (hub shards), ``<config>/<split>`` or ``<config>`` saved with
  ``Dataset.save_to_disk``, ``<config>.<ext>`` (TOFU's one-file-per-config layout), then the
  release names in ``SPLIT_ALIASES`` and ``TOP_LEVEL_CONFIGS``. ``<ext>`` is any format of
  :mod:`mpu.data.files` (JSON lines, JSON arrays, CSV, parquet, arrow, text); an empty file is an
  error naming it, a missing one a :class:`DataUnavailableError`. See docs/data.md for the trees.

:func:`resolve_source` turns the ``--data`` argument into a source: nothing means the built-in
benchmark (built and cached on first use), an existing directory means a local copy, and anything
else shaped like ``owner/name`` means a hub dataset.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mpu.data.files import DATA_SUFFIXES, read_rows
from mpu.errors import InputError, MPUError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
# Names that releases use besides the hub's: MUSE's GitHub data folder (and older snapshots of it)
# calls the retain QA set knowmem/retain2_qa.json and the privleak retain set privleak/retain2.json.
SPLIT_ALIASES = {
    ("knowmem", "retain_qa"): ("retain2_qa",),
    ("knowmem", "retain_qa_icl"): ("retain2_qa_icl",),
    ("privleak", "retain"): ("retain2",),
}
# Configs whose split files may also sit at the top of a local copy (MUSE's knowmem QA files:
# forget_qa.json, retain_qa.json, ... next to raw/ and verbmem/).
TOP_LEVEL_CONFIGS = ("knowmem",)


class DataUnavailableError(MPUError):
    """A dataset could not be loaded (offline, missing file, unknown config)."""


def _offline_message(repo: str, config: str | None, split: str, why: str, flag: str = "--data") -> str:
    """What to do when ``repo`` cannot be loaded from the hub; ``flag`` is the option that names its
    local copy (``--data``, or ``--mmlu`` for WMDP's utility set)."""
    name = f"{repo}" + (f" (config {config!r}, split {split!r})" if config else "")
    instead = ("pass `--mmlu none` to evaluate without MMLU" if flag == "--mmlu" else
               "use the built-in benchmark by leaving out --data")
    return (
        f"cannot load {name} from the Hugging Face hub: {why}. To work offline, copy the dataset on a "
        f"machine with network access, e.g. `huggingface-cli download --repo-type dataset {repo} "
        f"--local-dir DIR` (or `datasets.load_dataset({repo!r}, CONFIG, split=SPLIT).to_json("
        f"'DIR/CONFIG/SPLIT.jsonl')` for each config), move DIR here and pass `{flag} DIR`; or {instead}"
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None if it answers. Takes milliseconds."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return f"{var} is set"
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of datasets
        endpoint = "https://huggingface.co"
    endpoint = os.environ.get("HF_ENDPOINT", endpoint)
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"{host}:{port} is unreachable ({err.__class__.__name__}: {err})"


@dataclass
class HubSource:
    repo: str
    flag: str = "--data"   # the option that names a local copy instead, for the offline message
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def description(self) -> str:
        return f"hub:{self.repo}"

    def rows(self, config: str | None, split: str) -> list[dict[str, Any]]:
        key = (config, split)
        if key not in self._cache:
            self._cache[key] = self._load(config, split)
        return self._cache[key]

    def _load(self, config: str | None, split: str) -> list[dict[str, Any]]:
        import datasets

        reason = hub_offline_reason()
        try:
            if reason is None:
                dataset = datasets.load_dataset(self.repo, config, split=split)
            else:
                dataset = _load_from_cache_only(self.repo, config, split)
        except MPUError:
            raise
        except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
            why = reason or f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            message = _offline_message(self.repo, config, split, why, self.flag)
            raise DataUnavailableError(f"{message} (there is no local directory {self.repo!r} either)") from None
        return [dict(row) for row in dataset]


def _load_from_cache_only(repo: str, config: str | None, split: str):
    """``load_dataset`` with the hub switched off for this call only: a cache hit or a quick failure."""
    import datasets
    import datasets.config as dconfig
    from huggingface_hub import constants

    saved = (dconfig.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(repo, config, split=split)
    finally:
        dconfig.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


@dataclass
class LocalSource:
    root: Path
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def description(self) -> str:
        return str(self.root)

    def rows(self, config: str | None, split: str) -> list[dict[str, Any]]:
        key = (config, split)
        if key not in self._cache:
            self._cache[key] = self._load(config, split)
        return self._cache[key]

    def candidates(self, config: str | None, split: str) -> list[Path]:
        """Where ``(config, split)`` may live in a local copy, in the order they are tried."""
        base = self.root / config if config else self.root
        names = (split,) + SPLIT_ALIASES.get((config, split), ())
        paths: list[Path] = []
        for name in names:
            # the hub's shards first: MUSE's main branch still holds stale JSON files of other columns
            # (verbmem/forget.json) beside the parquet its README names
            paths += sorted(base.glob(f"{name}-*.parquet")) if base.is_dir() else []
            paths += [base / f"{name}{suffix}" for suffix in DATA_SUFFIXES]
            paths.append(base / name)   # save_to_disk, or the parquet conversion's <split>/0000.parquet
            # the older parquet conversion: <config>/<repo>-<split>.parquet
            paths += sorted(base.glob(f"*-{name}.parquet")) if base.is_dir() else []
        paths.append(base)
        if config:
            paths += [self.root / f"{config}{suffix}" for suffix in DATA_SUFFIXES]
            paths.append(self.root)   # save_to_disk of this one config (a DatasetDict of its splits)
        if config in TOP_LEVEL_CONFIGS:
            paths += [self.root / f"{name}{suffix}" for name in names for suffix in DATA_SUFFIXES]
        return paths

    def _load(self, config: str | None, split: str) -> list[dict[str, Any]]:
        candidates = self.candidates(config, split)
        names = (split,) + SPLIT_ALIASES.get((config, split), ())
        for path in candidates:
            shard_of = next((name for name in names if path.name.startswith(f"{name}-")), None)
            if shard_of and path.suffix == ".parquet" and path.is_file():
                # hub shards: <split>-00000-of-00002.parquet, <split>-00001-of-00002.parquet
                shards = sorted(path.parent.glob(f"{shard_of}-*.parquet"))
                return [row for shard in shards for row in read_rows(shard)]
            if path.is_file():
                return read_rows(path)
            if path.is_dir() and any((path / marker).is_file() for marker in DATASETS_MARKERS):
                return read_rows(path, split)
            if path.is_dir() and path.name in names and _holds_data_files(path):
                return read_rows(path)   # the parquet conversion's <config>/<split>/0000.parquet, ...
        where = f"config {config!r}, split {split!r}" if config else f"split {split!r}"
        tried = []
        for path in candidates:
            if path == self.root or (path.suffix == ".parquet" and "-" in path.stem):
                continue
            label = str(path.relative_to(self.root).with_suffix("")) + (".*" if path.suffix in DATA_SUFFIXES else "/")
            if label not in tried:
                tried.append(label)
        raise DataUnavailableError(f"{self.root}: no data for {where} (looked for {', '.join(tried)})")


def _holds_data_files(folder: Path) -> bool:
    return any(item.is_file() and item.suffix.lower() in DATA_SUFFIXES for item in folder.iterdir())


def require_fields(rows: list[dict], fields: tuple[str, ...], where: str) -> list[dict]:
    """Fail with the dataset and row number when a row lacks a field."""
    if not rows:
        raise DataUnavailableError(f"{where}: no rows")
    for number, row in enumerate(rows, start=1):
        missing = [name for name in fields if name not in row]
        if missing:
            raise DataUnavailableError(f"{where}: row {number} lacks field(s) {', '.join(missing)}")
    return rows


@dataclass
class ResolvedData:
    """Where a benchmark's rows come from, and what the built-in manifest says about them."""

    source: HubSource | LocalSource
    benchmark: str
    builtin: dict | None = None        # the built-in manifest, when the data is the built-in benchmark
    root: Path | None = None           # the built-in benchmark's root directory

    @property
    def description(self) -> str:
        return self.source.description

    def rows(self, config: str | None, split: str) -> list[dict[str, Any]]:
        return self.source.rows(config, split)


def _looks_like_hub_name(text: str) -> bool:
    if text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or text.count("/") != 1:
        return False
    owner, name = text.split("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return bool(owner) and bool(name) and set(owner + name) <= allowed


def resolve_source(data: str | os.PathLike | None, benchmark: str, cache_dir: str | Path | None = None,
                   flag: str = "--data") -> ResolvedData:
    """The source of ``benchmark``'s rows for a ``--data`` value (None: the built-in benchmark); ``flag``
    is the option the value came from (for the offline message of a hub name)."""
    from mpu.data.builtin import ensure_builtin, read_manifest

    if benchmark not in ("tofu", "muse", "wmdp", "mmlu"):
        raise MPUError(f"unknown benchmark {benchmark!r}; known: tofu, muse, wmdp")
    if data is None or str(data) == "builtin":
        root = ensure_builtin(cache_dir=cache_dir)
        return _builtin(root, benchmark)
    path = Path(data).expanduser()
    if path.is_dir():
        if read_manifest(path):
            return _builtin(path, benchmark)
        if read_manifest(path.parent) and path.name in ("tofu", "muse", "wmdp"):
            return _builtin(path.parent, path.name if benchmark != "mmlu" else "wmdp")
        return ResolvedData(LocalSource(path), benchmark)
    if path.exists():
        raise InputError(path, "is a file; --data takes a directory or a hub dataset name")
    if _looks_like_hub_name(str(data)):
        return ResolvedData(HubSource(str(data), flag), benchmark)
    raise InputError(path, "no such directory (and not a hub dataset name like owner/name)")


def _builtin(root: Path, benchmark: str) -> ResolvedData:
    from mpu.data.builtin import read_manifest

    manifest = read_manifest(root)
    section = "wmdp" if benchmark == "mmlu" else benchmark
    return ResolvedData(LocalSource(root / manifest[section]["path"]), section, builtin=manifest, root=root)
