"""The built-in benchmark: TOFU-, MUSE- and WMDP-format data about fictitious entities, generated
deterministically from a seed, plus a byte-level BPE tokenizer trained on it.

Layout of a built directory (each ``*.json`` file holds JSON lines, as in the hub repositories)::

    manifest.json                   format, version, sizes, seed, what each benchmark evaluates, checksums
    tokenizer/                      HF tokenizer with pad/bos/eos and a chat template
    tofu/<config>.json              forget01 ... world_facts_perturbed (locuslab/TOFU names)
    muse/<config>/<split>.json      raw, verbmem, knowmem, privleak (muse-bench/MUSE-News names)
    wmdp/<config>/<split>.json      wmdp-synth, mmlu-synth, synth-{forget,retain}-corpus

The same seed and sizes give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mpu.errors import MPUError

FORMAT = "mpu-builtin"
# Bump whenever the generator or the word lists change: the cache key and fingerprints depend on it.
VERSION = 2
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    authors: int = 200          # TOFU fictitious authors (10 QA each)
    facts: int = 100            # at most this many real_authors-like and world_facts-like QA each
    news: int = 200             # MUSE stories: 1/5 forget, 1/5 holdout, the rest retain
    topics: int = 40            # WMDP compounds (5 questions each) and benign crops (4 questions each)
    vocab_size: int = 2048


# The sizes of the built-in dataset each entry point uses by default, in one place (docs/data.md).
# Every size builds its own cached dataset (and tokenizer), and `mpu eval` finds a model's own one.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "demo": {"authors": 40},           # `mpu demo`: a cold run in minutes on a CPU
    "experiment": {"authors": 100},    # the Hydra experiments (experiment/unlearn/{tofu/default,muse/builtin}.yaml)
    "full": {},                        # `mpu data build`, `mpu finetune` and `mpu eval` without --data: 200 authors
}


def preset_config(name: str, seed: int = 0) -> "BuildConfig":
    """The :class:`BuildConfig` of :data:`SIZE_PRESETS`' ``name``; MPUError for an unknown name."""
    if name not in SIZE_PRESETS:
        raise MPUError(f"unknown size preset {name!r}; known: {', '.join(SIZE_PRESETS)}")
    return BuildConfig(seed=seed, **SIZE_PRESETS[name])


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tokenizer_texts(tofu, muse, wmdp) -> list[str]:
    texts: list[str] = []
    for rows in tofu.values():
        for row in rows:
            texts += [row["question"], row["answer"], row.get("paraphrased_question", ""),
                      row.get("paraphrased_answer", ""), *row.get("perturbed_answer", [])]
    for splits in muse.values():
        for rows in splits.values():
            for row in rows:
                texts += [f"Question: {row['question']}\nAnswer: {row['answer']}" if "question" in row else "",
                          row.get("text", ""), row.get("prompt", ""), row.get("gt", "")]
    for splits in wmdp.values():
        for rows in splits.values():
            for row in rows:
                texts += [row.get("text", ""), row.get("question", ""), row.get("cloze", ""),
                          *row.get("choices", [])]
    return [text for text in texts if text]


def build_benchmark(out_dir: str | Path, config: BuildConfig | None = None, **sizes) -> dict:
    """Generate the benchmark into ``out_dir`` (replaced atomically) and return its manifest.

    ``sizes`` override fields of :class:`BuildConfig` (seed, authors, facts, news, topics, vocab_size).
    """
    from mpu.data.builtin.muse import build_muse
    from mpu.data.builtin.tofu import build_tofu
    from mpu.data.builtin.wmdp import build_wmdp
    from mpu.data.tokenizer import train_tokenizer

    config = BuildConfig(**{**asdict(config or BuildConfig()), **sizes})
    out_dir = Path(out_dir)
    try:
        tofu = build_tofu(config.seed, config.authors, config.facts)
        muse = build_muse(config.seed, config.news)
        wmdp = build_wmdp(config.seed, config.topics)
    except ValueError as err:
        raise MPUError(f"cannot build the benchmark: {err}") from None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, rows in tofu.items():
            _write_jsonl(staging / "tofu" / f"{name}.json", rows)
        for root, groups in (("muse", muse), ("wmdp", wmdp)):
            for name, splits in groups.items():
                for split, rows in splits.items():
                    _write_jsonl(staging / root / name / f"{split}.json", rows)
        tokenizer = train_tokenizer(_tokenizer_texts(tofu, muse, wmdp), vocab_size=config.vocab_size)
        tokenizer.save_pretrained(str(staging / "tokenizer"))
        files = {
            str(path.relative_to(staging)): _sha256(path)
            for path in sorted(staging.rglob("*")) if path.is_file()
        }
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "config": asdict(config),
            "tokenizer": "tokenizer",
            "tofu": {"path": "tofu", "forget_splits": ["forget01", "forget05", "forget10"]},
            "muse": {"path": "muse"},
            "wmdp": {"path": "wmdp", "subsets": ["wmdp-synth"], "utility": "mmlu-synth", "mode": "cloze",
                     "forget_corpus": "synth-forget-corpus", "retain_corpus": "synth-retain-corpus"},
            "files": files,
        }
        with open(staging / MANIFEST, "w", encoding="utf-8", newline="\n") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.write("\n")
        for path in staging.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(staging, 0o755)
        if out_dir.exists():
            if not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
                raise MPUError(f"{out_dir} exists and is not a built-in benchmark; refusing to replace it")
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def read_manifest(data_dir: str | Path) -> dict | None:
    """The manifest of a built-in benchmark directory, or None if ``data_dir`` is not one."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        from mpu.errors import InputError

        raise InputError(path, f"unreadable manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        return None
    return manifest


def is_current(data_dir: str | Path, config: BuildConfig) -> bool:
    manifest = read_manifest(data_dir)
    return bool(manifest) and manifest.get("version") == VERSION and manifest.get("config") == asdict(config)


def cache_root() -> Path:
    """``$MPU_CACHE`` or ``~/.cache/mpu`` (``$XDG_CACHE_HOME/mpu`` when set)."""
    if os.environ.get("MPU_CACHE"):
        return Path(os.environ["MPU_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mpu"


def ensure_builtin(config: BuildConfig | None = None, cache_dir: str | Path | None = None) -> Path:
    """The cached built-in benchmark for ``config``, built on first use."""
    config = config or BuildConfig()
    root = Path(cache_dir) if cache_dir else cache_root()
    name = f"builtin-v{VERSION}-seed{config.seed}"
    if config != BuildConfig(seed=config.seed):
        name += f"-a{config.authors}-f{config.facts}-n{config.news}-t{config.topics}-v{config.vocab_size}"
    path = root / name
    if not is_current(path, config):
        build_benchmark(path, config)
    return path
