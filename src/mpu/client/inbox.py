"""What the server published: the public manifest and the copies it lists, checked as hostile input.

Before anything of a copy is loaded, the client checks (``Publication.verify``): the manifest's
every field by type, range and length; that each copy folder is a real folder inside the inbox and
holds only regular, singly-linked data files of bounded size (weights, config, generation config,
tokenizer: no code, no pickles, no symlinks, hard links, FIFOs or devices); that every JSON file is
strict JSON and no config carries a key that makes transformers fetch or run code (``FORBIDDEN_KEYS``:
``auto_map``, a hub attention kernel, a quantizer ...) or a key its architecture does not define; that
the files match the manifest's checksum; that the weights hold exactly the architecture's tensors
(shapes, float dtype, finite values; headers counted before parsing) before transformers allocates
anything; and that all copies share one architecture. Models and tokenizers are then loaded with
``trust_remote_code=False``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpu.checkpoint import dir_sha256, read_json
from mpu.checkpoint.files import (
    CONFIG, GENERATION_CONFIG, MAX_MANIFEST_BYTES, MAX_MODEL_FILE_BYTES, TOKENIZER_CONFIG, check_data_folder, checked_path,
    is_model_file, is_weight_file,
)
from mpu.errors import InputError
from mpu.protocol import PUBLICATION_MANIFEST, PublicationManifest

# A header may declare at most this many tensors per parameter of the architecture (MoE checkpoints
# store per-expert tensors that transformers fuses), plus a constant: a bound against crafted headers,
# not a validity check (loading checks the names).
TENSORS_PER_PARAMETER = 64
TENSOR_SLACK = 4096
# Config keys that make transformers fetch or run code, or load the weights through another path:
# custom classes (auto_map, custom_pipelines), attention kernels downloaded from the hub
# ("attn_implementation": "org/repo"), quantizers, generate() replaced by hub code. Refused at any
# depth of config.json, tokenizer_config.json and generation_config.json.
FORBIDDEN_KEYS = frozenset({
    "auto_map", "custom_pipelines", "trust_remote_code", "attn_implementation", "_attn_implementation",
    "_attn_implementation_internal", "experts_implementation", "quantization_config", "custom_generate",
})
# The dtypes a copy's config and weights may state (the publish dtypes, and float64 for a source model in it).
WEIGHT_DTYPES = ("float32", "bfloat16", "float16", "float64")
# Blocks a config may declare before its architecture is built (on the meta device, one module per
# block): far above any released model (Llama 3.1 405B has 126), far below a config that would take
# minutes and gigabytes to build (10**6 blocks).
MAX_LAYERS = 1024


@dataclass(frozen=True)
class PublishedCopy:
    """One copy of the publication: its 1-based ``id``, its folder ``path`` inside ``inbox`` and the
    ``sha256`` the manifest states for its files."""

    id: int
    path: Path
    sha256: str
    inbox: Path
    architecture: str | None = None  # the manifest's model_type, when it states one
    dtype: str | None = None  # the manifest's publish dtype, when it states one

    def verify(self) -> dict[str, tuple[int, ...]]:
        """Refuse a copy that is unsafe to load or not the one the manifest names, before loading it.

        Raises InputError naming the offending file: a symlinked/FIFO/device/hard-linked entry, a code
        or pickle file or any other non-data file, a file above ``MAX_MODEL_FILE_BYTES``, a JSON file
        that is not strict JSON (repeated keys, NaN), a ``FORBIDDEN_KEYS`` key in a config, a config
        key its architecture does not define, a checksum mismatch (corrupt or swapped copy), an unknown
        architecture or one other than the manifest's, a malformed generation config, and weights that
        do not match the architecture (:meth:`check_weights`). Returns the tensor shapes by name.
        """
        names = check_data_folder(self.path, self.inbox, "published copy", is_model_file)
        if CONFIG not in names:
            raise InputError(self.path / CONFIG, "missing: a copy is a Hugging Face model folder")
        for name in names:
            if is_weight_file(name):
                continue
            size = os.lstat(self.path / name).st_size
            if size > MAX_MODEL_FILE_BYTES:
                raise InputError(self.path / name, f"is {size} bytes, more than the {MAX_MODEL_FILE_BYTES} a config or tokenizer file may have")
            if name.endswith(".json"):
                data = read_json(self.path / name, name, MAX_MODEL_FILE_BYTES)  # strict: no repeated keys, NaN, deep nesting
                if name in (CONFIG, TOKENIZER_CONFIG, GENERATION_CONFIG):
                    if not isinstance(data, dict):
                        raise InputError(self.path / name, "expected a JSON object")
                    _refuse_forbidden_keys(data, self.path / name)
        self._check_config(read_json(self.path / CONFIG, CONFIG, MAX_MODEL_FILE_BYTES))
        if GENERATION_CONFIG in names:
            self._check_generation_config()
        if dir_sha256(self.path) != self.sha256:
            raise InputError(self.path, "checksum does not match the publication manifest (corrupt or modified copy)")
        return self.check_weights()

    def _check_config(self, config: dict[str, Any]) -> None:
        """config.json before transformers reads it: a known ``model_type`` (the manifest's, when it
        states one), only the keys that architecture's config class defines, a float ``dtype`` and at
        most ``MAX_LAYERS`` blocks."""
        from transformers import CONFIG_MAPPING

        path = self.path / CONFIG
        model_type = config.get("model_type")
        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
            raise InputError(path, f"model_type {str(model_type)[:40]!r} is not an architecture transformers knows (remote code is never used)")
        if self.architecture is not None and model_type != self.architecture:
            raise InputError(path, f"model_type {model_type!r}, the publication manifest says {self.architecture!r}")
        known = set(CONFIG_MAPPING[model_type]().to_dict()) | {"head_dim"}
        unknown = sorted(str(key)[:40] for key in config if key not in known)
        if unknown:
            raise InputError(path, f"keys {unknown[:5]} are not {model_type} config keys; a published config holds only its architecture's")
        for key in ("dtype", "torch_dtype"):
            if config.get(key) is not None and config[key] not in WEIGHT_DTYPES:
                raise InputError(path, f"{key} {str(config[key])[:40]!r} is not one of {WEIGHT_DTYPES}")
        layers = config.get("num_hidden_layers")
        if layers is not None and (type(layers) is not int or not 1 <= layers <= MAX_LAYERS):
            raise InputError(path, f"num_hidden_layers must be an integer in [1, {MAX_LAYERS}], got {str(layers)[:40]}")

    def _check_generation_config(self) -> None:
        from transformers import GenerationConfig

        try:
            GenerationConfig.from_pretrained(self.path).validate(strict=True)
        except Exception as err:  # transformers raises ValueError, TypeError, OSError ...
            raise InputError(self.path / GENERATION_CONFIG, f"not a valid generation config ({type(err).__name__}: {str(err)[:300]})") from None

    def check_weights(self) -> dict[str, tuple[int, ...]]:
        """The weight headers, counted against the tensors of the copy's architecture (built on the
        meta device: no memory, no code) before transformers parses them; then every tensor the
        architecture needs is there with its shape, in a float dtype (the manifest's, when it states
        one), with finite values (read one tensor at a time). Returns the tensor shapes by name.

        A tensor the weights lack would be initialised at random by transformers, and allocated in
        full whatever the config says (a vocabulary of 10**9 is 256 GB): it is refused instead, by name
        when the weights use the model's parameter names and in any case by count (the weights must
        hold at least as many values as the architecture's parameters, MoE experts fused or not).
        """
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from mpu.checkpoint import CheckpointReader

        try:
            config = AutoConfig.from_pretrained(self.path, trust_remote_code=False)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
            shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
            parameters = {name: p.numel() for name, p in model.named_parameters()}  # tied weights once
        except Exception as err:  # transformers raises ValueError, KeyError, TypeError, OSError ...
            raise InputError(self.path / CONFIG, f"not a usable model config ({type(err).__name__}: {str(err)[:300]})") from None
        reader = CheckpointReader(self.path, max_tensors=TENSORS_PER_PARAMETER * len(shapes) + TENSOR_SLACK)
        unread = sorted(set(self.path.glob("*.safetensors")) - set(reader.shards()))
        if unread:
            raise InputError(unread[0], "weight file not named in the copy's index")
        stored = reader.names()
        for name in stored:
            if name in shapes and reader.shape(name) != shapes[name]:
                raise InputError(reader.shard(name), f"tensor {name} has shape {reader.shape(name)}, the config's architecture needs {shapes[name]}")
            dtype = str(reader.dtype(name)).removeprefix("torch.")
            if dtype not in WEIGHT_DTYPES or (self.dtype is not None and dtype != self.dtype):
                wanted = self.dtype if self.dtype is not None else f"one of {WEIGHT_DTYPES}"
                raise InputError(reader.shard(name), f"tensor {name} is {dtype}; the copy's weights are {wanted}")
        missing = sorted(set(parameters) - set(stored))
        if missing and set(stored) <= set(shapes):
            raise InputError(self.path, f"weights lack {len(missing)} tensor(s) of the config's architecture: {', '.join(missing[:5])}")
        needed = sum(parameters.values())
        if reader.numel() < needed:
            raise InputError(self.path, f"weights hold {reader.numel()} values, the config's architecture has {needed} parameters")
        for name in stored:
            if not torch.isfinite(reader.get(name)).all():
                raise InputError(reader.shard(name), f"tensor {name} contains NaN or Inf")
        return {name: reader.shape(name) for name in stored}


def _refuse_forbidden_keys(data: Any, path: Path, depth: int = 0) -> None:
    """Raise InputError naming ``path`` for a ``FORBIDDEN_KEYS`` key at any depth of ``data``."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in FORBIDDEN_KEYS:
                raise InputError(path, f"carries {key} (it makes transformers fetch or run code, or load weights another way); "
                                       "the client never runs code from the server")
            _refuse_forbidden_keys(value, path, depth + 1)
    elif isinstance(data, list):
        for item in data:
            _refuse_forbidden_keys(item, path, depth + 1)


@dataclass(frozen=True)
class Publication:
    """A validated publication: the inbox folder, its manifest and the copies it lists."""

    inbox: Path
    round: int
    publication_id: str
    copies: list[PublishedCopy]
    manifest: PublicationManifest

    def verify(self, copies: list[PublishedCopy]) -> None:
        """:meth:`PublishedCopy.verify` for each of ``copies``, and that they share one set of tensor
        names and shapes (the server perturbs one model m times; a copy of another architecture
        would make its update unusable). Raises InputError naming the copy that differs."""
        first: tuple[PublishedCopy, dict] | None = None
        for copy in copies:
            shapes = copy.verify()
            if first is None:
                first = (copy, shapes)
            elif shapes != first[1]:
                differing = sorted(set(shapes) ^ set(first[1])) or sorted(n for n in shapes if shapes[n] != first[1][n])
                raise InputError(copy.path, f"copy {copy.id} does not have the tensors (names, shapes) of copy {first[0].id} "
                                            f"(first difference: {differing[0]})")

    def select(self, copy_ids: list[int] | None) -> list[PublishedCopy]:
        """The copies with these 1-based ids, in the order given (repeats dropped); all copies for
        None or an empty list. Raises InputError naming the manifest for an id it does not list."""
        if not copy_ids:
            return self.copies
        by_id = {copy.id: copy for copy in self.copies}
        unknown = sorted(set(copy_ids) - set(by_id))
        if unknown:
            raise InputError(self.inbox / PUBLICATION_MANIFEST, f"no copy {unknown}; published copies are {sorted(by_id)}")
        return [by_id[copy_id] for copy_id in dict.fromkeys(copy_ids)]


def read_publication(inbox: str | Path) -> Publication:
    """Read and validate ``inbox/manifest.json`` (:meth:`PublicationManifest.from_json`): every field
    checked by type, range and length; copy ids and folders unique. Raises InputError naming the manifest."""
    inbox = Path(inbox)
    path = checked_path(inbox, PUBLICATION_MANIFEST, "publication manifest")
    manifest = PublicationManifest.from_json(read_json(path, "publication manifest", MAX_MANIFEST_BYTES), path)
    copies = [PublishedCopy(entry.id, inbox / entry.path, entry.sha256, inbox, manifest.architecture, manifest.dtype)
              for entry in manifest.copies]
    return Publication(inbox, manifest.round, manifest.publication_id, copies, manifest)
